"""Models that are not image classifiers, on real data, end to end, as a user would prune them.

    python benchmarks/beyond_classifiers.py --case=gunpoint --workdir=/tmp/beyond
    python benchmarks/beyond_classifiers.py --case=tecator --workdir=/tmp/beyond
    python benchmarks/beyond_classifiers.py --case=segmentation --workdir=/tmp/beyond

Each case trains the user's model with the user's own recipe (a keras.io example's, on a data set this machine
can read offline), saves it as `.keras` with what it was compiled with, and measures it with its own
`model.evaluate` on the test split. Then it prunes it twice, at a quarter of the teacher's MACs with two
teaching assistants, from the command line

    python main.py --dataset=py:benchmarks/data/gunpoint.py --arch=gunpoint.keras --teacher=gunpoint.keras --macs_budget=0.25

and from Python (`hsd_tf.prune(model, train, validation, test, macs_budget=0.25)`, the module's datasets), and
reports the teacher's primary metric as hsd_tf measures it against the model's own `evaluate`, and the students'.
Finished steps are read back from --workdir.

  gunpoint            UCR GunPoint (50 + 150 series of 150 steps, 2 classes; a fifth of train validates):
                      keras.io's "Timeseries classification from scratch" (three Conv1D-BatchNorm-ReLU units,
                      GlobalAveragePooling1D, a softmax), Adam, sparse categorical accuracy. Target: the student
                      within 2 points of the teacher.
  italy_power_demand  UCR ItalyPowerDemand (67 + 1,029 series of 24 steps, 2 classes), the same recipe.
  tecator             UCR/UEA Tecator (172 + 43 spectra of 100 wavelengths; the fat content to predict): a
                      Normalization layer adapted on the training spectra, Conv1D units, Dense layers, mean squared
                      error, metric MAE. Target: the student's MAE within 10% of the teacher's.
  segmentation        Fashion-MNIST with a label per pixel (background or the garment's class;
                      benchmarks/data/fashion_segmentation.py): keras.io's U-Net-like "Image segmentation" model at
                      half its widths, sparse cross-entropy, metric mean IoU. Target: the student's mean IoU within
                      3 points of the teacher's.
"""

import json
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
sys.path.insert(0, os.path.join(ROOT, "benchmarks", "data"))

from absl import app, flags  # noqa: E402

from user_models import regression_model, timeseries_model, unet_model  # noqa: E402  (benchmarks/)

CASES = ("gunpoint", "italy_power_demand", "tecator", "segmentation")
flags.DEFINE_enum("case", "gunpoint", CASES, "Which user's model and data set.")
flags.DEFINE_string("workdir", "/tmp/beyond_classifiers", "Where the user's model and the runs go.")
flags.DEFINE_list("hsd_flags", [], "Further flags of both hsd_tf runs (after the case's own).")
flags.DEFINE_list("learning_rates", [], "Learning rates of the cascade, one command-line run each; the student's "
                  "validation metric chooses among them. Empty: the case's own.")
flags.DEFINE_bool("python", True, "Also prune from Python with the chosen settings.")
flags.DEFINE_integer("seed", 0, "Seed of the runs (and of the user's training, where the model is not in --workdir "
                     "yet: another seed prunes the same model).")
FLAGS = flags.FLAGS

# The hsd_tf settings of each case: its batch size and epochs for its size (the tool's defaults otherwise).
HSD = {
    "gunpoint": ["--batch_size=8", "--joint_epochs=60", "--finetune_epochs=60"],
    "italy_power_demand": ["--batch_size=8", "--joint_epochs=60", "--finetune_epochs=60"],
    "tecator": ["--batch_size=16", "--joint_epochs=60", "--finetune_epochs=60"],
    "segmentation": ["--batch_size=64", "--joint_epochs=10", "--finetune_epochs=10"],
}
# The `--dataset=py:` module of each case, in benchmarks/data/.
MODULES = {"gunpoint": "gunpoint", "italy_power_demand": "italy_power_demand", "tecator": "tecator",
           "segmentation": "fashion_segmentation"}
