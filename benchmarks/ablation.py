"""The paper's ablation at small scale: do teaching assistants let the student be pruned further?

    python benchmarks/ablation.py                       # the full study, about an hour on 2 cores
    python benchmarks/ablation.py --ratios=0.9 --seeds=0 --joint_epochs=1 --finetune_epochs=1   # a smoke run

On `digits` with VGG16 at --width_multiplier, one teacher is trained, then for every prune ratio and seed:

    hsd (num_ta=N)  the cascade of this repository (`train_and_evaluate`, teacher given), N in --num_tas
    l1_finetune     Li et al.'s L1-norm filter pruning: the teacher's filters ranked by L1 norm (the same
                    layer-normalised global ranking that initialises the cascade's scores), the slim
                    network fine-tuned with cross-entropy for joint + finetune epochs, same optimizer
    scratch         the same slim architecture as l1_finetune, randomly initialised and trained with
                    cross-entropy (the teacher's recipe) for joint + finetune epochs

Every method keeps round((1 - ratio) x filters) filters and gets the same epoch budget after the teacher.
Each run lives in <out_dir>/runs/<name>/ and a finished one is not redone, so an interrupted study resumes.
Writes <docs_dir>/ablation.md (mean and standard deviation over seeds of test accuracy, params and MACs,
and the verdict at the highest ratio) and <docs_dir>/ablation.png (accuracy against MACs, one line per
method; needs matplotlib: pip install -e ".[bench]").
"""

import concurrent.futures
import dataclasses
import json
import multiprocessing
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

flags.DEFINE_string("out_dir", "runs/ablation", "Where the teacher and every run are trained (resumable).")
flags.DEFINE_string("docs_dir", "docs", "Where ablation.md and ablation.png are written.")
flags.DEFINE_list("ratios", ["0.5", "0.8", "0.9"], "Student prune ratios.")
flags.DEFINE_list("num_tas", ["0", "1", "2"], "Teaching-assistant counts of the cascade.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds of every student run (the teacher uses seed 0).")
flags.DEFINE_float("width_multiplier", 0.125, "VGG16 width.")
flags.DEFINE_integer("teacher_epochs", 10, "Epochs of the one teacher.")
flags.DEFINE_integer("joint_epochs", 8, "Joint epochs of the cascade.")
flags.DEFINE_integer("finetune_epochs", 8, "Fine-tuning epochs of the cascade.")
flags.DEFINE_integer("batch_size", 64, "Batch size.")
flags.DEFINE_integer("jobs", 2, "Runs trained at once, one CPU thread each.")
FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class Study:
    """The settings every run of the study shares."""

    out_dir: str
    width_multiplier: float
    teacher_epochs: int
    joint_epochs: int
    finetune_epochs: int
    batch_size: int

    def config(self, **overrides):
        """A `Config` for digits and VGG16 at the study's width, as the demo preset, without export or logs."""
        from hsd_tf.config import Config  # pylint: disable=import-outside-toplevel

        settings = dict(
            dataset="digits", arch="vgg16", width_multiplier=self.width_multiplier, batch_size=self.batch_size,
            teacher_epochs=self.teacher_epochs, joint_epochs=self.joint_epochs,
            finetune_epochs=self.finetune_epochs, export=[], tensorboard=False, verbose=0,
            # flags/digits_demo.cfg's settings for short runs on digits
            teacher_learning_rate=0.05, learning_rate=0.01, score_learning_rate=0.01, hint_weight=0.0,
        )
        settings.update(overrides)
        return Config(**settings)

    @property
    def teacher_path(self) -> str:
        return os.path.join(self.out_dir, "teacher", "teacher", "teacher.weights.h5")


@dataclasses.dataclass(frozen=True)
class Run:
    """One student: a method at one prune ratio and seed."""

    method: str  # "hsd", "l1_finetune" or "scratch"
    ratio: float
    seed: int
    num_ta: int = 0

    @property
    def label(self) -> str:
        return f"hsd num_ta={self.num_ta}" if self.method == "hsd" else self.method

    @property
    def name(self) -> str:
        return f"{self.method}{self.num_ta if self.method == 'hsd' else ''}-r{self.ratio}-s{self.seed}"


def _single_thread():
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)


