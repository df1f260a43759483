"""The paper's ablation at equal cost: at the same MACs, does the cascade's student beat the simple alternatives?

    python benchmarks/ablation.py             # the study of docs/teaching_assistants.md: digits and Fashion-MNIST
    python benchmarks/ablation.py --datasets=digits --budgets=0.25 --seeds=0 --learning_rates=0.01 \\
        --joint_epochs=1 --finetune_epochs=1 --docs_name=smoke  # a smoke run

For every dataset, VGG16 at --width_multiplier and one teacher trained once; then at every MAC budget (the
student's MACs as a fraction of the teacher's, `--macs_budget`), each variant of --variants, all of them runs of
the tool itself (`hsd_tf.training.train_and_evaluate`, teacher given):

    hsd 2 TAs           the cascade, 2 teaching assistants spaced evenly in MACs (the paper's method)
    hsd 2 TAs per_mac   the same, filters ranked by score per MAC (`--saliency=per_mac`; not the paper's)
    hsd 0 TAs           the cascade without assistants: the student learns its mask from its own gradient
    hsd 2 TAs no KD     the cascade with `--kd_weight=0`: each view learns from the labels alone, its mask still
                        from the gradient of the view above; set against l1, it is what the cascade adds without KD
    l1 + KD             `--method=l1`: the teacher's filters of largest L1 norm, fine-tuned with cross-entropy and
                        KD from the teacher (the student's fine-tuning losses): what KD alone gives
    l1                  the same with `--kd_weight=0`: Li et al.'s L1 pruning and fine-tuning
    scratch             `--method=scratch`: l1's architecture from random weights, the teacher's recipe
    l1 + KD on hsd mask `--method=l1 --masks_from=<the hsd 2 TAs run of the same seed and budget>`: the cascade's
                        learned mask trained the way l1 + KD is, which separates what the mask adds from what the
                        cascade's joint training adds

What weight-sharing networks since the paper do differently, each a flag of the cascade (issue 30):

    hsd 2 TAs from top  `--distill_from=top`: every pruned view learns from the full view (in-place distillation,
                        Universally Slimmable Networks, BigNAS), not from the view just above
    hsd 2 TAs from all  `--distill_from=all`: every view from every larger model, teachers dropped at random
                        (densely guided KD)
    hsd 2 TAs frozen early  masks searched for the first quarter of the joint epochs (`--joint_epochs`), then
                        frozen while every view trains on (`--frozen_epochs`: the rest), as Once-for-All fixes its
                        sub-networks before training them
    hsd 2 TAs from teacher  `--finetune_from=teacher`: the joint training as a search for the student's
                        architecture, the student then fine-tuned from the teacher's weights (AutoSlim's search,
                        then train)
    scratch on hsd mask `--method=scratch --masks_from=<hsd 2 TAs run>`: the cascade's architecture trained from
                        random weights; set against scratch, what the architecture alone is worth
    l1 + KD at hsd counts  `--method=l1 --masks_from=<hsd 2 TAs run> --masks_from_counts`: the cascade's channels
                        per layer, the teacher's largest filters within each: its architecture with l1's choice of
                        filters
    l1 + KD equal compute, l1 equal compute, scratch equal compute
                        `--equal=compute`: the baseline trained for the epochs that cost what the 2-TA cascade
                        does (Liu et al.'s Scratch-B), not for its epochs

Every variant trains joint + finetune epochs after the teacher. With --family, `l1 + KD` is also trained at the MACs
of each assistant of `hsd 2 TAs` below the dense one: one cascade run trains a family of models, and each member
is set against l1 at its own cost. Each variant picks its learning rate from --learning_rates by its accuracy on
the validation split (held out of the training split, never the test split) at --selection_seed; the other seeds
run at the chosen rate (--single_seed_variants do not, and are reported with one seed). Each run lives in
<out_dir>/<dataset>/runs/<name>/ and a finished one is read back, so an interrupted study resumes. Writes
<docs_dir>/<docs_name>.md (per dataset: mean and sample std over seeds of test accuracy, params and MACs, the MAC
spread of each budget, the learning-rate grid, the verdicts), .json (every run) and .png (accuracy against MACs,
one panel per dataset).

`--budget_kind=filters` makes the budgets prune ratios (`--prune_ratio`) instead: the equal-filter ablation of
docs/ablation.md.
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

from study import Study, code_version, command, single_thread  # noqa: E402


def frozen_early(joint_epochs: int) -> dict:
    """`hsd 2 TAs frozen early`: masks searched for the first quarter of the study's joint epochs, frozen for the
    rest (as many epochs in all as every other variant)."""
    searched = max(1, joint_epochs // 4)
    return dict(method="hsd", num_ta=2, joint_epochs=searched, frozen_epochs=joint_epochs - searched)


VARIANTS = {
    "hsd 2 TAs": dict(method="hsd", num_ta=2),
    "hsd 2 TAs per_mac": dict(method="hsd", num_ta=2, saliency="per_mac"),
    "hsd 0 TAs": dict(method="hsd", num_ta=0),
    "hsd 2 TAs no KD": dict(method="hsd", num_ta=2, kd_weight=0.0),
    "l1 + KD": dict(method="l1"),
    "l1": dict(method="l1", kd_weight=0.0),
    "scratch": dict(method="scratch"),
    "l1 + KD on hsd mask": dict(method="l1"),
    "hsd 2 TAs from top": dict(method="hsd", num_ta=2, distill_from="top"),
    "hsd 2 TAs from all": dict(method="hsd", num_ta=2, distill_from="all"),
    "hsd 2 TAs frozen early": lambda study: frozen_early(study.joint_epochs),
    "hsd 2 TAs from teacher": dict(method="hsd", num_ta=2, finetune_from="teacher"),
    "l1 + KD equal compute": dict(method="l1", num_ta=2, equal="compute"),
    "l1 equal compute": dict(method="l1", num_ta=2, kd_weight=0.0, equal="compute"),
    "scratch equal compute": dict(method="scratch", num_ta=2, equal="compute"),
    "scratch on hsd mask": dict(method="scratch"),
    "l1 + KD at hsd counts": dict(method="l1", masks_from_counts=True),
}
BEST = "hsd 2 TAs"

# Variants trained on the student channels of another variant's run (same dataset, budget and seed, at that
# variant's chosen learning rate), so they run once their source has.
MASK_SOURCES = {"l1 + KD on hsd mask": BEST, "scratch on hsd mask": BEST, "l1 + KD at hsd counts": BEST}

flags.DEFINE_string("out_dir", "runs/equal_macs", "Where the teachers and every run are trained (resumable).")
flags.DEFINE_string("docs_dir", "docs", "Where the report, its .json and its .png are written.")
flags.DEFINE_string("docs_name", "equal_macs", "The report's file name, without extension.")
flags.DEFINE_list("datasets", ["fashion_mnist", "digits"], "Datasets: digits, fashion_mnist (28x28 grey images "
                  "zero-padded to 32x32x3, the tool's own reader), fashion_mnist_folder (the same images written to "
                  "a folder as PNG files and read as a user's own images are, --dataset=folder:, resized to "
                  "32x32x3).")
flags.DEFINE_enum("budget_kind", "macs", ["macs", "filters"], "macs: --budgets are MAC budgets (--macs_budget); "
                  "filters: prune ratios (--prune_ratio).")
flags.DEFINE_list("budgets", ["0.25", "0.1"], "The students' budgets.")
flags.DEFINE_list("variants", list(VARIANTS), "Variants to train (see the module's docstring).")
flags.DEFINE_bool("family", True, "Also train l1 + KD at the MACs of each pruned assistant of hsd 2 TAs.")
flags.DEFINE_list("learning_rates", ["0.01", "0.03", "0.1"], "The grid every variant picks its learning rate from.")
flags.DEFINE_list("single_seed_variants", ["hsd 2 TAs per_mac"],
                  "Variants trained at the selection seed only (their learning-rate grid): reported with one seed, "
                  "never judged a win. Default: per_mac, 4.75 validation points behind the paper's rule on "
                  "Fashion-MNIST at 0.25, not worth two more seeds of the cascade.")
flags.DEFINE_integer("selection_seed", 0, "The seed whose validation accuracy picks each variant's learning rate.")
flags.DEFINE_bool("report_only", False, "Train nothing: write the report of the runs already finished (a study "
                  "under way, or one paused across sessions), each variant's learning rate chosen among the rates "
                  "it has finished.")
flags.DEFINE_integer("fashion_train_examples", 12000, "Fashion-MNIST training subset (the teacher must reach 88%).")
flags.DEFINE_float("fashion_val_fraction", 0.02, "Fashion-MNIST validation hold-out (1,200 images).")
FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class Run:
    """One student: a variant at one budget, seed and learning rate."""

    label: str
    budget: float
    seed: int
    learning_rate: float
    masks_from: str = ""  # the run whose student channels a MASK_SOURCES variant trains

    @property
    def name(self) -> str:
        label = self.label.replace(" + ", "_").replace(" ", "_")
        return f"{label}-b{self.budget}-s{self.seed}-lr{self.learning_rate}"


def run_dir(study: Study, spec: Run) -> str:
    return os.path.join(study.out_dir, "runs", spec.name)


def settings(study: Study, label: str) -> dict:
    """The variant's settings of the tool (some depend on the study's epochs)."""
    variant = VARIANTS[label]
    return variant(study) if callable(variant) else dict(variant)


def plain_epochs(study: Study, label: str) -> float:
    """The variant's training after its teacher in epochs of plain steps (`hsd_tf.compute`)."""
    from hsd_tf import compute  # pylint: disable=import-outside-toplevel

    return round(compute.plain_epochs(study.config(**settings(study, label))), 2)