TARGETS = {"gunpoint": ("points", 2.0), "italy_power_demand": ("points", 2.0), "tecator": ("relative", 0.10),
           "segmentation": ("points", 3.0)}


def user_model(case: str, train, val):
    """The user's model, compiled, and their fit of it on (train, val): keras.io's recipe, the learning rate halved
    on plateaus of the validation loss, the final weights, batches the size of the set allows.

    keras.io's FordA recipe as it stands (batch 32, the epoch of the best validation loss kept) gave GunPoint's 40
    training series a model at 58% on test in inference mode and 100% on batch statistics: two batches an epoch,
    one of 8, left BatchNorm's moving statistics unlike any batch's, and 10 validation series chose an early
    epoch. Batches of 8 and the final weights: 97.3%.
    """
    import keras  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel

    x, y = (np.stack(parts) for parts in zip(*train.as_numpy_iterator()))
    if case == "segmentation":
        model, epochs, batch_size = unet_model(x.shape[1:], 11), 10, 64
    elif case == "tecator":
        model, epochs, batch_size = regression_model(x.shape[1:], x), 500, 16
    else:
        model, epochs, batch_size = timeseries_model(x.shape[1:], int(y.max()) + 1), 300, 8
    model.fit(x, y, validation_data=val.batch(256), verbose=0, epochs=epochs, batch_size=batch_size, callbacks=[
        keras.callbacks.ReduceLROnPlateau("val_loss", factor=0.5, patience=20, min_lr=1e-4)])
    return model


def main(argv):
    del argv
    import importlib  # pylint: disable=import-outside-toplevel

    import keras  # pylint: disable=import-outside-toplevel

    case = FLAGS.case
    os.makedirs(FLAGS.workdir, exist_ok=True)
    module = importlib.import_module(MODULES[case])
    train, val, test = module.datasets()
    path = os.path.join(FLAGS.workdir, f"{case}.keras")
    if not os.path.exists(path):
        keras.utils.set_random_seed(FLAGS.seed)
        start = time.time()
        model = user_model(case, train, val)
        model.save(path)
        print(f"the user's model trained in {time.time() - start:.0f} s: {path}", flush=True)
    model = keras.saving.load_model(path)
    evaluate = model.evaluate(test.batch(256), return_dict=True, verbose=0)
    print(f"the user's model.evaluate on the test split: {evaluate}", flush=True)

    rates = FLAGS.learning_rates or [None]
    rows = [run_command_line(case, path, rate) for rate in rates]
    primary = rows[0]["primary"]
    higher = rows[0]["higher_is_better"]
    chosen = (max if higher else min)(rows, key=lambda row: row["student_val"])  # ties: the first; never test
    if len(rows) > 1:
        print("learning rate chosen on the student's validation metric: "
              + ", ".join(f"{row['learning_rate']}: val {row['student_val']:.4f} test {row['student']:.4f}"
                          for row in rows) + f" -> {chosen['learning_rate']}", flush=True)
    if FLAGS.python:
        chosen["python"] = run_python(case, model, (train, val, test), chosen["learning_rate"])
    chosen["user_evaluate"] = evaluate[primary]
    print(json.dumps({"chosen": chosen, "rows": rows}))
    report(case, chosen, primary, higher)


def _suffix(learning_rate) -> str:
    """A run folder's suffix: its learning rate and seed where they are not the case's own."""
    return (f"_lr{learning_rate}" if learning_rate else "") + (f"_s{FLAGS.seed}" if FLAGS.seed else "")


def _settings(case: str, learning_rate):
    return HSD[case] + FLAGS.hsd_flags + ([f"--learning_rate={learning_rate}"] if learning_rate else [])


