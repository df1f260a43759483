"""benchmarks/ablation.py: the statistics behind the verdict."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import ablation  # noqa: E402  pylint: disable=wrong-import-position


def _row(label, ratio, seed, accuracy, macs=1000):
    return {"label": label, "ratio": ratio, "seed": seed, "accuracy": accuracy, "params": 10, "macs": macs}


def test_summary_is_mean_and_sample_std_over_seeds():
    rows = [_row("a", 0.9, s, acc) for s, acc in enumerate([0.90, 0.92, 0.94])] + [_row("b", 0.9, 0, 0.5)]
    summary = {e["label"]: e for e in ablation.summarize(rows)}
    assert summary["a"]["accuracy"] == pytest.approx(0.92)
    assert summary["a"]["accuracy_std"] == pytest.approx(0.02)
    assert summary["a"]["seeds"] == 3 and summary["b"]["accuracy_std"] == 0.0


def test_verdict_needs_a_gap_larger_than_both_spreads():
    rows = [_row("hsd num_ta=2", 0.9, s, a) for s, a in enumerate([0.95, 0.96, 0.97])]
    rows += [_row("scratch", 0.9, s, a) for s, a in enumerate([0.90, 0.91, 0.92])]  # 5 points below, spread 2
    rows += [_row("hsd num_ta=0", 0.9, s, a) for s, a in enumerate([0.93, 0.945, 0.96])]  # 1.5 below, spread 2.5
    lines, wins = ablation.verdict(ablation.summarize(rows), 0.9, "hsd num_ta=2")
    assert not wins
    assert any("vs scratch: +5.00 points" in line and "beats it" in line for line in lines)
    assert any("vs hsd num_ta=0: +1.50 points" in line and "does not beat it" in line for line in lines)


def test_learning_rate_is_chosen_by_validation_accuracy_at_the_selection_seed_only():
    def row(label, seed, rate, val, test):
        return {"dataset": "digits", "ratio": 0.9, "label": label, "seed": seed, "learning_rate": rate,
                "val_accuracy": val, "accuracy": test}

    rows = [row("scratch", 0, 0.01, 0.80, 0.99), row("scratch", 0, 0.03, 0.90, 0.50), row("scratch", 0, 0.1, 0.85, 0.9),
            row("scratch", 1, 0.1, 0.99, 0.99),  # another seed's result must not count
            row("hsd num_ta=2", 0, 0.01, 0.7, 0.7), row("hsd num_ta=2", 0, 0.03, 0.7, 0.9)]  # a tie: the first
    chosen = ablation.select_learning_rates(rows, selection_seed=0)
    assert chosen == {("digits", 0.9, "scratch"): 0.03, ("digits", 0.9, "hsd num_ta=2"): 0.01}


@pytest.mark.parametrize("accuracies, in_means, beyond", [
    ({"hsd num_ta=2": [0.95, 0.96, 0.97], "hsd num_ta=1": [0.94] * 3, "hsd num_ta=0": [0.93] * 3,
      "l1_finetune": [0.90] * 3, "scratch": [0.92] * 3}, True, True),
    ({"hsd num_ta=2": [0.95, 0.96, 0.97], "hsd num_ta=1": [0.94] * 3, "hsd num_ta=0": [0.93] * 3,
      "l1_finetune": [0.90] * 3, "scratch": [0.955] * 3}, True, False),  # above scratch, within the spread
    ({"hsd num_ta=2": [0.95, 0.96, 0.97], "hsd num_ta=1": [0.92] * 3, "hsd num_ta=0": [0.93] * 3,
      "l1_finetune": [0.90] * 3, "scratch": [0.90] * 3}, False, False),  # 1 TA below 0 TAs
])
def test_paper_claim_needs_the_ta_order_and_both_baselines_below(accuracies, in_means, beyond):
    rows = [_row(label, 0.9, s, a) for label, values in accuracies.items() for s, a in enumerate(values)]
    assert ablation.paper_claim(ablation.summarize(rows), 0.9) == (in_means, beyond)
