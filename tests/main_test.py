"""The command line: profiling, a tiny end-to-end run that resumes, any model. Bad input: bad_input_test.py."""

import json
import os
import subprocess
import sys

import pytest

from hsd_tf import compare
from testing import ROOT, TINY, run_main


def _scalar_tags(log_dir):
    """Every summary tag written in a TensorBoard log folder."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    tags = set()
    for name in os.listdir(log_dir):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(log_dir, name)):
            tags.update(value.tag for value in event.summary.value)
    return tags


def test_a_bad_flag_value_is_answered_before_tensorflow_loads():
    probe = ("import runpy, sys\n"
             "sys.argv = ['main.py', '--num_ta=-1']\n"
             "try:\n    runpy.run_path('main.py', run_name='__main__')\n"
             "except SystemExit as exit:\n    print(exit.code, 'tensorflow' in sys.modules, 'keras' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["2", "False", "False"], result.stderr
    assert result.stderr == "error: --num_ta: must be 0 or more. Received: num_ta=-1\n"


def test_profile_prints_table_and_writes_json(tmp_path):
    path = tmp_path / "profile.json"
    result = run_main("--mode=profile", "--arch=vgg16", "--dataset=cifar10", f"--profile_json={path}")
    assert result.returncode == 0, result.stderr
    assert "313,463,808" in result.stdout and "14,977,728" in result.stdout
    report = json.loads(path.read_text())
    assert report["params"] == 14_977_728 and report["macs"] == 313_463_808
    assert [layer["name"] for layer in report["layers"]][:2] == ["block1_conv1", "block1_conv2"]
    # The dry run's plan: 12 groups (every conv but the stem), the per-view layers, each view's budget.
    assert "12 mask groups, 4160 prunable filters:" in result.stdout
    assert "block5_conv3                      512     1  block5_conv3" in result.stdout
    assert "stems (per view, kept whole): block1_conv1" in result.stdout
    assert "head (per view, not pruned): fc1, predictions" in result.stdout
    assert "student: prune ratio 0.6, keeps 1664 of 4160 prunable filters" in result.stdout


# The float formats: quantized files of a model trained for two epochs flip near ties (tests/export_test.py
# checks them on a trained one).
E2E = TINY + ["--export=savedmodel,tflite"]


def test_end_to_end_then_resume_only_reports(tmp_path):
    model_dir = str(tmp_path / "run")
    result = run_main(*E2E, f"--model_dir={model_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    with open(os.path.join(model_dir, "results.json")) as f:
        results = json.load(f)
    assert (results["dataset"], results["arch"], results["num_ta"]) == ("digits", "vgg16", 1)
    assert 0.0 <= results["teacher"]["accuracy"] <= 1.0
    student, top = results["views"]
    assert (student["name"], top["name"]) == ("student", "ta1")
    assert student["filters_kept"] == round(0.5 * student["filters_total"])
    assert top["filters_kept"] == top["filters_total"]
    assert student["params"] < top["params"] == results["teacher"]["params"]
    assert student["macs"] < top["macs"] == results["teacher"]["macs"]
    for view in results["views"]:
        assert 0.0 <= view["accuracy"] <= 1.0 and 0.0 <= view["val_accuracy"] <= 1.0
        assert len(view["mask_changes"]) == 1  # one count per joint epoch
        assert view["fewest_layer_filters"] == min(len(c) for c in view["kept_channels"].values()) >= 2
    assert top["mask_changes"] == [0]  # the top view keeps every filter
    with open(os.path.join(model_dir, "joint", "mask_changes.json")) as f:
        assert json.load(f) == {v["name"]: v["mask_changes"] for v in results["views"]}
    for phase in ("teacher", "joint", "frozen", "finetune"):
        assert os.listdir(os.path.join(model_dir, "logs", phase))
    joint_tags = _scalar_tags(os.path.join(model_dir, "logs", "joint", "train"))
    assert {f"epoch_{v}_{m}" for v in ("student", "ta1") for m in ("loss", "acc", "kept", "changes")} <= joint_tags
    assert {"epoch_student_acc", "epoch_student_loss"} <= _scalar_tags(os.path.join(model_dir, "logs", "finetune", "train"))
    cascade_tags = _scalar_tags(os.path.join(model_dir, "logs", "joint", "cascade"))
    for view in ("student", "ta1"):
        assert {f"{view}/{t}" for t in ("ce", "kd", "hint", "params", "macs", "scores")} <= cascade_tags
    assert {"learning_rate", "score_learning_rate", "kept_fraction_per_layer"} <= cascade_tags
    assert "teacher_rung" in _scalar_tags(os.path.join(model_dir, "logs", "finetune", "cascade"))
    exports = student["exports"]
    assert set(exports) == {"keras", "savedmodel", "tflite"}
    assert exports["keras"]["accuracy"] == pytest.approx(student["accuracy"], abs=1e-6)
    assert exports["savedmodel"]["agreement"] == 1.0
    assert exports["tflite"]["agreement"] >= 0.99
    assert os.path.getsize(exports["tflite"]["path"]) == exports["tflite"]["bytes"] > 0
    assert "student" in result.stdout and "tflite acc" in result.stdout and "min layer" in result.stdout
    assert ("--mode=compare" in result.stdout) == bool(compare.advice(results))
    checkpoints = {p: os.path.getmtime(os.path.join(model_dir, p, "cascade.weights.h5"))
                   for p in ("joint", "frozen", "finetune")}

    again = run_main(*E2E, f"--model_dir={model_dir}")
    assert again.returncode == 0, again.stderr[-3000:]
    for phase, mtime in checkpoints.items():
        assert os.path.getmtime(os.path.join(model_dir, phase, "cascade.weights.h5")) == mtime
    with open(os.path.join(model_dir, "results.json")) as f:
        resumed = json.load(f)
    assert resumed["views"] == results["views"]

    _a_failed_export_keeps_everything_else_and_exits_non_zero(model_dir)

    reexport = run_main(*TINY, "--mode=export", "--export=tflite", f"--model_dir={model_dir}")
    assert reexport.returncode == 0, reexport.stderr[-3000:]
    with open(os.path.join(model_dir, "results.json")) as f:
        assert set(json.load(f)["views"][0]["exports"]) == {"keras", "tflite"}

    conflict = run_main(*TINY, "--num_ta=2", f"--model_dir={model_dir}")
    assert conflict.returncode == 2 and "num_ta" in conflict.stderr and "Traceback" not in conflict.stderr


def _a_failed_export_keeps_everything_else_and_exits_non_zero(model_dir):
    """A converter error and a LiteRT abort (stand-ins) while exporting a finished run again: one line each,
    exit 1, results.json written with every other file."""
    probe = f"""
