"""Bad input, table-driven: every user mistake is one line naming the flag or file, exit 2, nothing written.

Each case runs main.py with the offending setting and `--model_dir` pointing at a finished run (unless the
model_dir is the mistake), and checks: exit status 2; exactly one line on stderr, naming the flag or file;
no traceback; and the finished run's folder byte-for-byte as it was.
"""

import concurrent.futures
import hashlib
import os

import pytest

from testing import TINY, run_main

RUN_ARGS = TINY + ["--export=", "--notensorboard"]

# (what, arguments with {placeholders}, text the one line must contain)
CASES = [
    # flags
    ("negative num_ta", ["--num_ta=-1"], "num_ta=-1"),
    ("unknown arch", ["--arch=vgg19"], "arch='vgg19'"),
    ("unknown dataset", ["--dataset=mnist"], "dataset='mnist'"),
    ("prune ratio 1", ["--prune_ratio=1.0"], "prune_ratio=1.0"),
    ("too few TA ratios", ["--num_ta=2", "--ta_ratios=0.5"], "ta_ratios=[0.5]"),
    ("TA ratio above the student's", ["--num_ta=2", "--prune_ratio=0.6", "--ta_ratios=0.7,0"], "ta_ratios=[0.7, 0.0]"),
    ("no joint epochs", ["--joint_epochs=0"], "joint_epochs=0"),
    ("negative batch", ["--batch_size=-4"], "batch_size=-4"),
    ("ImageNet without archives", ["--dataset=imagenet2012", "--arch=resnet50"], "data_dir=None"),
    ("unknown export format", ["--export=onnx"], "export='onnx'"),
    ("unknown strategy", ["--strategy=gpus"], "strategy='gpus'"),
    ("TPU without a TPU", ["--strategy=tpu"], "strategy='tpu'"),
    ("multi_worker without TF_CONFIG", ["--strategy=multi_worker"], "strategy='multi_worker'"),
    ("unknown precision", ["--mixed_precision=int8"], "mixed_precision='int8'"),
    ("unknown score optimizer", ["--score_optimizer=lion"], "score_optimizer='lion'"),
    ("unknown score schedule", ["--score_schedule=step"], "score_schedule='step'"),
    ("layer prune ratio 0", ["--max_layer_prune_ratio=0"], "max_layer_prune_ratio=0.0"),
    ("no filters per layer", ["--min_layer_filters=0"], "min_layer_filters=0"),
    ("negative hysteresis", ["--mask_hysteresis=-0.1"], "mask_hysteresis=-0.1"),
    ("negative recalibration", ["--recalibration_batches=-1"], "recalibration_batches=-1"),
    ("negative example cap", ["--max_train_examples=-5"], "max_train_examples=-5"),
    ("floors over the budget", ["--prune_ratio=0.95", "--min_layer_filters=3"], "min_layer_filters=3"),
    ("not an integer", ["--num_ta=abc"], "--num_ta=abc"),
    ("unknown flag", ["--num_tas=2"], "'num_tas'"),
    ("a positional argument", ["train"], "unexpected arguments ['train']"),
    ("MAC budget above 1", ["--macs_budget=1.5"], "--macs_budget: must be in (0, 1)"),
    ("MAC budget and prune ratio", ["--macs_budget=0.3", "--prune_ratio=0.5"], "alternative to --prune_ratio"),
    ("rounding to 0", ["--round_to=0"], "round_to=0"),
    ("unknown method", ["--method=taylor"], "method='taylor'"),
    ("assistants' ratios for a baseline", ["--method=l1", "--ta_ratios=0"], "--method=l1 trains the student alone"),
    ("per-MAC saliency without a budget", ["--saliency=per_mac"], "saliency='per_mac'"),
    ("masks for the cascade", ["--masks_from={run}"], "--masks_from: gives a baseline"),
    ("masks of another model", ["--method=l1", "--masks_from={run}", "--width_multiplier=0.125"],
     "pruned from another model"),
    ("masks from nowhere", ["--method=l1", "--masks_from=/nonexistent"], "masks_from='/nonexistent'"),
    ("unknown method to compare", ["--mode=compare", "--compare_methods=hsd,taylor"], "compare_methods='hsd,taylor'"),
    # models
    ("unknown Keras application", ["--arch=keras.applications.ResNet9"], "arch='keras.applications.ResNet9'"),
    ("missing .keras model", ["--arch=/nonexistent/mine.keras"], "arch='/nonexistent/mine.keras'"),
    ("input too small for the model", ["--arch=keras.applications.Xception"], "arch='keras.applications.Xception'"),
    ("width of a Keras application", ["--arch=keras.applications.MobileNetV2", "--width_multiplier=0.5"],
     "arch='keras.applications.MobileNetV2'"),
    ("unknown unpruned layer", ["--unpruned_layers=nope"], "unpruned_layers=['nope']"),
    ("a model of two inputs on images", ["--arch={two_inputs}", "--width_multiplier=1"],
     "the model takes 2 inputs ((32, 32, 3), (4,)): a model of several inputs takes --dataset=py:FILE.py"),
    ("a segmentation model on class labels", ["--arch={segmentation}", "--width_multiplier=1"],
     "gives (32, 32, 11), not one score per class (a model of another task takes --dataset=py:FILE.py)"),
    # datasets of any task (--dataset=py:)
    ("a py: file that is not there", ["--dataset=py:/nonexistent/data.py"], "dataset='py:/nonexistent/data.py'"),
    ("a py: dataset with a built-in model", ["--dataset=py:{py_segmentation}"], "is pruned with your own model, a .keras"),
    ("a py: file without datasets()", ["--arch={segmentation_compiled}", "--width_multiplier=1",
                                        "--dataset=py:{py_without}"], "defines no function datasets()"),
    ("a py: file returning two datasets", ["--arch={segmentation_compiled}", "--width_multiplier=1",
                                           "--dataset=py:{py_two}"], "it returned a tuple of 2"),
    ("a py: file that fails to import", ["--arch={segmentation_compiled}", "--width_multiplier=1",
                                         "--dataset=py:{py_broken}"], "cannot be imported (ZeroDivisionError"),
    ("a model with no loss for its task", ["--arch={segmentation}", "--width_multiplier=1",
                                          "--dataset=py:{py_segmentation}"], "has no loss, and only a classifier"),
    ("targets that do not fit the outputs", ["--arch={segmentation_compiled}", "--width_multiplier=1",
                                             "--dataset=py:{py_wrong_targets}"],
     "the targets of output 'classes' have shape (32, 32, 3) per example"),
    ("a metric Keras does not know", ["--arch={unknown_metric}", "--width_multiplier=1",
                                      "--dataset=py:{py_segmentation}"], "Keras knows no metric 'nonsense'"),
    ("a direction that is none", ["--metric_direction=sideways"], "metric_direction='sideways'"),
    ("preprocessing for a py: dataset", ["--arch={segmentation_compiled}", "--width_multiplier=1",
                                         "--dataset=py:{py_segmentation}", "--preprocessing=unit"],
     "applies to image datasets"),
    # flagfiles
    ("missing flagfile", ["--flagfile=flags/nope.cfg"], "flagfile='flags/nope.cfg'"),
    ("flagfile is a folder", ["--flagfile=flags"], "flagfile='flags'"),
    ("bad value in a flagfile", ["--flagfile={bad_flagfile}"], "--num_ta=many"),
    # folder datasets
    ("one class", ["--dataset=folder:{one_class}"], "at least two class folders"),
    ("an empty class", ["--dataset=folder:{empty_class}"], "holds no images"),
    ("a file that is not an image", ["--dataset=folder:{not_an_image}"], "fake.png is not a PNG, JPEG, GIF or BMP"),
    ("no test split", ["--dataset=folder:{no_test}"], "needs {no_test}/test/<class>/<images>"),
    ("classes differ between splits", ["--dataset=folder:{other_classes}"], "train and test class folders differ"),
    # teacher files
    ("teacher of another architecture", ["--teacher={resnet_teacher}"],
     "layer 'block1_conv1': expected a kernel of shape (3, 3, 3, 4) for --arch, found (7, 7, 3, 4)"),
    ("teacher of another width", ["--teacher={wide_teacher}"],
     "layer 'block1_conv1': expected a kernel of shape (3, 3, 3, 4) for --arch, found (3, 3, 3, 8)"),
    ("teacher with other classes", ["--teacher={five_class_teacher}"], "layer 'predictions': expected weight shapes"),
    ("truncated teacher", ["--teacher={truncated_teacher}"], "cannot be read as an HDF5 weights file"),
    ("teacher that is not HDF5", ["--teacher={text_weights}"], "cannot be read as an HDF5 weights file"),
    ("teacher that is not a .keras file", ["--teacher={text_keras}"], "cannot be read as a .keras model"),
    ("teacher of another format", ["--teacher={text_other}"], "expected a .keras model or a .weights.h5 file"),
    ("missing teacher", ["--teacher=/nonexistent/teacher.keras"], "file not found"),
    # model_dirs
    ("model_dir is a file", ["--model_dir={a_file}"], "model_dir='{a_file}'"),
    ("model_dir cannot be written", ["--model_dir=/proc/1"], "model_dir='/proc/1'"),
    ("model_dir under an unwritable folder", ["--model_dir=/proc/1/run"], "cannot be made in /proc/1"),
    ("another run's model_dir", ["--width_multiplier=0.125"], "holds a run with width_multiplier=0.0625"),
    ("export of an unfinished run", ["--mode=export", "--model_dir={unfinished}"], "needs a finished run"),
]


