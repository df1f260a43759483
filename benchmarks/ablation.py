"""The paper's ablation at small scale, against fair baselines: do teaching assistants let the student be
pruned further than pruning without them, than L1 pruning, and than training the small network from scratch?

    python benchmarks/ablation.py             # the study of docs/ablation.md: digits and Fashion-MNIST
    python benchmarks/ablation.py --datasets=digits --ratios=0.9 --seeds=0 --learning_rates=0.01 \\
        --joint_epochs=1 --finetune_epochs=1  # a smoke run

For every dataset, VGG16 at --width_multiplier and one teacher trained once; then for every prune ratio:

    hsd (num_ta=N)  the cascade of this repository (`train_and_evaluate`, teacher given), N in --num_tas
    l1_finetune     Li et al.'s L1-norm filter pruning: the teacher's filters ranked by L1 norm (the same
                    layer-normalised global ranking, within the same per-layer floor, that initialises the
                    cascade's scores), the slim network fine-tuned with cross-entropy, the cascade's optimizer
    scratch         the same slim architecture as l1_finetune, randomly initialised and trained with
                    cross-entropy (the teacher's recipe)

Every method keeps round((1 - ratio) x filters) filters and trains joint + finetune epochs after the teacher.
Each picks its learning rate from --learning_rates by its accuracy on the validation split (held out of the
training split, never the test split) at --selection_seed; the other seeds run at the chosen rate. Each run
lives in <out_dir>/<dataset>/runs/<name>/ and a finished one is not redone, so an interrupted study resumes.
Writes <docs_dir>/ablation.md (per dataset: mean and sample std over seeds of test accuracy, params and
MACs, the learning-rate grid, and the verdict on the paper's claim at every ratio), ablation.json (every run)
and ablation.png (accuracy against MACs on a log axis, one panel per dataset; needs matplotlib:
pip install -e ".[bench]").
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

from study import Study, command, single_thread  # noqa: E402

flags.DEFINE_string("out_dir", "runs/ablation", "Where the teachers and every run are trained (resumable).")
flags.DEFINE_string("docs_dir", "docs", "Where ablation.md, .json and .png are written.")
flags.DEFINE_list("datasets", ["digits", "fashion_mnist"], "Datasets: digits and/or fashion_mnist.")
flags.DEFINE_list("ratios", ["0.8", "0.9"], "Student prune ratios.")
flags.DEFINE_list("learning_rates", ["0.01", "0.03", "0.1"], "The grid every method picks its learning rate from.")
flags.DEFINE_integer("selection_seed", 0, "The seed whose validation accuracy picks each method's learning rate.")
flags.DEFINE_integer("fashion_train_examples", 4000, "Fashion-MNIST training subset, so the study fits 2 hours.")
flags.DEFINE_float("fashion_val_fraction", 0.02, "Fashion-MNIST validation hold-out (1,200 images).")
FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class Run:
    """One student: a method at one prune ratio, seed and learning rate."""

    method: str  # "hsd", "l1_finetune" or "scratch"
    ratio: float
    seed: int
    learning_rate: float
    num_ta: int = 0

    @property
    def label(self) -> str:
        return f"hsd num_ta={self.num_ta}" if self.method == "hsd" else self.method

    @property
    def name(self) -> str:
        return (f"{self.method}{self.num_ta if self.method == 'hsd' else ''}-r{self.ratio}-s{self.seed}"
                f"-lr{self.learning_rate}")


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
            model_dir=model_dir, learning_rate=spec.learning_rate))
        row = {key: results["views"][0][key]
               for key in ("accuracy", "val_accuracy", "params", "macs", "filters_kept", "fewest_layer_filters")}
        row["teacher"] = results["teacher"]
    else:
        row = train_baseline(study, spec)
    row.update(dataclasses.asdict(spec), label=spec.label, dataset=study.dataset, seconds=round(time.time() - start, 1))
    os.makedirs(model_dir, exist_ok=True)
    with open(result_path, "w") as f:
        json.dump(row, f, indent=2)
    return row


def train_baseline(study: Study, spec: Run) -> dict:
    """Trains l1_finetune or scratch for joint + finetune epochs; returns accuracies and costs."""
    import keras  # pylint: disable=import-outside-toplevel

    from hsd_tf import optimizers, slimming, training  # pylint: disable=import-outside-toplevel
    from hsd_tf import teacher as teacher_lib  # pylint: disable=import-outside-toplevel

    epochs = study.joint_epochs + study.finetune_epochs
    config = study.config(seed=spec.seed, teacher_epochs=epochs, learning_rate=spec.learning_rate,
                          teacher_learning_rate=spec.learning_rate)
    keras.utils.set_random_seed(spec.seed)
    data, dense = training.data_and_model(config)
    model, row = slimming.l1_pruned(
        teacher_lib.load(study.teacher_path, dense), spec.ratio,
        max_layer_prune_ratio=config.max_layer_prune_ratio, min_layer_filters=config.min_layer_filters)
    if spec.method == "l1_finetune":  # the cascade's fine-tuning optimizer, cross-entropy only
        model.compile(optimizer=optimizers.weight_optimizer(config, data, epochs),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    else:  # the teacher's recipe from random weights: a clone has the same layers, freshly initialised
        model = teacher_lib.compiled_for_training(keras.models.clone_model(model), data, config)
    model.fit(data.train_from(0, epochs), epochs=epochs, steps_per_epoch=data.steps_per_epoch, verbose=0,
              shuffle=False)  # train_from already shuffles, per epoch and reproducibly
    return {"accuracy": teacher_lib.accuracy(model, data.test), "val_accuracy": teacher_lib.accuracy(model, data.val),
            **{key: row[key] for key in ("params", "macs", "filters_kept", "fewest_layer_filters")}}


def select_learning_rates(rows, selection_seed: int) -> dict:
    """(dataset, ratio, label) -> the grid learning rate with the best validation accuracy at `selection_seed`.

    Ties go to the first learning rate of the grid. The test split plays no part.
    """
    best = {}
    for row in rows:
        if row["seed"] != selection_seed:
            continue
        key = (row["dataset"], row["ratio"], row["label"])
        if key not in best or row["val_accuracy"] > best[key]["val_accuracy"]:
            best[key] = row
    return {key: row["learning_rate"] for key, row in best.items()}


def summarize(rows) -> list:
    """Mean and sample standard deviation over seeds, per (label, ratio), in ratio then label order."""
    groups = {}
    for row in rows:
        groups.setdefault((row["ratio"], row["label"]), []).append(row)
    summary = []
    for (ratio, label), members in sorted(groups.items()):
        entry = {"ratio": ratio, "label": label, "seeds": len(members),
                 "learning_rate": members[0].get("learning_rate"),
                 "fewest_layer_filters": min(m.get("fewest_layer_filters", 0) for m in members)}
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


def paper_claim(summary, ratio: float) -> tuple:
    """(in_means, beyond_spread): 2 TAs >= 1 TA >= 0 TAs and hsd num_ta=2 above l1_finetune and scratch.

    in_means compares mean accuracies; beyond_spread also asks hsd num_ta=2 to beat each baseline by more
    than the seed spread (`verdict`'s rule).
    """
    at_ratio = {entry["label"]: entry for entry in summary if entry["ratio"] == ratio}
    accuracy = {label: entry["accuracy"] for label, entry in at_ratio.items()}
    ordered = accuracy["hsd num_ta=2"] >= accuracy["hsd num_ta=1"] >= accuracy["hsd num_ta=0"]
    baselines = ("l1_finetune", "scratch")
    above = all(accuracy["hsd num_ta=2"] > accuracy[b] for b in baselines)
    beyond = all(accuracy["hsd num_ta=2"] - accuracy[b] > at_ratio["hsd num_ta=2"]["accuracy_std"]
                 + at_ratio[b]["accuracy_std"] for b in baselines)
    return ordered and above, ordered and beyond


def markdown(datasets, command, wall_seconds) -> str:
    """The study's report: per dataset, the teacher, the grid, the table and the verdicts."""
    lines = [
        "# Ablation: teaching assistants against fair baselines",
        "",
        f"Command: `{command}` (wall time {wall_seconds / 60:.1f} min on this machine, 2 cores).",
        "",
        f"VGG16 at width {FLAGS.width_multiplier}; every method trains {FLAGS.joint_epochs + FLAGS.finetune_epochs} "
        f"epochs after the one shared teacher (hsd: {FLAGS.joint_epochs} joint + {FLAGS.finetune_epochs} fine-tuning; "
        "l1_finetune and scratch: all of them). Each method picks its learning rate from the grid "
        f"{', '.join(FLAGS.learning_rates)} by its validation accuracy (held out of the training split) at seed "
        f"{FLAGS.selection_seed}; the other seeds then run at that rate. Test accuracy is mean +- sample std over "
        "seeds. l1_finetune and scratch keep the same number of filters as hsd and the same per-layer floor.",
        "",
    ]
    for name, info in datasets.items():
        teacher = info["teacher"]
        lines += [
            f"## {name}",
            "",
            f"{info['description']}. Teacher (dense): test accuracy {100 * teacher['accuracy']:.2f}%, "
            f"{teacher['params']:,} params, {teacher['macs']:,} MACs.",
            "",
            "| prune ratio | method | lr | seeds | accuracy (%) | params | MACs | fewest filters in a layer |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for e in info["summary"]:
            lines.append(
                f"| {e['ratio']} | {e['label']} | {e['learning_rate']} | {e['seeds']} | "
                f"{100 * e['accuracy']:.2f} +- {100 * e['accuracy_std']:.2f} | {e['params']:,.0f} +- "
                f"{e['params_std']:,.0f} | {e['macs']:,.0f} +- {e['macs_std']:,.0f} | {e['fewest_layer_filters']} |")
        lines += ["", f"Validation accuracy (%) at seed {FLAGS.selection_seed} per learning rate (the chosen one in bold):",
                  "", "| prune ratio | method | " + " | ".join(FLAGS.learning_rates) + " |",
                  "|---|---|" + "---|" * len(FLAGS.learning_rates)]
        for (ratio, label), by_rate in sorted(info["grid"].items()):
            chosen = next(e["learning_rate"] for e in info["summary"] if e["ratio"] == ratio and e["label"] == label)
            cells = [(f"**{100 * by_rate[float(r)]:.2f}**" if float(r) == chosen else f"{100 * by_rate[float(r)]:.2f}")
                     for r in FLAGS.learning_rates]
            lines.append(f"| {ratio} | {label} | " + " | ".join(cells) + " |")
        best = f"hsd num_ta={max(int(n) for n in FLAGS.num_tas)}"
        for ratio in sorted({e["ratio"] for e in info["summary"]}):
            comparisons, _ = verdict(info["summary"], ratio, best)
            if {"0", "1", "2"} <= set(FLAGS.num_tas):
                in_means, beyond = paper_claim(info["summary"], ratio)
                claim = ("The paper's claim, 2 TAs >= 1 TA >= 0 TAs and HSD above both baselines: "
                         f"**{'holds' if in_means else 'does not hold'} in the means**, "
                         f"**{'holds' if beyond else 'does not hold'} beyond the seed spread**.")
            else:
                claim = "The paper's claim needs --num_tas=0,1,2; comparisons only:"
            lines += ["", f"### Verdict on {name} at prune ratio {ratio}", "", claim, "", *comparisons]
        lines.append("")
    return "\n".join(lines)


def plot(datasets, path) -> None:
    import matplotlib  # pylint: disable=import-outside-toplevel

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

    figure, all_axes = plt.subplots(1, len(datasets), figsize=(6.5 * len(datasets), 4.5), squeeze=False)
    for axes, (name, info) in zip(all_axes[0], datasets.items()):
        summary, teacher = info["summary"], info["teacher"]
        for label in sorted({e["label"] for e in summary}):
            points = sorted((e for e in summary if e["label"] == label), key=lambda e: e["macs"])
            axes.errorbar([e["macs"] for e in points], [100 * e["accuracy"] for e in points],
                          yerr=[100 * e["accuracy_std"] for e in points], marker="o", capsize=3, label=label)
        axes.plot([teacher["macs"]], [100 * teacher["accuracy"]], "k*", markersize=12, label="teacher (dense)")
        axes.set_xscale("log")
        axes.set_xlabel("MACs of the student (log scale)")
        axes.set_ylabel("test accuracy (%), mean +- std over seeds")
        axes.set_title(f"{name}, VGG16 x{FLAGS.width_multiplier}")
        axes.grid(alpha=0.3, which="both")
        axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


DESCRIPTIONS = {
    "digits": "scikit-learn's digits: 1,293 training, 144 validation and 360 test images",
    "fashion_mnist": "Fashion-MNIST: the first {train:,} of 54,000 training images, {val:,} validation images held out "
                     "of the training split, all 10,000 test images",
}


def main(argv):
    del argv
    start = time.time()
    rates = [float(r) for r in FLAGS.learning_rates]
    seeds = [int(s) for s in FLAGS.seeds]
    studies = {
        name: Study.from_flags(os.path.join(FLAGS.out_dir, name), dataset=name,
                               max_train_examples=FLAGS.fashion_train_examples if name == "fashion_mnist" else 0,
                               val_fraction=FLAGS.fashion_val_fraction if name == "fashion_mnist" else 0.1)
        for name in FLAGS.datasets
    }
    methods = [("hsd", int(n)) for n in FLAGS.num_tas] + [("l1_finetune", 0), ("scratch", 0)]
    cells = [(name, float(r), method, n) for name in studies for r in FLAGS.ratios for method, n in methods]
    context = multiprocessing.get_context("spawn")  # a fresh TensorFlow per worker
    with concurrent.futures.ProcessPoolExecutor(FLAGS.jobs, mp_context=context, initializer=single_thread) as pool:
        for future in [pool.submit(study.pretrain_teacher) for study in studies.values()]:
            future.result()

        def run_all(specs):
            rows = []
            for row in pool.map(train, [studies[name] for name, _ in specs], [spec for _, spec in specs]):
                rows.append(row)
                print(f"{row['dataset']:<13} {row['label']:<14} ratio {row['ratio']} lr {row['learning_rate']} "
                      f"seed {row['seed']}: val {row['val_accuracy']:.4f} test {row['accuracy']:.4f}, "
                      f"{row['macs']:,} MACs ({row['seconds']} s)", flush=True)
            return rows

        grid_rows = run_all([(name, Run(method, ratio, FLAGS.selection_seed, rate, n))
                             for name, ratio, method, n in cells for rate in rates])
        chosen = select_learning_rates(grid_rows, FLAGS.selection_seed)
        label = {(method, n): Run(method, 0, 0, 0, n).label for method, n in methods}
        other_rows = run_all([(name, Run(method, ratio, seed, chosen[(name, ratio, label[(method, n)])], n))
                              for name, ratio, method, n in cells for seed in seeds if seed != FLAGS.selection_seed])
    datasets = {}
    for name, study in studies.items():
        final = [row for row in grid_rows + other_rows if row["dataset"] == name
                 and row["learning_rate"] == chosen[(name, row["ratio"], row["label"])]
                 and (row["seed"] in seeds)]
        grid = {}
        for row in grid_rows:
            if row["dataset"] == name:
                grid.setdefault((row["ratio"], row["label"]), {})[row["learning_rate"]] = row["val_accuracy"]
        teacher = next(row["teacher"] for row in final if row["method"] == "hsd")
        datasets[name] = {"summary": summarize(final), "teacher": teacher, "grid": grid,
                          "description": DESCRIPTIONS[name].format(train=FLAGS.fashion_train_examples,
                                                                   val=round(60000 * FLAGS.fashion_val_fraction))}
    os.makedirs(FLAGS.docs_dir, exist_ok=True)
    with open(os.path.join(FLAGS.docs_dir, "ablation.json"), "w") as f:
        json.dump({"rows": grid_rows + other_rows, "chosen_learning_rates": [
            {"dataset": d, "ratio": r, "label": l, "learning_rate": lr} for (d, r, l), lr in chosen.items()],
            "datasets": {name: {"summary": info["summary"], "teacher": info["teacher"]}
                         for name, info in datasets.items()}}, f, indent=2)
    text = markdown(datasets, command("ablation.py"), time.time() - start)
    with open(os.path.join(FLAGS.docs_dir, "ablation.md"), "w") as f:
        f.write(text)
    plot(datasets, os.path.join(FLAGS.docs_dir, "ablation.png"))
    print(text)


if __name__ == "__main__":
    app.run(main)