import runpy, sys
from hsd_tf import export
convert, command = export._convert, export.child_command
def failing(saved_model, fmt, images):
    if fmt == "tflite_dynamic":
        raise RuntimeError("<unknown>:0: error: 'tf.Stand' op is neither a custom op nor a flex op\\nmore")
    return convert(saved_model, fmt, images)
export._convert = failing
export.child_command = lambda path, xnnpack=True: ([sys.executable, "-c", "import os; os.abort()"] if "_int8" in path
                                                  else command(path, xnnpack))
sys.argv = ["main.py"] + {TINY + ["--mode=export", f"--model_dir={model_dir}"]!r}
runpy.run_path("main.py", run_name="__main__")
"""
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert result.returncode == 1, result.stderr[-3000:]
    assert result.stderr.splitlines() == [
        "error: --export: student tflite_dynamic: conversion failed: 'tf.Stand' op is neither a custom op nor a "
        "flex op",
        "error: --export: student tflite_int8: could not be run: LiteRT stopped with SIGABRT while running the file",
    ]
    with open(os.path.join(model_dir, "results.json")) as f:
        exports = json.load(f)["views"][0]["exports"]
    assert set(exports) == {"keras", "savedmodel", "tflite", "tflite_dynamic", "tflite_int8"}
    for fmt in ("keras", "savedmodel", "tflite"):
        assert "error" not in exports[fmt] and os.path.exists(exports[fmt]["path"])
    assert "student tflite_int8:    failed (below)" in result.stdout


def test_a_non_finite_loss_stops_the_run_with_one_line(tmp_path):
    result = run_main(*TINY, "--teacher_learning_rate=1e30", f"--model_dir={tmp_path}")
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "teacher loss became" in lines[0] and "--teacher_learning_rate" in lines[0]
    assert not os.path.exists(tmp_path / "teacher" / "teacher.weights.h5")


@pytest.mark.slow
def test_notensorboard_writes_no_logs(tmp_path):
    result = run_main(*TINY, "--teacher_epochs=1", "--joint_epochs=1", "--frozen_epochs=0",
                      "--finetune_epochs=1", "--export=", "--notensorboard", f"--model_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert not os.path.exists(tmp_path / "logs")
    assert os.path.exists(tmp_path / "results.json")


def test_an_untraceable_model_is_one_line_with_the_way_out(tmp_path):
    import keras  # pylint: disable=import-outside-toplevel

    x = keras.Input((32, 32, 3))
    y = keras.layers.Conv2D(4, 3, name="c")(keras.layers.Conv2D(4, 3, name="stem")(x))
    y = keras.layers.Conv2D(4, 3, groups=2, name="grouped")(y)  # reads c's prunable channels
    y = keras.layers.Dense(10)(keras.layers.Flatten()(keras.layers.Conv2D(4, 3, name="d")(y)))
    path = str(tmp_path / "grouped.keras")
    keras.Model(x, y).save(path)
    result = run_main("--mode=profile", "--dataset=digits", f"--arch={path}")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "'grouped' (Conv2D)" in result.stderr and "--unpruned_layers=grouped" in result.stderr
    result = run_main("--mode=profile", "--dataset=digits", f"--arch={path}", "--unpruned_layers=grouped")
    assert result.returncode == 0, result.stderr
    assert "unpruned layers: grouped" in result.stdout


def test_a_saved_model_with_open_input_sizes_is_profiled_at_the_datasets_size(tmp_path):
    import keras  # pylint: disable=import-outside-toplevel

    x = keras.Input((None, None, 3))
    y = keras.layers.Conv2D(6, 3, name="a")(keras.layers.Conv2D(4, 3, name="stem")(x))
    path = str(tmp_path / "open.keras")
    keras.Model(x, keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(y))).save(path)
    result = run_main("--mode=profile", "--dataset=digits", f"--arch={path}")
    assert result.returncode == 0, result.stderr
    assert f"{3 * 3 * 4 * 6 * 28 * 28:,}" in result.stdout  # conv a at digits' 32x32, less two 3x3 valid borders


CUSTOM_LAYERS = """
import keras


