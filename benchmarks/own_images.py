"""A user's own model on the user's own image folder, from the command line, as a new user would do it.

    python benchmarks/own_images.py --case=rgb --workdir=/tmp/own        # digits as 32x32 RGB PNGs, a Keras-guide CNN
    python benchmarks/own_images.py --case=grey --workdir=/tmp/own       # Fashion-MNIST as 28x28 grey PNGs
    python benchmarks/own_images.py --case=application --workdir=/tmp/own  # MobileNet + its preprocess_input

Each case writes an image folder (`train/`, `val/`, `test/`, one folder per class), trains the user's model
the way the Keras guides do (`keras.utils.image_dataset_from_directory`, Adam, Keras' default BatchNorm),
saves it, and measures it with its own `model.evaluate` on `test/`. Then it runs

    python main.py --arch=mine.keras --teacher=mine.keras --dataset=folder:DIR --prune_ratio=0.6 --num_ta=2

with no preprocessing or augmentation flag, and reports what hsd_tf chose, the teacher's test accuracy as hsd_tf
measures it against the model's own `evaluate`, and the student's test accuracy. With --learning_rates it runs
once per rate and reports the run whose student scores best on the validation split (`val/`), never on `test/`;
with --seeds the chosen rate runs again at the other seeds, and the student is also reported as their mean.
The user's model is trained once and read back from --workdir afterwards.

  rgb          scikit-learn's 1,797 digits, 8x8 upsampled to 32x32 RGB; a CNN with `Rescaling(1/255)` inside.
  grey         the first 6,000 / 1,000 / 2,000 Fashion-MNIST images (train / val / test), 28x28 grey; the same
               kind of CNN reading 28x28x1 (needs Debian's dataset-fashion-mnist, or the idx files in
               ~/.keras/datasets/fashion-mnist).
  application  the digits folder; keras.applications.MobileNet (alpha 0.25, weights=None) with a softmax head,
               trained on `mobilenet.preprocess_input` images ([-1, 1]), which the model does not hold.
               (MobileNetV2's BatchNorm momentum of 0.999 leaves its moving statistics unconverged after the
               800 steps of this training: its own `evaluate` gives 10.8%, so it is no model a user would ship.)
"""

import json
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

flags.DEFINE_enum("case", "rgb", ["rgb", "grey", "application"], "Which user's model and folder.")
flags.DEFINE_string("workdir", "/tmp/own_images", "Where the folder, the model and the run go.")
flags.DEFINE_integer("user_epochs", 20, "Epochs of the user's own training.")
flags.DEFINE_list("hsd_flags", ["--joint_epochs=20", "--finetune_epochs=20", "--batch_size=64", "--verbose=2",
                                "--export=tflite"], "Further flags of the hsd_tf run.")
flags.DEFINE_string("run", None, "Folder of the hsd_tf run under --workdir (default: CASE_run).")
flags.DEFINE_list("learning_rates", [], "Learning rates of the cascade to run, one run each (CASE_run_lrRATE); the "
                  "student's validation accuracy chooses among them. Empty: one run at the tool's default.")
flags.DEFINE_list("seeds", ["0"], "Seeds of the cascade: the first runs every learning rate; the others run the "
                  "chosen one (CASE_run_lrRATE_sSEED), and the student is reported as the mean over all seeds.")
FLAGS = flags.FLAGS


def write_folder(root: str, images: np.ndarray, labels: np.ndarray, splits) -> None:
    """PNG files in root/<split>/<class>/, split by the index ranges of `splits` ({split: slice})."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    for split, part in splits.items():
        for i in range(*part.indices(len(images))):
            folder = os.path.join(root, split, f"class_{labels[i]}")
            os.makedirs(folder, exist_ok=True)
            tf.io.write_file(os.path.join(folder, f"{i}.png"), tf.io.encode_png(images[i]))


def digits_folder(root: str) -> None:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel

    images, labels = load_digits(return_X_y=True)
    images = tf.image.resize(images.reshape(-1, 8, 8, 1) / 16.0, (32, 32)).numpy()
    images = np.tile(np.round(images * 255).astype(np.uint8), (1, 1, 1, 3))
    order = np.random.RandomState(0).permutation(len(labels))
    write_folder(root, images[order], labels[order], {"train": slice(0, 1257), "val": slice(1257, 1437),
                                                      "test": slice(1437, None)})


def fashion_folder(root: str) -> None:
    from hsd_tf import data  # pylint: disable=import-outside-toplevel

    folder = data.fashion_mnist_folder(None)
    if folder is None:
        raise app.UsageError("Fashion-MNIST's idx files are not here: apt-get install dataset-fashion-mnist")
    images = data._read_idx(folder, data.FASHION_MNIST_FILES["train_images"])[..., None]  # pylint: disable=protected-access
    labels = data._read_idx(folder, data.FASHION_MNIST_FILES["train_labels"])  # pylint: disable=protected-access
    write_folder(root, images[:9000], labels[:9000], {"train": slice(0, 6000), "val": slice(6000, 7000),
                                                      "test": slice(7000, 9000)})


def user_model(case: str, shape, classes: int):
    """The user's model, made as the Keras guides make one."""
    import keras  # pylint: disable=import-outside-toplevel

    layers = keras.layers
    if case == "application":
        base = keras.applications.MobileNet(weights=None, include_top=False, input_shape=shape, alpha=0.25)
        inputs = keras.Input(shape)
        return keras.Model(inputs, layers.Dense(classes, activation="softmax")(
            layers.GlobalAveragePooling2D()(base(inputs))))
    model = keras.Sequential([keras.Input(shape), layers.Rescaling(1.0 / 255)])
    for filters in (32, 64, 128):
        model.add(layers.Conv2D(filters, 3, padding="same", use_bias=False))
        model.add(layers.BatchNormalization())
        model.add(layers.Activation("relu"))
        model.add(layers.MaxPooling2D())
    model.add(layers.GlobalAveragePooling2D())
    model.add(layers.Dropout(0.2))
    model.add(layers.Dense(classes, activation="softmax"))
    return model