def train(study: Study, spec: Run, budget_kind: str) -> dict:
    """Trains one run (or reads back its finished result); returns its result row."""
    from hsd_tf import training  # pylint: disable=import-outside-toplevel

    code = code_version()  # first asked here, as this worker imports hsd_tf: the code its runs use
    model_dir = run_dir(study, spec)
    row_path = os.path.join(model_dir, "row.json")
    if os.path.exists(row_path):
        with open(row_path) as f:
            return json.load(f)
    start = time.time()
    budget = dict(macs_budget=spec.budget) if budget_kind == "macs" else dict(prune_ratio=spec.budget)
    results = training.train_and_evaluate(study.config(
        **settings(study, spec.label), **budget, masks_from=spec.masks_from or None, seed=spec.seed,
        teacher=study.teacher_path, model_dir=model_dir, learning_rate=spec.learning_rate,
        teacher_learning_rate=spec.learning_rate))
    student = results["views"][0]
    row = {key: student[key] for key in ("accuracy", "val_accuracy", "params", "macs", "fewest_layer_filters")}
    row.update(dataclasses.asdict(spec), dataset=study.key, teacher=results["teacher"],
               views=[{key: view[key] for key in ("name", "accuracy", "params", "macs")} for view in results["views"]],
               seconds=round(time.time() - start, 1), code=code, plain_epochs=plain_epochs(study, spec.label),
               training_seconds=results["training_cost"]["seconds"])
    with open(row_path, "w") as f:
        json.dump(row, f, indent=2)
    return row