class MyBlock(keras.layers.Layer):
    def __init__(self, filters=4, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.conv = keras.layers.Conv2D(filters, 3, padding="same")

    def call(self, x):
        return keras.ops.relu(self.conv(x))

    def get_config(self):
        return {**super().get_config(), "filters": self.filters}
"""


def test_a_saved_model_with_custom_layers_loads_with_their_module(tmp_path):
    import importlib.util  # pylint: disable=import-outside-toplevel

    import keras  # pylint: disable=import-outside-toplevel

    module_path = tmp_path / "my_layers.py"
    module_path.write_text(CUSTOM_LAYERS)
    spec = importlib.util.spec_from_file_location("my_layers", module_path)
    my_layers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(my_layers)
    x = keras.Input((32, 32, 3))
    y = my_layers.MyBlock(6, name="block")(keras.layers.Conv2D(4, 3, name="stem")(x))
    path = str(tmp_path / "custom.keras")
    keras.Model(x, keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(y))).save(path)
    refused = run_main("--mode=profile", "--dataset=digits", f"--arch={path}")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "uses the class 'MyBlock', which is not imported: pass --custom_objects=my_layers" in refused.stderr
    loaded = run_main("--mode=profile", "--dataset=digits", f"--arch={path}", f"--custom_objects={module_path}")
    assert loaded.returncode == 0, loaded.stderr
    assert "block_conv" in loaded.stdout or "conv2d" in loaded.stdout  # the block inlined: its conv is a group


def test_a_saved_model_of_ones_own_is_pruned_and_exported(tmp_path):
    from conftest import branchy_cnn  # pylint: disable=import-outside-toplevel

    path = str(tmp_path / "mine.keras")
    branchy_cnn().save(path)
    model_dir = str(tmp_path / "run")
    result = run_main(*TINY, f"--arch={path}", f"--teacher={path}", "--width_multiplier=1", "--export=tflite",
                      f"--model_dir={model_dir}", "--notensorboard")
    assert result.returncode == 0, result.stderr[-3000:]
    assert not os.path.exists(os.path.join(model_dir, "teacher"))  # given, not trained
    with open(os.path.join(model_dir, "results.json")) as f:
        results = json.load(f)
    student = results["views"][0]
    assert student["params"] < results["teacher"]["params"] and student["macs"] < results["teacher"]["macs"]
    assert student["exports"]["tflite"]["agreement"] >= 0.99
    assert os.path.exists(os.path.join(model_dir, "export", "student.keras"))


SEQUENCE_DATASETS = """
import numpy as np
import tensorflow as tf

def datasets():
    rng = np.random.RandomState(0)
    def split(n):
        x = rng.normal(size=(n, 24, 2)).astype("float32")
        y = np.stack([x[:, :, 0].mean(axis=1), np.abs(x[:, :, 1]).max(axis=1)], axis=1)
        return tf.data.Dataset.from_tensor_slices((x, y))
    return split(192), split(48), split(48)
"""


def test_a_model_of_another_task_is_pruned_from_the_command_line_with_its_own_loss(tmp_path):
    """A Conv1D regression model compiled with its loss and metrics, its data from a py: module: the teacher's
    metric is the model's own `evaluate`, every view reports every metric, files are verified on outputs."""
    import keras  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel

    x = keras.Input((24, 2))
    y = keras.layers.ReLU()(keras.layers.BatchNormalization()(keras.layers.Conv1D(8, 3, padding="same")(x)))
    y = keras.layers.ReLU()(keras.layers.BatchNormalization()(keras.layers.Conv1D(12, 3, padding="same")(y)))
    y = keras.layers.MaxPooling1D()(y)
    y = keras.layers.ReLU()(keras.layers.BatchNormalization()(keras.layers.Conv1D(12, 3, padding="same")(y)))
    model = keras.Model(x, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling1D()(y)))
    model.compile("adam", "mae", metrics=[keras.metrics.MeanAbsoluteError(name="mae"), "mse"])
    module = tmp_path / "sequences.py"
    module.write_text(SEQUENCE_DATASETS)
    namespace = {}
    exec(SEQUENCE_DATASETS, namespace)  # pylint: disable=exec-used
    train, _, test = namespace["datasets"]()
    model.fit(train.batch(32), epochs=3, verbose=0)
    theirs = model.evaluate(test.batch(64), return_dict=True, verbose=0)
    path = str(tmp_path / "regressor.keras")
    model.save(path)
    model_dir = str(tmp_path / "run")
    args = ["--dataset=py:" + str(module), f"--arch={path}", f"--teacher={path}", "--num_ta=1", "--prune_ratio=0.5",
            "--batch_size=32", "--joint_epochs=1", "--finetune_epochs=1", "--verbose=0", "--notensorboard",
            "--export=savedmodel,tflite,tflite_int8", f"--model_dir={model_dir}"]
    result = run_main(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(os.path.join(model_dir, "results.json")) as f:
        results = json.load(f)
    assert results["primary_metric"] == {"name": "mae", "higher_is_better": False}
    assert results["teacher"]["metrics"]["mae"] == pytest.approx(theirs["mae"], rel=1e-4)
    assert results["teacher"]["metrics"]["mse"] == pytest.approx(theirs["mse"], rel=1e-4)
    student = results["views"][0]
    assert set(student["metrics"]) == {"mae", "mse"} and student["macs"] < results["teacher"]["macs"]
    assert "val_metric" in student and "accuracy" not in student
    for fmt in ("savedmodel", "tflite"):
        assert "error" not in student["exports"][fmt] and student["exports"][fmt]["output_gap"] < 1e-4
    assert "metric" in student["exports"]["tflite_int8"]
    lines = result.stdout.splitlines()
    header = next(line for line in lines if line.startswith("model"))
    assert "mae" in header and "accuracy" not in header
    again = run_main(*args)  # finished: it only reports
    assert again.returncode == 0 and "== joint" not in again.stdout
    saved = keras.saving.load_model(student["exports"]["keras"]["path"])
    assert saved.output_shape == (None, 2)
    assert np.isfinite(saved.predict(next(iter(test.batch(4)))[0], verbose=0)).all()