def _tree_digest(root):
    """sha256 of every file under root, by relative path."""
    digest = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                digest[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return digest


def _image_folder(root, classes, bad=None, splits=("train", "test")):
    import numpy as np  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    for split in splits:
        for name, count in classes.items():
            os.makedirs(os.path.join(root, split, name), exist_ok=True)
            for i in range(count):
                image = tf.io.encode_png(np.full((6, 6, 3), 40 * i, np.uint8))
                tf.io.write_file(os.path.join(root, split, name, f"{i}.png"), image)
    if bad:
        with open(os.path.join(root, "train", bad, "fake.png"), "w") as f:
            f.write("not an image")
    return root


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A finished tiny run and one file or folder per mistake."""
    from hsd_tf import architectures  # pylint: disable=import-outside-toplevel

    root = tmp_path_factory.mktemp("bad_input")
    run = str(root / "run")
    result = run_main(*RUN_ARGS, f"--model_dir={run}")
    assert result.returncode == 0, result.stderr[-3000:]
    paths = {"run": run}
    architectures.get("resnet50", (32, 32, 3), 10, 0.0625).save_weights(str(root / "resnet.weights.h5"))
    paths["resnet_teacher"] = str(root / "resnet.weights.h5")
    architectures.get("vgg16", (32, 32, 3), 10, 0.125).save_weights(str(root / "wide.weights.h5"))
    paths["wide_teacher"] = str(root / "wide.weights.h5")
    architectures.get("vgg16", (32, 32, 3), 5, 0.0625).save(str(root / "five.keras"))
    paths["five_class_teacher"] = str(root / "five.keras")
    with open(os.path.join(run, "teacher", "teacher.weights.h5"), "rb") as f:
        good = f.read()
    (root / "truncated.weights.h5").write_bytes(good[: len(good) // 2])
    paths["truncated_teacher"] = str(root / "truncated.weights.h5")
    for key, name in (("text_weights", "text.weights.h5"), ("text_keras", "text.keras"), ("text_other", "t.txt"),
                      ("a_file", "a_file")):
        (root / name).write_text("not a model")
        paths[key] = str(root / name)
    (root / "bad.cfg").write_text("--dataset=digits\n--num_ta=many\n")
    paths["bad_flagfile"] = str(root / "bad.cfg")
    paths["one_class"] = _image_folder(str(root / "one_class"), {"a": 2})
    paths["empty_class"] = _image_folder(str(root / "empty_class"), {"a": 2, "b": 0})
    paths["not_an_image"] = _image_folder(str(root / "not_an_image"), {"a": 2, "b": 2}, bad="b")
    paths["no_test"] = _image_folder(str(root / "no_test"), {"a": 2, "b": 2}, splits=("train",))
    paths["other_classes"] = _image_folder(str(root / "other_classes"), {"a": 2, "b": 2})
    os.rename(os.path.join(paths["other_classes"], "test", "b"), os.path.join(paths["other_classes"], "test", "c"))
    import keras  # pylint: disable=import-outside-toplevel

    images, extra = keras.Input((32, 32, 3)), keras.Input((4,))
    features = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(images))
    keras.Model([images, extra], keras.layers.Dense(10)(keras.layers.Concatenate()([features, extra]))).save(
        str(root / "two_inputs.keras"))
    keras.Model(images, keras.layers.Conv2D(11, 3, padding="same")(keras.layers.Conv2D(4, 3, padding="same")(images))
                ).save(str(root / "segmentation.keras"))
    paths["two_inputs"], paths["segmentation"] = str(root / "two_inputs.keras"), str(root / "segmentation.keras")
    segmentation = keras.Model(images, keras.layers.Conv2D(11, 1, name="classes")(
        keras.layers.Conv2D(4, 3, padding="same")(keras.layers.Conv2D(4, 3, padding="same")(images))))
    segmentation.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    segmentation.save(str(root / "segmentation_compiled.keras"))
    segmentation.compile("adam", "mse", metrics=["nonsense"])
    segmentation.save(str(root / "unknown_metric.keras"))
    paths["segmentation_compiled"] = str(root / "segmentation_compiled.keras")
    paths["unknown_metric"] = str(root / "unknown_metric.keras")
    datasets = ("import numpy as np\nimport tensorflow as tf\n"
                "def split(n, targets):\n"
                "    x = np.random.RandomState(0).normal(size=(n, 32, 32, 3)).astype('float32')\n"
                "    return tf.data.Dataset.from_tensor_slices((x, targets(n)))\n")
    for key, body in (
            ("py_segmentation", "def datasets():\n    t = lambda n: np.zeros((n, 32, 32), 'int32')\n"
                                "    return split(160, t), split(32, t), split(32, t)\n"),
            ("py_wrong_targets", "def datasets():\n    t = lambda n: np.zeros((n, 32, 32, 3), 'float32')\n"
                                 "    return split(160, t), split(32, t), split(32, t)\n"),
            ("py_two", "def datasets():\n    t = lambda n: np.zeros((n, 32, 32), 'int32')\n"
                       "    return split(160, t), split(32, t)\n"),
            ("py_without", "def data():\n    return None\n"),
            ("py_broken", "1 / 0\n")):
        (root / f"{key}.py").write_text(datasets + body)
        paths[key] = str(root / f"{key}.py")
    paths["unfinished"] = str(root / "unfinished")
    os.makedirs(paths["unfinished"])
    (root / "unfinished" / "config.json").write_text("{}")
    return paths


def _run_case(case, paths):
    _, args, expected = case
    args = [arg.format(**paths) for arg in args]
    if not any(arg.startswith("--model_dir=") for arg in args):
        args.append(f"--model_dir={paths['run']}")
    return run_main(*RUN_ARGS, *args, timeout=300), expected.format(**paths)


@pytest.mark.slow
def test_every_bad_input_is_one_line_with_exit_2_and_leaves_the_model_dir_alone(assets):
    before = _tree_digest(assets["run"])
    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:  # each case is a short subprocess
        outcomes = list(pool.map(lambda case: _run_case(case, assets), CASES))
    failures = []
    for (what, _, _), (result, expected) in zip(CASES, outcomes):
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        if result.returncode != 2 or len(lines) != 1 or expected not in lines[0] or "Traceback" in result.stderr:
            failures.append(f"{what}: exit {result.returncode}, stderr {result.stderr[-600:]!r}")
    assert not failures, "\n".join(failures)
    assert len(CASES) >= 25
    assert _tree_digest(assets["run"]) == before  # nothing written to the finished run by any failing one