def mask_source(study: Study, budget: float, label: str, seed: int, chosen: dict) -> str:
    """The run whose student channels `label` trains ("" if none): its MASK_SOURCES variant's run at the same
    budget and seed, at that variant's chosen learning rate (`chosen`: (dataset, budget, label) -> rate)."""
    if label not in MASK_SOURCES:
        return ""
    origin = MASK_SOURCES[label]
    return run_dir(study, Run(origin, budget, seed, chosen[(study.key, budget, origin)]))


def later_seeds(label: str, seeds, selection_seed: int, single_seed_variants) -> list:
    """The seeds `label` runs at its chosen learning rate after the grid: none for a single-seed variant."""
    return [] if label in single_seed_variants else [seed for seed in seeds if seed != selection_seed]


def family_budgets(budget: float) -> list:
    """The MAC budgets of `hsd 2 TAs`' pruned assistants at a student budget (the dense one has none to match)."""
    from hsd_tf.ratios import even_macs_fractions  # pylint: disable=import-outside-toplevel

    return [round(f, 6) for f in even_macs_fractions(budget, 2)[1:-1]]


def select_learning_rates(rows, selection_seed: int) -> dict:
    """(dataset, budget, label) -> the grid learning rate with the best validation accuracy at `selection_seed`.

    Ties go to the first learning rate of the grid. The test split plays no part.
    """
    best = {}
    for row in rows:
        if row["seed"] != selection_seed:
            continue
        key = (row["dataset"], row["budget"], row["label"])
        if key not in best or row["val_accuracy"] > best[key]["val_accuracy"]:
            best[key] = row
    return {key: row["learning_rate"] for key, row in best.items()}