def main(argv):
    del argv
    import keras  # pylint: disable=import-outside-toplevel

    folder = os.path.join(FLAGS.workdir, f"{FLAGS.case}_images")
    if not os.path.isdir(folder):
        (fashion_folder if FLAGS.case == "grey" else digits_folder)(folder)
    size, mode = ((28, 28), "grayscale") if FLAGS.case == "grey" else ((32, 32), "rgb")
    read = dict(image_size=size, color_mode=mode, batch_size=32, label_mode="int")
    train = keras.utils.image_dataset_from_directory(os.path.join(folder, "train"), seed=0, **read)
    val = keras.utils.image_dataset_from_directory(os.path.join(folder, "val"), shuffle=False, **read)
    test = keras.utils.image_dataset_from_directory(os.path.join(folder, "test"), shuffle=False, **read)
    classes = len(train.class_names)
    if FLAGS.case == "application":
        prepare = keras.applications.mobilenet.preprocess_input
        train, val, test = (d.map(lambda x, y: (prepare(x), y)) for d in (train, val, test))
    path = os.path.join(FLAGS.workdir, f"{FLAGS.case}.keras")
    if os.path.exists(path):  # the user's model is trained once; later invocations measure the same file
        model = keras.saving.load_model(path)
    else:
        keras.utils.set_random_seed(0)
        model = user_model(FLAGS.case, size + (1 if FLAGS.case == "grey" else 3,), classes)
        model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
        start = time.time()
        model.fit(train, validation_data=val, epochs=FLAGS.user_epochs, verbose=2)
        print(f"user's training: {time.time() - start:.0f} s", flush=True)
        model.save(path)
    user_accuracy = model.evaluate(test, verbose=0, return_dict=True)["accuracy"]
    print(f"user's model.evaluate on test/: {user_accuracy:.4f}", flush=True)

    first_seed, *other_seeds = (int(seed) for seed in FLAGS.seeds)
    rows = [run_hsd(path, folder, learning_rate, first_seed, user_accuracy)
            for learning_rate in FLAGS.learning_rates or [None]]
    chosen = max(rows, key=lambda row: row["student_val"])  # ties: the first; the test split plays no part
    if len(rows) > 1:
        print("learning rate chosen on the student's validation accuracy: "
              + ", ".join(f"{row['learning_rate']}: val {row['student_val']:.4f} test {row['student']:.4f}"
                          for row in rows) + f" -> {chosen['learning_rate']}")
    seeded = [chosen] + [run_hsd(path, folder, chosen["learning_rate"], seed, user_accuracy) for seed in other_seeds]
    print(json.dumps({"chosen": chosen, "rows": rows + seeded[1:]}))

    def points(accuracy):
        return f"{round(100 * (accuracy - user_accuracy), 2) + 0.0:+.2f} points"

    print(f"teacher: hsd_tf {chosen['hsd_teacher']:.4f} against evaluate {user_accuracy:.4f} "
          f"({points(chosen['hsd_teacher'])}); student {chosen['student']:.4f} "
          f"({points(chosen['student'])}) at {chosen['student_macs_fraction']:.3f} "
          f"of the MACs; {chosen['hsd_seconds']} s")
    if other_seeds:
        students = np.array([row["student"] for row in seeded])
        print(f"student over seeds {', '.join(FLAGS.seeds)}: " + ", ".join(f"{s:.4f}" for s in students)
              + f"; mean {students.mean():.4f} +- {students.std(ddof=1):.4f} ({points(students.mean())})")


def run_hsd(path: str, folder: str, learning_rate, seed: int, user_accuracy: float) -> dict:
    """One hsd_tf run of the user's model on the folder at `learning_rate` (None: the tool's default) and `seed`."""
    suffix = (f"_lr{learning_rate}" if learning_rate else "") + (f"_s{seed}" if seed else "")
    model_dir = os.path.join(FLAGS.workdir, (FLAGS.run or f"{FLAGS.case}_run") + suffix)
    command = [sys.executable, os.path.join(ROOT, "main.py"), f"--arch={path}", f"--teacher={path}",
               f"--dataset=folder:{folder}", "--prune_ratio=0.6", "--num_ta=2", f"--model_dir={model_dir}",
               f"--seed={seed}", *FLAGS.hsd_flags] + ([f"--learning_rate={learning_rate}"] if learning_rate else [])
    print("$", " ".join(command[1:]), flush=True)
    start = time.time()
    run = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    seconds = time.time() - start
    chosen = [line for line in run.stdout.splitlines() if line.startswith(("Preprocessing:", "Augmentation:", "Warning"))]
    print("\n".join(chosen + run.stdout.splitlines()[-12:]))
    if run.returncode:
        print(run.stderr[-3000:])
        raise SystemExit(run.returncode)
    with open(os.path.join(model_dir, "results.json")) as f:
        results = json.load(f)
    student = results["views"][0]
    return {"case": FLAGS.case, "learning_rate": learning_rate, "seed": seed, "user_evaluate": user_accuracy,
            "hsd_teacher": results["teacher"]["accuracy"], "student": student["accuracy"],
            "student_val": student["val_accuracy"], "student_macs_fraction": student["macs_fraction"],
            "chosen": chosen, "hsd_seconds": round(seconds)}


if __name__ == "__main__":
    app.run(main)