def train(study: Study, spec: Run) -> dict:
    """Trains one run, or reads back its finished result; returns its result row."""
    model_dir = os.path.join(study.out_dir, "runs", spec.name)
    result_path = os.path.join(model_dir, "ablation.json")
    if os.path.exists(result_path):
        with open(result_path) as f:
            return json.load(f)
    start = time.time()
    if spec.method == "hsd":
        from hsd_tf import training  # pylint: disable=import-outside-toplevel

        results = training.train_and_evaluate(study.config(
            num_ta=spec.num_ta, prune_ratio=spec.ratio, seed=spec.seed, teacher=study.teacher_path,
            model_dir=model_dir))
        row = {key: results["views"][0][key] for key in ("accuracy", "params", "macs", "filters_kept")}
        row["teacher"] = results["teacher"]
    else:
        row = train_baseline(study, spec)
    row.update(dataclasses.asdict(spec), label=spec.label, seconds=round(time.time() - start, 1))
    os.makedirs(model_dir, exist_ok=True)
    with open(result_path, "w") as f:
        json.dump(row, f, indent=2)
    return row


def train_baseline(study: Study, spec: Run) -> dict:
    """Trains l1_finetune or scratch for joint + finetune epochs; returns test accuracy and costs."""
    import keras  # pylint: disable=import-outside-toplevel

    from hsd_tf import costs, slimming, training  # pylint: disable=import-outside-toplevel
    from hsd_tf import teacher as teacher_lib  # pylint: disable=import-outside-toplevel

    epochs = study.joint_epochs + study.finetune_epochs
    config = study.config(seed=spec.seed, teacher_epochs=epochs)
    keras.utils.set_random_seed(spec.seed)
    data, architecture = training.data_and_architecture(config)
    model, slim_architecture = slimming.l1_pruned(teacher_lib.load(study.teacher_path, architecture), architecture,
                                                  spec.ratio)
    if spec.method == "l1_finetune":  # the cascade's fine-tuning optimizer, cross-entropy only
        model.compile(optimizer=training.weight_optimizer(config, data),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    else:  # the teacher's recipe from random weights
        model = teacher_lib.compiled_for_training(slim_architecture, data, config)
    model.fit(data.train_from(0, epochs), epochs=epochs, steps_per_epoch=data.steps_per_epoch, verbose=0)
    report = costs.profile(slim_architecture)
    return {"accuracy": teacher_lib.accuracy(model, data.test), "params": report["params"],
            "macs": report["macs"], "filters_kept": slim_architecture.total_filters}


def summarize(rows) -> list:
    """Mean and sample standard deviation over seeds, per (label, ratio), in ratio then label order."""
    groups = {}
    for row in rows:
        groups.setdefault((row["ratio"], row["label"]), []).append(row)
    summary = []
    for (ratio, label), members in sorted(groups.items()):
        entry = {"ratio": ratio, "label": label, "seeds": len(members)}
        for key in ("accuracy", "params", "macs"):
            values = np.array([m[key] for m in members], dtype=float)
            entry[key] = float(values.mean())
            entry[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        summary.append(entry)
    return summary


def verdict(summary, ratio: float, best: str) -> tuple:
    """(lines, wins): `best` against every other method at `ratio`.

    A win is a mean accuracy above the other's by more than the seed spread: the two mean +- std
    intervals do not overlap (difference > std_a + std_b).
    """
    at_ratio = {entry["label"]: entry for entry in summary if entry["ratio"] == ratio}
    mine = at_ratio[best]
    lines, wins = [], []
    for label, other in at_ratio.items():
        if label == best:
            continue
        difference = mine["accuracy"] - other["accuracy"]
        spread = mine["accuracy_std"] + other["accuracy_std"]
        wins.append(difference > spread)
        lines.append(f"- {best} vs {label}: {100 * difference:+.2f} points, seed spread "
                     f"{100 * spread:.2f} points: {'beats it' if wins[-1] else 'does not beat it'}.")
    return lines, all(wins)


def markdown(summary, teacher, ratio, best, command, wall_seconds) -> str:
    lines = [
        "# Ablation on digits: teaching assistants and baselines",
        "",
        f"Command: `{command}` (wall time {wall_seconds / 60:.1f} min on this machine).",
        "",
        f"Teacher (dense VGG16 at width {FLAGS.width_multiplier}): test accuracy {100 * teacher['accuracy']:.2f}%, "
        f"{teacher['params']:,} params, {teacher['macs']:,} MACs.",
        "",
        "Mean +- sample standard deviation over seeds of the student's test accuracy (digits, 360 images), "
        "params and MACs.",
        "",
        "| prune ratio | method | seeds | accuracy (%) | params | MACs |",
        "|---|---|---|---|---|---|",
    ]
    for e in summary:
        lines.append(
            f"| {e['ratio']} | {e['label']} | {e['seeds']} | {100 * e['accuracy']:.2f} +- {100 * e['accuracy_std']:.2f} "
            f"| {e['params']:,.0f} +- {e['params_std']:,.0f} | {e['macs']:,.0f} +- {e['macs_std']:,.0f} |")
    lines_verdict, wins = verdict(summary, ratio, best)
    lines += ["", f"## Verdict at prune ratio {ratio}", "",
              f"Does {best} beat every other method by more than the seed spread (mean +- std intervals "
              f"apart)? **{'Yes' if wins else 'No'}.**", "", *lines_verdict, ""]
    return "\n".join(lines)


def plot(summary, teacher, path) -> None:
    import matplotlib  # pylint: disable=import-outside-toplevel

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for label in sorted({e["label"] for e in summary}):
        points = sorted((e for e in summary if e["label"] == label), key=lambda e: e["macs"])
        axes.errorbar([e["macs"] / 1e6 for e in points], [100 * e["accuracy"] for e in points],
                      yerr=[100 * e["accuracy_std"] for e in points], marker="o", capsize=3, label=label)
    axes.plot([teacher["macs"] / 1e6], [100 * teacher["accuracy"]], "k*", markersize=12, label="teacher (dense)")
    axes.set_xlabel("MACs of the student (millions)")
    axes.set_ylabel("test accuracy (%), mean +- std over seeds")
    axes.set_title(f"digits, VGG16 x{FLAGS.width_multiplier}: accuracy against MACs")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main(argv):
    del argv
    start = time.time()
    study = Study(FLAGS.out_dir, FLAGS.width_multiplier, FLAGS.teacher_epochs, FLAGS.joint_epochs,
                  FLAGS.finetune_epochs, FLAGS.batch_size)
    ratios = [float(r) for r in FLAGS.ratios]
    specs = [Run("hsd", r, int(s), int(n)) for r in ratios for n in FLAGS.num_tas for s in FLAGS.seeds]
    specs += [Run(m, r, int(s)) for r in ratios for m in ("l1_finetune", "scratch") for s in FLAGS.seeds]
    context = multiprocessing.get_context("spawn")  # a fresh TensorFlow per worker
    with concurrent.futures.ProcessPoolExecutor(FLAGS.jobs, mp_context=context, initializer=_single_thread) as pool:
        from hsd_tf import training  # pylint: disable=import-outside-toplevel

        pool.submit(training.pretrain_teacher, study.config(model_dir=os.path.join(study.out_dir, "teacher"))).result()
        rows = []
        for row in pool.map(train, [study] * len(specs), specs):
            rows.append(row)
            print(f"{row['label']:<14} ratio {row['ratio']} seed {row['seed']}: accuracy {row['accuracy']:.4f}, "
                  f"{row['macs']:,} MACs ({row['seconds']} s)", flush=True)
    summary = summarize(rows)
    teacher = next(row["teacher"] for row in rows if row["method"] == "hsd")
    best = f"hsd num_ta={max(int(n) for n in FLAGS.num_tas)}"
    command = "python benchmarks/ablation.py" + "".join(
        f" --{name}={FLAGS[name].value if not isinstance(FLAGS[name].value, list) else ','.join(FLAGS[name].value)}"
        for name in ("ratios", "num_tas", "seeds", "width_multiplier", "teacher_epochs", "joint_epochs",
                     "finetune_epochs", "batch_size", "jobs") if FLAGS[name].present)
    os.makedirs(FLAGS.docs_dir, exist_ok=True)
    with open(os.path.join(FLAGS.docs_dir, "ablation.json"), "w") as f:
        json.dump({"rows": rows, "summary": summary}, f, indent=2)
    text = markdown(summary, teacher, max(ratios), best, command, time.time() - start)
    with open(os.path.join(FLAGS.docs_dir, "ablation.md"), "w") as f:
        f.write(text)
    plot(summary, teacher, os.path.join(FLAGS.docs_dir, "ablation.png"))
    print(text)


if __name__ == "__main__":
    app.run(main)