def summarize(rows) -> list:
    """Mean and sample standard deviation over seeds, per (budget, label), in budget then label order."""
    groups = {}
    for row in rows:
        groups.setdefault((row["budget"], row["label"]), []).append(row)
    summary = []
    for (budget, label), members in sorted(groups.items()):
        entry = {"budget": budget, "label": label, "seeds": len(members),
                 "learning_rate": members[0].get("learning_rate"),
                 "fewest_layer_filters": min(m.get("fewest_layer_filters", 0) for m in members)}
        for key in ("accuracy", "params", "macs", "training_seconds", "plain_epochs"):
            values = np.array([m.get(key, np.nan) for m in members], dtype=float)
            entry[key] = float(values.mean())
            entry[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        summary.append(entry)
    return summary


def _cost(summary, entry: dict, key: str, spec: str) -> str:
    """An entry's training cost for the report; for a variant of MASK_SOURCES, its own plus its source's run's,
    which it cannot do without."""
    own = format(entry[key], spec)
    source = next((e for e in summary if e["budget"] == entry["budget"]
                   and e["label"] == MASK_SOURCES.get(entry["label"])), None)
    return f"{own} + {format(source[key], spec)}" if source else own


def verdict(summary, budget: float, best: str, others=None) -> tuple:
    """(lines, wins): `best` against every other label (or `others`) at `budget`.

    A win is a mean accuracy above the other's by more than the seed spread: the two mean +- std
    intervals do not overlap (difference > std_a + std_b); below by more than it is said as such, the rest is
    level. With one seed on either side there is no spread, so nothing is judged a win.
    """
    at_budget = {entry["label"]: entry for entry in summary if entry["budget"] == budget}
    mine = at_budget[best]
    lines, wins = [], []
    for label, other in at_budget.items():
        if label == best or (others is not None and label not in others):
            continue
        difference = mine["accuracy"] - other["accuracy"]
        spread = mine["accuracy_std"] + other["accuracy_std"]
        if min(mine["seeds"], other["seeds"]) < 2:
            wins.append(False)
            lines.append(f"- {best} vs {label}: {100 * difference:+.2f} points, one seed: no spread to judge by.")
            continue
        wins.append(difference > spread)
        outcome = "beats it" if wins[-1] else "below it beyond the spread" if -difference > spread else "level"
        lines.append(f"- {best} vs {label}: {100 * difference:+.2f} points, seed spread "
                     f"{100 * spread:.2f} points: {outcome}.")
    return lines, bool(wins) and all(wins)


def mac_spread(summary, budget: float) -> float:
    """Largest over smallest mean student MACs at `budget`, less 1: how far from equal cost the students are."""
    macs = [entry["macs"] for entry in summary if entry["budget"] == budget]
    return max(macs) / min(macs) - 1.0


# What each difference isolates, when both variants ran.
CONTRASTS = (
    ("hsd 2 TAs", "hsd 0 TAs", "what the assistants add (same method, none of them)"),
    ("l1 + KD", "l1", "what KD adds to L1 pruning"),
    ("hsd 2 TAs", "hsd 2 TAs no KD", "what KD adds to the cascade"),
    ("hsd 2 TAs no KD", "l1", "the cascade against L1 pruning, both without KD"),
    ("hsd 0 TAs", "l1 + KD", "a mask learned from the student's own gradient against the L1 mask, both with KD"),
    ("hsd 2 TAs", "l1 + KD", "the cascade against KD alone, at equal cost"),
    ("hsd 2 TAs per_mac", "hsd 2 TAs", "ranking by score per MAC against the paper's raw scores"),
    ("l1 + KD", "scratch", "the teacher's weights and KD against training the small network alone"),
    ("l1 + KD on hsd mask", "l1 + KD", "the cascade's learned mask against the L1 mask, both trained as l1 + KD"),
    ("hsd 2 TAs", "l1 + KD on hsd mask", "the cascade's joint training against fine-tuning its own mask with KD"),
    ("hsd 2 TAs from top", "hsd 2 TAs", "every view taught by the full view against by the view above"),
    ("hsd 2 TAs from all", "hsd 2 TAs", "every view taught by every larger model against by the view above"),
    ("hsd 2 TAs frozen early", "hsd 2 TAs", "masks frozen after a quarter of the joint epochs against moving to the end"),
    ("hsd 2 TAs from teacher", "hsd 2 TAs", "the student fine-tuned from the teacher's weights against from the joint "
                                            "training's"),
    ("scratch on hsd mask", "scratch", "the cascade's architecture against l1's, both trained from scratch"),
    ("l1 + KD at hsd counts", "l1 + KD", "the cascade's per-layer counts against l1's, both with the L1 ranking and "
                                         "KD"),
    ("l1 + KD on hsd mask", "l1 + KD at hsd counts", "the cascade's choice of filters within its per-layer counts "
                                                     "against the L1 choice"),
    ("l1 + KD equal compute", "l1 + KD", "l1 + KD given the cascade's compute against its epochs"),
    ("l1 equal compute", "l1", "l1 given the cascade's compute against its epochs"),
    ("scratch equal compute", "scratch", "scratch given the cascade's compute against its epochs"),
)


def markdown(datasets, command_line, wall_seconds) -> str:
    """The study's report: per dataset, the teacher, the table, the MAC spread, the grid, the verdicts."""
    unit = "of the teacher's MACs" if FLAGS.budget_kind == "macs" else "prune ratio"
    lines = [
        f"# Ablation at equal {'MACs' if FLAGS.budget_kind == 'macs' else 'filter counts'}: the cascade against "
        "the simple alternatives",
        "",
        f"Command: `{command_line}` (wall time {wall_seconds / 60:.1f} min for the runs not already finished, on "
        "this machine, 2 cores).",
        "",
        *(["**Interim report** (`--report_only`): the runs finished so far; each variant's learning rate is chosen "
           "among the rates it has finished (the grid below shows which).", ""] if FLAGS.report_only else []),
        f"VGG16 at width {FLAGS.width_multiplier}; every variant trains {FLAGS.joint_epochs + FLAGS.finetune_epochs} "
        f"epochs after the one shared teacher (hsd: {FLAGS.joint_epochs} joint + {FLAGS.finetune_epochs} "
        "fine-tuning; l1 and scratch: all of them in one phase). Each variant picks its learning rate from the grid "
        f"{', '.join(FLAGS.learning_rates)} by its validation accuracy (held out of the training split) at seed "
        f"{FLAGS.selection_seed}; the other seeds then run at that rate. Test accuracy is mean +- sample std over "
        "seeds.",
        "",
    ]
    for name, info in datasets.items():
        teacher, summary = info["teacher"], info["summary"]
        lines += [
            f"## {name}",
            "",
            f"{info['description']}. Teacher (dense): test accuracy {100 * teacher['accuracy']:.2f}%, "
            f"{teacher['params']:,} params, {teacher['macs']:,} MACs.",
            "",
            f"| budget ({unit}) | variant | lr | seeds | accuracy (%) | params | MACs | MACs / teacher | "
            "fewest filters in a layer | plain epochs | training seconds |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for e in summary:
            lines.append(
                f"| {e['budget']} | {e['label']} | {e['learning_rate']} | {e['seeds']} | "
                f"{100 * e['accuracy']:.2f} +- {100 * e['accuracy_std']:.2f} | {e['params']:,.0f} | "
                f"{e['macs']:,.0f} +- {e['macs_std']:,.0f} | {e['macs'] / teacher['macs']:.3f} | "
                f"{e['fewest_layer_filters']} | {_cost(summary, e, 'plain_epochs', '.1f')} | "
                f"{_cost(summary, e, 'training_seconds', ',.0f')} |")
        lines += ["", "Plain epochs: the training after the teacher in epochs of forward-backward passes of one batch "
                  "through one model, a forward pass counted as a third of one (`hsd_tf.compute`); training seconds: "
                  "the epochs' measured time after the teacher (results.json's `training_cost`), mean over seeds, "
                  "two runs at a time on one thread each (rows from before it was measured: blank). A variant "
                  "trained on another's student channels costs its own training plus that run's (`own + source`)."]
        budgets = sorted({e["budget"] for e in summary if e["label"] in VARIANTS and e["budget"] in info["budgets"]})
        main_summary = [e for e in summary if e["budget"] in budgets]
        lines += ["", "Students of one budget, largest over smallest mean MACs: " + ", ".join(
            f"{b}: {100 * mac_spread(main_summary, b):.1f}% apart" for b in budgets) + "."]
        lines += ["", "Code that trained the rows (`git describe` when a worker first imported hsd_tf): " + "; ".join(
            f"{b}: {', '.join(info['codes'].get(b, []))}" for b in budgets) + "."]
        lines += ["", f"Validation accuracy (%) at seed {FLAGS.selection_seed} per learning rate (the chosen one in "
                  "bold):", "", "| budget | variant | " + " | ".join(FLAGS.learning_rates) + " |",
                  "|---|---|" + "---|" * len(FLAGS.learning_rates)]
        for (budget, label), by_rate in sorted(info["grid"].items()):
            chosen = next(e["learning_rate"] for e in summary if e["budget"] == budget and e["label"] == label)
            cells = [(f"**{100 * by_rate[float(r)]:.2f}**" if float(r) == chosen else
                      f"{100 * by_rate[float(r)]:.2f}") if float(r) in by_rate else "" for r in FLAGS.learning_rates]
            lines.append(f"| {budget} | {label} | " + " | ".join(cells) + " |")
        for budget in budgets:
            at_budget = {e["label"] for e in main_summary if e["budget"] == budget}
            lines += ["", f"### {name} at budget {budget}", ""]
            if BEST in at_budget:
                comparisons, wins = verdict(main_summary, budget, BEST)
                lines += [f"{BEST} above every other variant beyond the seed spread: **{'yes' if wins else 'no'}**.",
                          "", *comparisons, ""]
            lines.append("What each difference isolates:")
            for mine, other, meaning in CONTRASTS:
                if {mine, other} <= at_budget:
                    line, _ = verdict(main_summary, budget, mine, [other])
                    lines.append(f"{line[0]} ({meaning})")
        if info["family"]:
            lines += ["", f"### {name}: the family of one cascade run against l1 + KD at each member's MACs", "",
                      "| student budget | view | MACs / teacher | hsd view accuracy (%) | l1 + KD at that budget (%) |",
                      "|---|---|---|---|---|"]
            for entry in info["family"]:
                l1 = entry["l1"]
                lines.append(f"| {entry['budget']} | {entry['view']} | {entry['macs'] / teacher['macs']:.3f} | "
                             f"{100 * entry['accuracy']:.2f} +- {100 * entry['accuracy_std']:.2f} | "
                             + (f"{100 * l1['accuracy']:.2f} +- {100 * l1['accuracy_std']:.2f} (MACs "
                                f"{l1['macs'] / teacher['macs']:.3f})" if l1 else "") + " |")
        lines.append("")
    return "\n".join(lines)


def codes_by_budget(rows) -> dict:
    """Budget -> the code versions of its rows, sorted; rows from before versions were recorded say so."""
    codes = {}
    for row in rows:
        codes.setdefault(row["budget"], set()).add(row.get("code", "not recorded"))
    return {budget: sorted(found) for budget, found in codes.items()}


def family(rows, summary, budgets) -> list:
    """Every view of `hsd 2 TAs` (mean over its seeds) beside l1 + KD trained at that view's budget."""
    entries = []
    for budget in budgets:
        members = [row for row in rows if row["label"] == BEST and row["budget"] == budget]
        if not members:
            continue
        matched_budgets = [budget] + family_budgets(budget)  # the student's, then each pruned assistant's
        for index, view_name in enumerate(v["name"] for v in members[0]["views"]):
            accuracy = np.array([m["views"][index]["accuracy"] for m in members])
            macs = float(np.mean([m["views"][index]["macs"] for m in members]))
            matched = matched_budgets[index] if index < len(matched_budgets) else None
            l1 = next((e for e in summary if e["label"] == "l1 + KD" and e["budget"] == matched), None)
            entries.append({"budget": budget, "view": view_name, "macs": macs, "accuracy": float(accuracy.mean()),
                            "accuracy_std": float(accuracy.std(ddof=1)) if len(accuracy) > 1 else 0.0, "l1": l1})
    return entries


def plot(datasets, path) -> None:
    import matplotlib  # pylint: disable=import-outside-toplevel

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

    figure, all_axes = plt.subplots(1, len(datasets), figsize=(6.5 * len(datasets), 4.8), squeeze=False)
    for axes, (name, info) in zip(all_axes[0], datasets.items()):
        summary, teacher = info["summary"], info["teacher"]
        for label in [label for label in VARIANTS if any(e["label"] == label for e in summary)]:
            points = sorted((e for e in summary if e["label"] == label), key=lambda e: e["macs"])
            axes.errorbar([e["macs"] for e in points], [100 * e["accuracy"] for e in points],
                          yerr=[100 * e["accuracy_std"] for e in points], marker="o", capsize=3, label=label)
        for budget in info["budgets"]:
            views = [e for e in info["family"] if e["budget"] == budget]
            if views:
                axes.plot([v["macs"] for v in views], [100 * v["accuracy"] for v in views], "k:", marker="x",
                          alpha=0.6, label=f"{BEST}: every view of one run" if budget == info["budgets"][0] else None)
        axes.plot([teacher["macs"]], [100 * teacher["accuracy"]], "k*", markersize=12, label="teacher (dense)")
        axes.set_xscale("log")
        axes.set_xlabel("MACs (log scale)")
        axes.set_ylabel("test accuracy (%), mean +- std over seeds")
        axes.set_title(f"{name}, VGG16 x{FLAGS.width_multiplier}")
        axes.grid(alpha=0.3, which="both")
        axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


DESCRIPTIONS = {
    "digits": "scikit-learn's digits: 1,293 training, 144 validation and 360 test images",
    "fashion_mnist": "Fashion-MNIST: the first {train:,} of 58,800 training images, {val:,} validation images held "
                     "out of the training split, all 10,000 test images",
    "fashion_mnist_folder": "Fashion-MNIST as a user's folder of 28x28 grey PNG files (`--dataset=folder:`, resized to "
                            "32x32x3): the same {train:,} training and {val:,} validation images, split by the folder "
                            "reader, all 10,000 test images",
}


def study_of(name: str) -> Study:
    """The study of one --datasets name in <out_dir>/<name>."""
    out_dir = os.path.join(FLAGS.out_dir, name)
    validation = round(60000 * FLAGS.fashion_val_fraction)
    if name == "fashion_mnist":
        return Study.from_flags(out_dir, dataset=name, max_train_examples=FLAGS.fashion_train_examples,
                                val_fraction=FLAGS.fashion_val_fraction)
    if name == "fashion_mnist_folder":
        root = fashion_mnist_folder(os.path.join(out_dir, "images"), FLAGS.fashion_train_examples, validation)
        return Study.from_flags(out_dir, dataset=f"folder:{root}", name=name,
                                val_fraction=validation / (validation + FLAGS.fashion_train_examples))
    return Study.from_flags(out_dir, dataset=name)


def fashion_mnist_folder(root: str, train_examples: int, val_examples: int) -> str:
    """Writes Fashion-MNIST as a user's folder of images (root/train/<class>/*.png, root/test/<class>/*.png), once:
    the validation and first training images of the tool's own split (the same seed, so the same images the
    fashion_mnist study holds out and trains on), and every test image. Returns root."""
    done = os.path.join(root, "written")
    if os.path.exists(done):
        return root
    from PIL import Image  # pylint: disable=import-outside-toplevel

    from hsd_tf import data  # pylint: disable=import-outside-toplevel

    train_images, train_labels, test_images, test_labels = data.fashion_mnist_arrays()
    order = np.random.RandomState(data.SPLIT_SEED).permutation(len(train_labels))[:val_examples + train_examples]
    for split, images, labels in (("train", train_images[order], train_labels[order]),
                                  ("test", test_images, test_labels)):
        for index, (image, label) in enumerate(zip(images, labels)):
            folder = os.path.join(root, split, str(label))
            os.makedirs(folder, exist_ok=True)
            Image.fromarray(image).save(os.path.join(folder, f"{index:05d}.png"))
    with open(done, "w") as f:
        f.write(f"{val_examples + train_examples} training and {len(test_labels)} test images\n")
    return root


def main(argv):
    del argv
    start = time.time()
    rates = [float(r) for r in FLAGS.learning_rates]
    seeds = [int(s) for s in FLAGS.seeds]
    budgets = [float(b) for b in FLAGS.budgets]
    for flag in ("variants", "single_seed_variants"):
        unknown = sorted(set(FLAGS[flag].value) - set(VARIANTS))
        if unknown:
            raise app.UsageError(f"--{flag}: unknown {unknown}; expected some of {list(VARIANTS)}")
    unseeded = [label for label, origin in MASK_SOURCES.items() if label in FLAGS.variants
                and origin in FLAGS.single_seed_variants and label not in FLAGS.single_seed_variants]
    if unseeded:
        raise app.UsageError(f"--single_seed_variants: {unseeded} need every seed of the variant whose mask they "
                             f"train. Received: {FLAGS.single_seed_variants}")
    orphans = [label for label in FLAGS.variants if MASK_SOURCES.get(label, label) not in FLAGS.variants]
    if orphans:
        raise app.UsageError(f"--variants: {orphans} train the mask of {[MASK_SOURCES[o] for o in orphans]}, "
                             f"which is not among them. Received: {FLAGS.variants}")
    unknown = sorted(set(FLAGS.datasets) - set(DESCRIPTIONS))
    if unknown:
        raise app.UsageError(f"--datasets: unknown {unknown}; expected some of {list(DESCRIPTIONS)}")
    studies = {name: study_of(name) for name in FLAGS.datasets}
    cells = [(name, budget, label) for name in studies for budget in budgets for label in FLAGS.variants]
    if FLAGS.family and FLAGS.budget_kind == "macs" and BEST in FLAGS.variants:
        cells += [(name, matched, "l1 + KD") for name in studies for budget in budgets
                  for matched in family_budgets(budget)]
    context = multiprocessing.get_context("spawn")  # a fresh TensorFlow per worker
    with concurrent.futures.ProcessPoolExecutor(FLAGS.jobs, mp_context=context, initializer=single_thread) as pool:
        for future in [pool.submit(study.pretrain_teacher) for study in studies.values() if not FLAGS.report_only]:
            future.result()

        def run_all(specs):
            if FLAGS.report_only:
                specs = [(name, spec) for name, spec in specs if spec.masks_from is not None
                         and os.path.exists(os.path.join(run_dir(studies[name], spec), "row.json"))]
            rows = []
            for row in pool.map(train, [studies[name] for name, _ in specs], [spec for _, spec in specs],
                                [FLAGS.budget_kind] * len(specs)):
                rows.append(row)
                print(f"{row['dataset']:<13} {row['label']:<19} budget {row['budget']} lr {row['learning_rate']} "
                      f"seed {row['seed']}: val {row['val_accuracy']:.4f} test {row['accuracy']:.4f}, "
                      f"{row['macs']:,} MACs ({row['seconds']} s)", flush=True)
            return rows

        def source(name, budget, label, seed):
            if FLAGS.report_only and label in MASK_SOURCES and (name, budget, MASK_SOURCES[label]) not in chosen:
                return None  # its source has no finished run: neither has it
            return mask_source(studies[name], budget, label, seed, chosen)

        # Sources first: a variant trained on another's mask runs once that one has, at every seed.
        chosen, grid_rows, other_rows = {}, [], []
        for phase in (
            [cell for cell in cells if cell[2] not in MASK_SOURCES],
            [cell for cell in cells if cell[2] in MASK_SOURCES],
        ):
            # Every variant at one rate before the next rate: an interrupted grid has every variant's first rates.
            rows = run_all([(name, Run(label, budget, FLAGS.selection_seed, rate,
                                       source(name, budget, label, FLAGS.selection_seed)))
                            for rate in rates for name, budget, label in phase])
            chosen.update(select_learning_rates(rows, FLAGS.selection_seed))
            grid_rows += rows
            other_rows += run_all([(name, Run(label, budget, seed, chosen[(name, budget, label)],
                                              source(name, budget, label, seed)))
                                   for name, budget, label in phase if (name, budget, label) in chosen
                                   for seed in later_seeds(label, seeds, FLAGS.selection_seed,
                                                           FLAGS.single_seed_variants)])
    datasets = {}
    for name in studies:
        final = [row for row in grid_rows + other_rows if row["dataset"] == name and row["seed"] in seeds
                 and row["learning_rate"] == chosen[(name, row["budget"], row["label"])]]
        grid = {}
        for row in grid_rows:
            if row["dataset"] == name:
                grid.setdefault((row["budget"], row["label"]), {})[row["learning_rate"]] = row["val_accuracy"]
        summary = summarize(final)
        datasets[name] = {"summary": summary, "teacher": final[0]["teacher"], "grid": grid, "budgets": budgets,
                          "codes": codes_by_budget(row for row in grid_rows + other_rows if row["dataset"] == name),
                          "family": family(final, summary, budgets) if FLAGS.budget_kind == "macs" else [],
                          "description": DESCRIPTIONS[name].format(train=FLAGS.fashion_train_examples,
                                                                   val=round(60000 * FLAGS.fashion_val_fraction))}
    os.makedirs(FLAGS.docs_dir, exist_ok=True)
    base = os.path.join(FLAGS.docs_dir, FLAGS.docs_name)
    with open(f"{base}.json", "w") as f:
        json.dump({"rows": grid_rows + other_rows, "chosen_learning_rates": [
            {"dataset": d, "budget": b, "label": l, "learning_rate": lr} for (d, b, l), lr in chosen.items()],
            "datasets": {name: {key: info[key] for key in ("summary", "teacher", "family")}
                         for name, info in datasets.items()}}, f, indent=2)
    text = markdown(datasets, command("ablation.py"), time.time() - start)
    with open(f"{base}.md", "w") as f:
        f.write(text)
    plot(datasets, f"{base}.png")
    print(text)


if __name__ == "__main__":
    app.run(main)
