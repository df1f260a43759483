"""benchmarks/ablation.py: the statistics behind the verdict."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import ablation  # noqa: E402  pylint: disable=wrong-import-position


def _row(label, budget, seed, accuracy, macs=1000):
    return {"label": label, "budget": budget, "seed": seed, "accuracy": accuracy, "params": 10, "macs": macs}


def test_summary_is_mean_and_sample_std_over_seeds():
    rows = [_row("a", 0.1, s, acc) for s, acc in enumerate([0.90, 0.92, 0.94])] + [_row("b", 0.1, 0, 0.5)]
    summary = {e["label"]: e for e in ablation.summarize(rows)}
    assert summary["a"]["accuracy"] == pytest.approx(0.92)
    assert summary["a"]["accuracy_std"] == pytest.approx(0.02)
    assert summary["a"]["seeds"] == 3 and summary["b"]["accuracy_std"] == 0.0


def test_verdict_needs_a_gap_larger_than_both_spreads():
    rows = [_row("hsd 2 TAs", 0.1, s, a) for s, a in enumerate([0.95, 0.96, 0.97])]
    rows += [_row("scratch", 0.1, s, a) for s, a in enumerate([0.90, 0.91, 0.92])]  # 5 points below, spread 2
    rows += [_row("hsd 0 TAs", 0.1, s, a) for s, a in enumerate([0.93, 0.945, 0.96])]  # 1.5 below, spread 2.5
    summary = ablation.summarize(rows)
    lines, wins = ablation.verdict(summary, 0.1, "hsd 2 TAs")
    assert not wins
    assert any("vs scratch: +5.00 points" in line and "beats it" in line for line in lines)
    assert any("vs hsd 0 TAs: +1.50 points" in line and line.endswith("level.") for line in lines)
    scratch_line = next(line for line in lines if "vs scratch" in line)
    assert ablation.verdict(summary, 0.1, "hsd 2 TAs", ["scratch"]) == ([scratch_line], True)
    below, wins = ablation.verdict(summary, 0.1, "scratch", ["hsd 2 TAs"])
    assert not wins and below[0].startswith("- scratch vs hsd 2 TAs: -5.00 points") and below[0].endswith(
        "below it beyond the spread.")


def test_learning_rate_is_chosen_by_validation_accuracy_at_the_selection_seed_only():
    def row(label, seed, rate, val, test):
        return {"dataset": "digits", "budget": 0.1, "label": label, "seed": seed, "learning_rate": rate,
                "val_accuracy": val, "accuracy": test}

    rows = [row("scratch", 0, 0.01, 0.80, 0.99), row("scratch", 0, 0.03, 0.90, 0.50), row("scratch", 0, 0.1, 0.85, 0.9),
            row("scratch", 1, 0.1, 0.99, 0.99),  # another seed's result must not count
            row("hsd 2 TAs", 0, 0.01, 0.7, 0.7), row("hsd 2 TAs", 0, 0.03, 0.7, 0.9)]  # a tie: the first
    chosen = ablation.select_learning_rates(rows, selection_seed=0)
    assert chosen == {("digits", 0.1, "scratch"): 0.03, ("digits", 0.1, "hsd 2 TAs"): 0.01}


def test_the_mac_spread_is_largest_over_smallest_mean_macs():
    rows = [_row("a", 0.1, 0, 0.9, macs=1000), _row("b", 0.1, 0, 0.9, macs=1030), _row("c", 0.25, 0, 0.9, macs=5)]
    assert ablation.mac_spread(ablation.summarize(rows), 0.1) == pytest.approx(0.03)


def test_the_family_sets_each_view_against_l1_at_its_own_budget():
    """hsd 2 TAs at MAC budget 0.1 has views at 0.1, 0.55 and 1.0 of the MACs: l1 + KD is matched at the first two."""
    assert ablation.family_budgets(0.1) == [0.55]
    views = [{"name": n, "accuracy": a, "macs": m} for n, a, m in (("student", 0.8, 10), ("ta1", 0.9, 55),
                                                                   ("ta2", 0.95, 100))]
    rows = [dict(_row("hsd 2 TAs", 0.1, s, 0.8), views=views) for s in range(2)]
    summary = ablation.summarize([_row("l1 + KD", 0.1, 0, 0.7), _row("l1 + KD", 0.55, 0, 0.85)])
    entries = ablation.family(rows, summary, [0.1])
    assert [e["view"] for e in entries] == ["student", "ta1", "ta2"]
    assert [e["l1"]["accuracy"] if e["l1"] else None for e in entries] == [0.7, 0.85, None]
    assert entries[1]["accuracy"] == pytest.approx(0.9) and entries[1]["accuracy_std"] == 0.0


def test_the_hsd_mask_variant_trains_the_channels_of_hsd_at_its_seed_budget_and_chosen_rate():
    study = ablation.Study("/study", 0.125, 1, 1, 1, 64, dataset="fashion_mnist")
    chosen = {("fashion_mnist", 0.25, "hsd 2 TAs"): 0.03, ("fashion_mnist", 0.1, "hsd 2 TAs"): 0.1}
    assert ablation.mask_source(study, 0.25, "l1 + KD on hsd mask", 2, chosen) == os.path.join(
        "/study", "runs", "hsd_2_TAs-b0.25-s2-lr0.03")
    assert ablation.mask_source(study, 0.1, "l1 + KD on hsd mask", 0, chosen).endswith("hsd_2_TAs-b0.1-s0-lr0.1")
    assert ablation.mask_source(study, 0.25, "l1 + KD", 2, chosen) == ""
    # Runs are named as the folders of a study already under way, so it resumes.
    assert ablation.Run("hsd 2 TAs per_mac", 0.25, 0, 0.01).name == "hsd_2_TAs_per_mac-b0.25-s0-lr0.01"
    assert ablation.Run("l1 + KD on hsd mask", 0.25, 1, 0.01, "/x").name == "l1_KD_on_hsd_mask-b0.25-s1-lr0.01"


def test_a_variant_on_another_runs_channels_is_charged_that_runs_training_too():
    rows = [dict(_row("hsd 2 TAs", 0.1, 0, 0.8), plain_epochs=37.33, training_seconds=500.0),
            dict(_row("scratch on hsd mask", 0.1, 0, 0.8), plain_epochs=16.0, training_seconds=120.0),
            dict(_row("scratch", 0.1, 0, 0.8), plain_epochs=16.0, training_seconds=110.0)]
    summary = {e["label"]: e for e in ablation.summarize(rows)}
    assert ablation._cost(summary.values(), summary["scratch on hsd mask"], "plain_epochs", ".1f") == "16.0 + 37.3"
    assert ablation._cost(summary.values(), summary["scratch"], "training_seconds", ",.0f") == "110"


def test_one_seed_is_never_judged_a_win():
    """A difference of one seed against one seed has no spread to measure it by: reported, never a win."""
    summary = ablation.summarize([_row("hsd 2 TAs", 0.25, 0, 0.90), _row("l1", 0.25, 0, 0.80)])
    lines, wins = ablation.verdict(summary, 0.25, "hsd 2 TAs")
    assert not wins and lines == ["- hsd 2 TAs vs l1: +10.00 points, one seed: no spread to judge by."]


def test_a_single_seed_variant_runs_its_grid_only_and_the_others_every_other_seed():
    assert ablation.later_seeds("hsd 2 TAs", [0, 1, 2], 0, ["hsd 2 TAs per_mac"]) == [1, 2]
    assert ablation.later_seeds("hsd 2 TAs per_mac", [0, 1, 2], 0, ["hsd 2 TAs per_mac"]) == []
    assert ablation.later_seeds("l1", [0, 1, 2], 1, []) == [0, 2]


def test_each_budget_names_the_code_versions_that_trained_its_rows():
    rows = [dict(_row("l1", 0.25, 0, 0.9), code="277b8ba"), _row("l1", 0.25, 1, 0.9),
            dict(_row("l1", 0.1, 0, 0.9), code="42c877c"), dict(_row("hsd 2 TAs", 0.1, 0, 0.9), code="42c877c")]
    assert ablation.codes_by_budget(rows) == {0.25: ["277b8ba", "not recorded"], 0.1: ["42c877c"]}


def test_every_variant_is_a_valid_run_of_the_tool_with_the_settings_its_name_says():
    study = ablation.Study("/study", 0.125, 1, 8, 8, 64, dataset="fashion_mnist")
    configs = {label: study.config(**ablation.settings(study, label), macs_budget=0.1) for label in ablation.VARIANTS}
    for label, config in configs.items():
        if label not in ablation.MASK_SOURCES:  # those need their source run's results.json
            config.validate()
    assert configs["l1 + KD at hsd counts"].masks_from_counts and configs["scratch on hsd mask"].method == "scratch"
    assert [configs[label].num_ta for label in ("hsd 2 TAs", "hsd 2 TAs no KD", "hsd 0 TAs")] == [2, 2, 0]
    assert configs["hsd 2 TAs no KD"].kd_weight == configs["l1"].kd_weight == 0.0
    assert configs["hsd 2 TAs"].kd_weight == configs["l1 + KD"].kd_weight == 0.4
    assert {configs[label].method for label in ("l1", "l1 + KD", "l1 + KD on hsd mask")} == {"l1"}
    assert configs["hsd 2 TAs per_mac"].saliency == "per_mac"
    assert [configs[f"hsd 2 TAs from {source}"].distill_from for source in ("top", "all")] == ["top", "all"]
    assert configs["hsd 2 TAs from teacher"].finetune_from == "teacher"
    frozen = configs["hsd 2 TAs frozen early"]
    assert (frozen.joint_epochs, frozen.frozen_epochs, frozen.finetune_epochs) == (2, 6, 8)  # 16 epochs as the rest
    assert {label: configs[label].baseline_epochs() for label in configs if "equal compute" in label} == {
        "l1 + KD equal compute": 28, "l1 equal compute": 28, "scratch equal compute": 37}
    assert ablation.plain_epochs(study, "hsd 2 TAs") == ablation.plain_epochs(study, "hsd 2 TAs frozen early") == 37.33
