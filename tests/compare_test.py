"""--mode=compare and the baseline methods it trains: equal cost, the L1 architecture, resume, the report."""

import json
import os

import numpy as np
import pytest

from hsd_tf import compare
from testing import run_main

TINY_COMPARE = ["--dataset=digits", "--arch=vgg16", "--width_multiplier=0.0625", "--num_ta=1", "--batch_size=128",
                "--teacher_epochs=1", "--teacher_learning_rate=0.05", "--joint_epochs=1", "--frozen_epochs=0",
                "--finetune_epochs=1", "--verbose=0", "--export=", "--notensorboard", "--macs_budget=0.3"]


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    model_dir = str(tmp_path_factory.mktemp("compare"))
    result = run_main("--mode=compare", f"--model_dir={model_dir}", *TINY_COMPARE)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(os.path.join(model_dir, "compare.json")) as f:
        return model_dir, result.stdout, json.load(f)


def test_every_method_trains_one_student_within_the_same_mac_budget(compared):
    _, _, report = compared
    runs = report["runs"]
    assert list(runs) == ["hsd", "l1", "scratch", "scratch_on_hsd_mask"]
    teacher_macs = runs["hsd"]["teacher"]["macs"]
    students = {method: results["views"][0] for method, results in runs.items()}
    macs = [student["macs"] for student in students.values()]
    assert max(macs) <= 0.3 * teacher_macs
    assert max(macs) / min(macs) - 1 < 0.03, macs
    assert [len(results["views"]) for results in runs.values()] == [2, 1, 1, 1]  # the cascade's TA is in its family
    assert all(results["teacher"] == runs["hsd"]["teacher"] for results in runs.values())  # one teacher for all


def test_scratch_trains_the_l1_architecture_and_l1_keeps_the_teachers_largest_filters(compared):
    """The l1 student's channels are the teacher's L1 ranking taken greedily within the budget, frozen through
    fine-tuning; scratch has exactly those channels."""
    import keras  # pylint: disable=import-outside-toplevel

    from hsd_tf import architectures, teacher  # pylint: disable=import-outside-toplevel
    from hsd_tf.cascade import Cascade  # pylint: disable=import-outside-toplevel

    model_dir, _, report = compared
    l1, scratch = report["runs"]["l1"]["views"][0], report["runs"]["scratch"]["views"][0]
    assert l1["kept_channels"] == scratch["kept_channels"]
    dense = teacher.load(os.path.join(model_dir, "teacher", "teacher.weights.h5"),
                         architectures.get("vgg16", (32, 32, 3), 10, width_multiplier=0.0625))
    ranked = Cascade(dense, macs_fractions=[0.3], max_layer_prune_ratio=0.96, min_layer_filters=2)
    ranked.initialize_from(dense)
    ranked.freeze_masks()  # greedy in L1 order within the budget
    expected = {g: np.flatnonzero(m).tolist() for g, m in zip(ranked.trace.group_names, ranked.hard_masks(0, True))}
    assert l1["kept_channels"] == expected
    # Trained: neither student is the teacher's weights (l1 fine-tuned them, scratch started from random ones).
    first_conv = dense.get_layer("block1_conv1").get_weights()[0]
    for method in ("l1", "scratch"):
        student = keras.saving.load_model(os.path.join(model_dir, method, "export", "student.keras"))
        assert not np.allclose(student.get_layer("block1_conv1").get_weights()[0], first_conv)


def test_the_report_is_written_and_ends_the_console_and_a_rerun_reads_it_back(compared):
    model_dir, stdout, report = compared
    for name in ("compare.md", "compare.png"):
        assert os.path.getsize(os.path.join(model_dir, name)) > 0
    with open(os.path.join(model_dir, "compare.md")) as f:
        table = f.read()
    assert "| hsd student |" in table and "| l1 student |" in table and "| scratch student |" in table
    assert "| hsd ta1 |" in table
    assert "scratch_on_hsd_mask trains the channels the cascade found: its cost comes on top of" in table
    assert table.strip() in stdout
    assert stdout.rstrip().splitlines()[-1].startswith("comparison:")
    again = run_main("--mode=compare", f"--model_dir={model_dir}", *TINY_COMPARE)
    assert again.returncode == 0, again.stderr[-3000:]
    assert table.strip() in again.stdout  # every method found finished: nothing trained again
    with open(os.path.join(model_dir, "compare.json")) as f:
        assert json.load(f) == report