def run_command_line(case: str, path: str, learning_rate) -> dict:
    """One hsd_tf run of the user's model from the command line."""
    model_dir = os.path.join(FLAGS.workdir, f"{case}_cli" + _suffix(learning_rate))
    command = [sys.executable, os.path.join(ROOT, "main.py"), f"--dataset=py:benchmarks/data/{MODULES[case]}.py",
               f"--arch={path}", f"--teacher={path}", "--macs_budget=0.25", "--num_ta=2", f"--seed={FLAGS.seed}",
               f"--model_dir={model_dir}", "--verbose=2", "--export=savedmodel,tflite", *_settings(case, learning_rate)]
    print("$", " ".join(command[1:]), flush=True)
    start = time.time()
    run = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    seconds = time.time() - start
    print("\n".join(line for line in run.stdout.splitlines() if line.startswith(("Task:", "Teacher", "model", "teacher",
                                                                                 "student", "ta1", "ta2", "Note"))))
    if run.returncode:
        print(run.stderr[-3000:])
        raise SystemExit(run.returncode)
    return dict(_figures(os.path.join(model_dir, "results.json")), learning_rate=learning_rate,
                seconds=round(seconds))


def run_python(case: str, model, splits, learning_rate) -> dict:
    """The same run from Python: `hsd_tf.prune` on the model in memory and the module's datasets."""
    import hsd_tf  # pylint: disable=import-outside-toplevel

    typed = {}
    for flag in _settings(case, learning_rate):
        key, value = flag[2:].split("=", 1)
        typed[key] = float(value) if "." in value or "e" in value else int(value)
    model_dir = os.path.join(FLAGS.workdir, f"{case}_python" + _suffix(learning_rate))
    start = time.time()
    hsd_tf.prune(model, *splits, macs_budget=0.25, num_ta=2, seed=FLAGS.seed, model_dir=model_dir, verbose=0,
                 export=["tflite"], **typed)
    return dict(_figures(os.path.join(model_dir, "results.json")), seconds=round(time.time() - start))


def _figures(results_path: str) -> dict:
    with open(results_path) as f:
        results = json.load(f)
    student = results["views"][0]
    return {"primary": results["primary_metric"]["name"], "higher_is_better": results["primary_metric"]["higher_is_better"],
            "teacher": results["teacher"]["metric"], "student": student["metric"], "student_val": student["val_metric"],
            "student_macs_fraction": student["macs_fraction"], "metrics": student["metrics"],
            "tflite": student["exports"]["tflite"].get("metric", student["exports"]["tflite"].get("accuracy"))}


def report(case: str, chosen: dict, primary: str, higher: bool) -> None:
    kind, allowed = TARGETS[case]
    user = chosen["user_evaluate"]

    def against(value, reference):
        if kind == "points":
            return f"{100 * (value - reference):+.2f} points"
        return f"{100 * (value - reference) / reference:+.1f}%"

    def met(value, reference):
        gap = (reference - value if higher else value - reference) * (100 if kind == "points" else 1 / reference)
        return "yes" if gap <= allowed else "no"

    print(f"{case}: primary metric {primary} ({'higher' if higher else 'lower'} is better)")
    print(f"  teacher: hsd_tf {chosen['teacher']:.4f} against the model's own evaluate {user:.4f} "
          f"({against(chosen['teacher'], user)})")
    runs = [("command line", chosen)] + ([("Python", chosen["python"])] if "python" in chosen else [])
    for where, row in runs:
        print(f"  student ({where}): {row['student']:.4f} at {row['student_macs_fraction']:.3f} of the MACs, "
              f"{against(row['student'], row['teacher'])} from the teacher (target within "
              f"{f'{allowed:g} points' if kind == 'points' else f'{allowed:.0%}'}: {met(row['student'], row['teacher'])}); "
              "float TFLite "
              f"{row['tflite']:.4f}; {row['seconds']} s")


if __name__ == "__main__":
    app.run(main)
