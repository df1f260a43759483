"""How stable is the student's mask, and how good the student, under each score optimizer and layer floor?

    python benchmarks/mask_stability.py                    # the study of docs/mask_stability.md
    python benchmarks/mask_stability.py --variants=rmsprop:0.01:1:1 --num_tas=2 --seeds=0   # one cell

The settings of docs/ablation.md's study at one prune ratio: digits, VGG16 at --width_multiplier, one shared
teacher (trained once in <out_dir>/teacher), --joint_epochs + --finetune_epochs, the digits demo's learning
rates. A variant is OPTIMIZER:LEARNING_RATE of the scores, optionally followed by :FLAG=VALUE settings; every
other setting is the default. The first default variant is the method as shipped before the stability work
(constant score learning rate, no BatchNorm recalibration, no hysteresis, one filter per layer at least).
Every run is a `train_and_evaluate` with only the variant's settings, --num_ta and --seed changed, and lives
in <out_dir>/runs/<name>/, so an interrupted study resumes. Writes <docs_dir>/mask_stability.md and .json:
per variant and num_ta, the student's test accuracy (mean +- sample std over seeds, and each seed), the range
of its mask changes per joint epoch, and the fewest filters any of its layers kept.
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

from hsd_tf.config import Config  # noqa: E402
from study import Study, command, single_thread  # noqa: E402

flags.DEFINE_string("out_dir", "runs/ablation", "Where the shared teacher and every run are trained (resumable).")
flags.DEFINE_string("docs_dir", "docs", "Where mask_stability.md and .json are written.")
flags.DEFINE_float("ratio", 0.9, "Student prune ratio.")
AS_SHIPPED_BEFORE = "recalibration_batches=0:score_schedule=constant:mask_hysteresis=0:max_layer_prune_ratio=1:min_layer_filters=1"
flags.DEFINE_list("variants", [
    f"rmsprop:0.01:{AS_SHIPPED_BEFORE}", "rmsprop:0.01", "rmsprop:0.001", "sgd:0.1", "adam:0.001",
], "OPTIMIZER:LR[:FLAG=VALUE...]: the scores' optimizer and learning rate, then other settings; the rest are "
   "the defaults.")
flags.DEFINE_list("component_variants", [
    "rmsprop:0.01:score_schedule=constant", "rmsprop:0.01:recalibration_batches=0", "rmsprop:0.01:mask_hysteresis=0",
    "rmsprop:0.01:max_layer_prune_ratio=1:min_layer_filters=1",
], "Variants run with --component_num_tas only: the defaults less one change each.")
flags.DEFINE_list("component_num_tas", ["2"], "Teaching-assistant counts of --component_variants.")
FLAGS = flags.FLAGS


def parse_variant(text: str) -> dict:
    """OPTIMIZER:LR[:NAME=VALUE...] as Config settings; the names are Config fields (flag names)."""
    optimizer, rate, *overrides = text.split(":")
    settings = {"score_optimizer": optimizer, "score_learning_rate": float(rate)}
    types = {field.name: type(field.default) for field in dataclasses.fields(Config)}
    for override in overrides:
        name, value = override.split("=")
        settings[name] = types[name](value)
    return settings


def train(study: Study, variant: str, ratio: float, num_ta: int, seed: int) -> dict:
    """One student; returns its row (read back when already trained)."""
    name = f"stability-{variant.replace(':', '_').replace('=', '-')}-r{ratio}-n{num_ta}-s{seed}"
    model_dir = os.path.join(study.out_dir, "runs", name)
    path = os.path.join(model_dir, "stability.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    from hsd_tf import training  # pylint: disable=import-outside-toplevel

    start = time.time()
    results = training.train_and_evaluate(study.config(
        num_ta=num_ta, prune_ratio=ratio, seed=seed, teacher=study.teacher_path, model_dir=model_dir,
        **parse_variant(variant)))
    student = results["views"][0]
    row = {"variant": variant, "num_ta": num_ta, "seed": seed, "accuracy": student["accuracy"],
           "mask_changes": student["mask_changes"], "fewest_layer_filters": student["fewest_layer_filters"],
           "kept_per_layer": [len(c) for c in student["kept_channels"].values()], "macs": student["macs"],
           "teacher_accuracy": results["teacher"]["accuracy"], "seconds": round(time.time() - start, 1)}
    with open(path, "w") as f:
        json.dump(row, f, indent=2)
    return row


def summarize(rows) -> list:
    cells = {}
    for row in rows:
        cells.setdefault((row["variant"], row["num_ta"]), []).append(row)
    summary = []
    for (variant, num_ta), members in cells.items():
        accuracy = np.array([m["accuracy"] for m in members])
        changes = [c for m in members for c in m["mask_changes"]]
        summary.append({
            "variant": variant, "num_ta": num_ta, "seeds": [m["seed"] for m in members],
            "accuracies": accuracy.tolist(), "accuracy": float(accuracy.mean()),
            "accuracy_std": float(accuracy.std(ddof=1)) if len(accuracy) > 1 else 0.0,
            "changes_min": min(changes), "changes_max": max(changes),
            "changes_last_epoch": [m["mask_changes"][-1] for m in members],
            "fewest_layer_filters": min(m["fewest_layer_filters"] for m in members),
        })
    return summary


def markdown(summary, teacher_accuracy, command, wall_seconds) -> str:
    num_tas = sorted({e["num_ta"] for e in summary})
    lines = [
        f"# Mask stability at prune ratio {FLAGS.ratio} on digits",
        "",
        f"Command: `{command}` (wall time {wall_seconds / 60:.1f} min on this machine).",
        "",
        f"digits, VGG16 x{FLAGS.width_multiplier}, one shared teacher at {100 * teacher_accuracy:.2f}% test "
        f"accuracy, {FLAGS.joint_epochs} joint + {FLAGS.finetune_epochs} fine-tuning epochs. A variant is the "
        "scores' optimizer : learning rate, then the settings that differ from the defaults (sgd has the weights' "
        "Nesterov momentum 0.9; the first row is the method as shipped before: "
        f"`{AS_SHIPPED_BEFORE}`).",
        "",
        "Each cell: the student's test accuracy, mean +- sample std over seeds (each seed), then the range "
        "of its mask changes per joint epoch (filters switched on or off, summed over the epoch's steps), "
        "and the fewest filters any layer kept in any seed.",
        "",
        "| variant | " + " | ".join(f"num_ta={n}" for n in num_tas) + " |",
        "|---|" + "---|" * len(num_tas),
    ]
    for variant in dict.fromkeys(e["variant"] for e in summary):
        cells = []
        for n in num_tas:
            e = next((e for e in summary if e["variant"] == variant and e["num_ta"] == n), None)
            cells.append("" if e is None else (
                f"{100 * e['accuracy']:.1f} +- {100 * e['accuracy_std']:.1f} % "
                f"({', '.join(f'{100 * a:.1f}' for a in e['accuracies'])}); "
                f"changes {e['changes_min']}-{e['changes_max']}; min layer {e['fewest_layer_filters']}"))
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    start = time.time()
    study = Study.from_flags(FLAGS.out_dir)
    jobs = [(v, FLAGS.ratio, int(n), int(s)) for v in FLAGS.variants for n in FLAGS.num_tas for s in FLAGS.seeds]
    jobs += [(v, FLAGS.ratio, int(n), int(s))
             for v in FLAGS.component_variants for n in FLAGS.component_num_tas for s in FLAGS.seeds]
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(FLAGS.jobs, mp_context=context, initializer=single_thread) as pool:
        pool.submit(study.pretrain_teacher).result()
        rows = []
        for row in pool.map(train, *zip(*[(study, *job) for job in jobs])):
            rows.append(row)
            print(f"{row['variant']:<22} num_ta={row['num_ta']} seed {row['seed']}: accuracy {row['accuracy']:.4f}, "
                  f"changes {row['mask_changes']}, layers {row['kept_per_layer']} ({row['seconds']} s)", flush=True)
    summary = summarize(rows)
    os.makedirs(FLAGS.docs_dir, exist_ok=True)
    with open(os.path.join(FLAGS.docs_dir, "mask_stability.json"), "w") as f:
        json.dump({"rows": rows, "summary": summary}, f, indent=2)
    text = markdown(summary, rows[0]["teacher_accuracy"], command("mask_stability.py"), time.time() - start)
    with open(os.path.join(FLAGS.docs_dir, "mask_stability.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    app.run(main)