def test_every_run_reports_its_training_cost_and_the_table_sets_it_against_the_cascades(compared):
    """Plain steps per step: the 1-TA cascade's joint epoch 2 + 1/3, fine-tuning and l1 4/3, scratch 1."""
    model_dir, _, report = compared
    cost = {method: results["training_cost"] for method, results in report["runs"].items()}
    steps = cost["hsd"]["phases"]["joint"]["steps"]
    assert steps > 0 and all(c["steps"] == 2 * steps for c in cost.values())  # 2 epochs each, as many steps
    assert cost["hsd"]["plain_steps"] == pytest.approx(steps * (7 / 3 + 4 / 3), abs=0.2)
    assert cost["l1"]["plain_steps"] == pytest.approx(2 * steps * 4 / 3, abs=0.2)
    assert cost["scratch"]["plain_steps"] == 2 * steps and cost["scratch"]["forward"] == 0
    assert all(c["seconds"] > 0 for c in cost.values())
    with open(os.path.join(model_dir, "compare.md")) as f:
        table = f.read()
    ratio = cost["scratch"]["plain_steps"] / cost["hsd"]["plain_steps"]
    assert f"| scratch | 2 | {cost['scratch']['plain_steps']:,.0f} ({ratio:.2f}x) |" in table


def test_equal_compute_gives_a_baseline_the_epochs_of_the_cascades_compute(compared, tmp_path):
    """The cascade of these flags costs 2 + 1/3 + 4/3 = 3.67 plain epochs: scratch gets 4 epochs, not 2."""
    model_dir, _, _ = compared
    result = run_main("--method=scratch", "--equal=compute",
                      f"--teacher={os.path.join(model_dir, 'teacher', 'teacher.weights.h5')}",
                      f"--model_dir={tmp_path / 'scratch_b'}", *TINY_COMPARE)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / "scratch_b" / "results.json") as f:
        cost = json.load(f)["training_cost"]
    assert cost["equal"] == "compute" and cost["phases"]["scratch"]["epochs"] == 4
    with open(tmp_path / "scratch_b" / "scratch" / "seconds.json") as f:
        assert sorted(json.load(f), key=int) == ["1", "2", "3", "4"]  # every epoch timed


def test_a_baseline_trains_another_runs_student_channels_with_masks_from(compared, tmp_path):
    """--masks_from: l1 keeps the cascade's learned channels (its mask trained as l1 trains), at their cost."""
    model_dir, _, report = compared
    result = run_main("--method=l1", f"--masks_from={os.path.join(model_dir, 'hsd')}",
                      f"--teacher={os.path.join(model_dir, 'teacher', 'teacher.weights.h5')}",
                      f"--model_dir={tmp_path / 'l1_hsd_mask'}", *TINY_COMPARE)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / "l1_hsd_mask" / "results.json") as f:
        student = json.load(f)["views"][0]
    hsd = report["runs"]["hsd"]["views"][0]
    assert student["kept_channels"] == hsd["kept_channels"]
    assert (student["macs"], student["params"], student["filters_kept"]) == (hsd["macs"], hsd["params"],
                                                                            hsd["filters_kept"])
    assert student["prune_ratio"] == pytest.approx(1 - hsd["filters_kept"] / hsd["filters_total"], abs=1e-4)


def test_masks_from_counts_keeps_the_runs_per_layer_counts_with_the_teachers_largest_filters(compared, tmp_path):
    """--masks_from_counts: the cascade's architecture (channels per layer, so its MACs) with l1's choice of filters
    within each layer: the teacher's largest layer-normalised L1 norms."""
    model_dir, _, report = compared
    teacher = os.path.join(model_dir, "teacher", "teacher.weights.h5")
    result = run_main("--method=l1", f"--masks_from={os.path.join(model_dir, 'hsd')}", "--masks_from_counts",
                      f"--teacher={teacher}", f"--model_dir={tmp_path / 'l1_hsd_counts'}", *TINY_COMPARE)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / "l1_hsd_counts" / "results.json") as f:
        student = json.load(f)["views"][0]
    hsd = report["runs"]["hsd"]["views"][0]
    assert {g: len(c) for g, c in student["kept_channels"].items()} == {g: len(c) for g, c in hsd["kept_channels"].items()}
    assert student["macs"] == hsd["macs"] and student["kept_channels"] != hsd["kept_channels"]
    import keras  # pylint: disable=import-outside-toplevel

    from hsd_tf import architectures, masks  # pylint: disable=import-outside-toplevel

    dense = architectures.vgg16((32, 32, 3), 10, width_multiplier=0.0625)
    dense.load_weights(teacher)
    for group, channels in student["kept_channels"].items():
        norms = masks.l1_scores(keras.ops.convert_to_numpy(dense.get_layer(group).kernel))
        assert sorted(channels) == sorted(np.argsort(-norms, kind="stable")[:len(channels)].tolist()), group


def test_the_cascades_architecture_trains_as_each_baseline_beside_it(compared, tmp_path):
    """l1_on_hsd_mask and scratch_on_hsd_mask keep the cascade student's channels (so its MACs and params) and train
    them as l1 and scratch do; the methods already finished are read back, not trained again."""
    import shutil  # pylint: disable=import-outside-toplevel

    import keras  # pylint: disable=import-outside-toplevel

    model_dir, _, report = compared
    copy = str(tmp_path / "compare")
    # Without the finished scratch_on_hsd_mask run: it names the cascade's run by its path, which the copy moves.
    shutil.copytree(model_dir, copy, ignore=lambda folder, _: ["scratch_on_hsd_mask"] if folder == model_dir else [])
    result = run_main("--mode=compare", f"--model_dir={copy}", *TINY_COMPARE,
                      "--compare_methods=hsd,l1,scratch,l1_on_hsd_mask,scratch_on_hsd_mask")
    assert result.returncode == 0, result.stderr[-3000:]
    with open(os.path.join(copy, "compare.json")) as f:
        runs = json.load(f)["runs"]
    assert list(runs) == ["hsd", "l1", "scratch", "l1_on_hsd_mask", "scratch_on_hsd_mask"]
    assert {m: runs[m] for m in ("hsd", "l1", "scratch")} == {m: report["runs"][m] for m in ("hsd", "l1", "scratch")}
    hsd = runs["hsd"]["views"][0]
    for method, trained_as in (("l1_on_hsd_mask", "l1"), ("scratch_on_hsd_mask", "scratch")):
        student = runs[method]["views"][0]
        assert runs[method]["method"] == trained_as and runs[method]["masks_from"] == os.path.join(copy, "hsd")
        assert student["kept_channels"] == hsd["kept_channels"]
        assert (student["macs"], student["params"]) == (hsd["macs"], hsd["params"])
        assert runs[method]["training_cost"]["plain_steps"] == pytest.approx(
            runs[trained_as]["training_cost"]["plain_steps"])
    first_conv = {method: keras.saving.load_model(os.path.join(copy, method, "export", "student.keras"))
                  .get_layer("block1_conv1").get_weights()[0] for method in ("l1_on_hsd_mask", "scratch_on_hsd_mask")}
    assert not np.allclose(*first_conv.values())  # one fine-tuned from the teacher, one from random weights
    with open(os.path.join(copy, "compare.md")) as f:
        table = f.read()
    assert "| l1_on_hsd_mask student |" in table and "| scratch_on_hsd_mask student |" in table
    assert "l1_on_hsd_mask and scratch_on_hsd_mask train the channels the cascade found" in table


def _results(method, teacher_val, student_val):
    return {"method": method, "teacher": {"val_accuracy": teacher_val} if teacher_val is not None else {},
            "views": [{"name": "student"} | ({"val_accuracy": student_val} if student_val is not None else {})]}


def test_a_cascade_student_far_below_its_teacher_on_validation_points_to_compare():
    note = compare.advice(_results("hsd", 0.9792, 0.7222))
    assert note.startswith("Note: the student is 25.7 points below the teacher") and "--mode=compare" in note
    assert compare.advice(_results("hsd", 0.90, 0.90 - compare.ADVICE_LOSS + 1e-6)) == ""
    assert compare.advice(_results("hsd", 0.90, 0.95)) == ""  # above its teacher
    assert compare.advice(_results("l1", 0.9792, 0.7222)) == ""  # a baseline is what compare would train
    assert compare.advice(_results("hsd", None, None)) == ""  # --val_fraction=0: nothing held out to judge on


def test_the_advice_reads_the_primary_metric_in_its_direction():
    """An error (lower is better): the student 25% worse than its teacher is worth a comparison, 5% is not."""
    def results(teacher_val, student_val):
        return {"method": "hsd", "primary_metric": {"name": "mae", "higher_is_better": False},
                "teacher": {"val_metric": teacher_val}, "views": [{"name": "student", "val_metric": student_val}]}

    note = compare.advice(results(1.0, 1.25))
    assert note.startswith("Note: the student is 25% worse than the teacher in mae") and "--mode=compare" in note
    assert compare.advice(results(1.0, 1.05)) == "" and compare.advice(results(1.0, 0.8)) == ""


def test_the_teacher_ladder_climbs_when_the_student_is_better_in_the_metrics_direction(tmp_path):
    """An error metric: the student beats its teacher when its value is lower."""
    from hsd_tf.callbacks import TeacherLadder  # pylint: disable=import-outside-toplevel

    class Cascade:
        ladder_rung_value = 0

        def set_ladder_rung(self, rung=None):
            if rung is not None:
                self.ladder_rung_value = rung

    ladder = TeacherLadder(["ta1", "teacher"], [2.0, 1.0], str(tmp_path / "ladder.json"), monitor="val_student_mae",
                           better=lambda value, than: value < than, metric="mae")
    ladder.set_model(Cascade())
    ladder.on_epoch_end(0, {"val_student_mae": 2.5})
    assert ladder.model.ladder_rung_value == 0
    ladder.on_epoch_end(1, {"val_student_mae": 1.9})
    assert ladder.model.ladder_rung_value == 1 and ladder.switches()[0]["to"] == "teacher"
