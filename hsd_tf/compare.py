"""`--mode=compare`: the methods side by side on the user's own model and data, at one budget, from one teacher.

    python main.py --mode=compare --flagfile=flags/digits_demo.cfg --macs_budget=0.25 --model_dir=runs/compare

Every method of `--compare_methods` (hsd, l1, scratch, scratch_on_hsd_mask by
default) is an ordinary run of `hsd_tf.training` in `<model_dir>/<method>`, so
each resumes on its own and each exports its student. `l1_on_hsd_mask` and
`scratch_on_hsd_mask` train the cascade student's channels as l1 and scratch do
(`--masks_from` the hsd run): its architecture without its joint training,
search then train as AutoSlim does. They share one teacher: `--teacher`, or one
trained here once (`<model_dir>/teacher`). The comparison is written as compare.json
(every run's results), compare.md (the table the console ends with) and
compare.png (the primary metric on the test split, accuracy for a classifier,
against MACs; every view of the cascade is a point of the same plot, since one
cascade run trains a family of models). `advice` is the
line a cascade run ends with when its student lost much accuracy: the cue to compare.
"""

import dataclasses
import os
from typing import List

from hsd_tf import training
from hsd_tf.checkpoints import model_dir_lock, write_json
from hsd_tf.config import ON_HSD_MASK, Config, trained_as
from hsd_tf.export import ExportError


@dataclasses.dataclass
class Comparison:
    """What `compare` made.

    Attributes:
        runs: Method -> its results.json content.
        table: compare.md's text.
        failures: One line per exported file that could not be made or failed verification.
    """

    runs: dict
    table: str
    failures: List[str]


def compare(config: Config) -> Comparison:
    """Trains (or resumes, or reads back) every method of `config.compare_methods` and writes the comparison.

    Raises:
        ConfigError: A bad setting or model, before anything is trained.
    """
    subject = training.prepare(config)  # a refusal before the teacher trains costs no training
    config.check_model_dir()
    with model_dir_lock(config.model_dir, training.refuse(config)):
        config.save()
        teacher = config.teacher or training.pretrain_teacher(dataclasses.replace(config, mode="train"), subject)
    runs, failures = {}, []
    for method in config.compare_methods:
        # The cascade's own settings go to its run, --equal to the baselines'.
        own = dict(equal="epochs") if method == "hsd" else dict(distill_from="above", finetune_from="joint")
        if method in ON_HSD_MASK:  # validated: the cascade's run is finished by now
            own.update(masks_from=os.path.join(config.model_dir, "hsd"))
        run = dataclasses.replace(config, mode="train", method=trained_as(method), teacher=teacher,
                                  model_dir=os.path.join(config.model_dir, method), **own)
        if config.verbose:
            print(f"\n==== {method}: {DESCRIPTIONS[method]} ({run.model_dir}) ====", flush=True)
        try:  # a given teacher is in the subject already: the model and its data are read once for every method
            runs[method] = training.train_and_evaluate(run, subject=subject if config.teacher else None)
        except ExportError as error:  # trained; some file is missing: the comparison still stands
            runs[method] = error.results
            failures += [f"{method} {failure}" for failure in error.failures]
    table = markdown(runs, config)
    write_json(os.path.join(config.model_dir, "compare.json"), {"budget": budget(config), "runs": runs})
    with open(os.path.join(config.model_dir, "compare.md"), "w") as f:
        f.write(table)
    plot(runs, os.path.join(config.model_dir, "compare.png"), f"{config.arch} on {config.dataset}, {budget(config)}")
    return Comparison(runs, table, failures)


# Validation accuracy the cascade's student may lose against its teacher before a run suggests --mode=compare; for a
# metric where lower is better (an error), the fraction of the teacher's value it may lose.
ADVICE_LOSS = 0.02
ADVICE_RELATIVE_LOSS = 0.10


def advice(results: dict) -> str:
    """A line pointing to --mode=compare when the cascade's student lost much on validation; else ''.

    At 0.10 of the MACs the cascade's students measured below l1 pruning and scratch training on digits and
    Fashion-MNIST (docs/teaching_assistants.md), so a large loss is when a user should measure the alternatives
    before shipping. Validation, not test: the run held it out for decisions like this one. The measure is the
    primary metric (accuracy for a classifier): more than 2 points lost where higher is better, more than 10% of
    the teacher's value where lower is (an error).

    Args:
        results: A run's results.json content.

    Returns:
        The line, or '' for another method, a run without a validation split, or a smaller loss.
    """
    teacher_val, student_val = _val(results["teacher"]), _val(results["views"][0])
    if results["method"] != "hsd" or teacher_val is None or student_val is None:
        return ""
    metric = results.get("primary_metric", {"name": "accuracy", "higher_is_better": True})
    if metric["higher_is_better"]:
        if teacher_val - student_val <= ADVICE_LOSS:
            return ""
        lost = f"{100 * (teacher_val - student_val):.1f} points below"
    else:
        if student_val - teacher_val <= ADVICE_RELATIVE_LOSS * abs(teacher_val):
            return ""
        lost = f"{100 * (student_val - teacher_val) / max(abs(teacher_val), 1e-12):.0f}% worse than"
    name = "" if metric["name"] in ("accuracy", "acc") else f" in {metric['name']}"  # a classifier's: as it was
    return (f"Note: the student is {lost} the teacher{name} on the validation split. At small budgets l1 pruning and "
            "scratch training have done better than the cascade (docs/teaching_assistants.md): --mode=compare "
            "trains them at the same MACs from this teacher, and the cascade's architecture alone.")


def _val(entry: dict):
    """An entry's primary metric on the validation split (`val_accuracy` in results from before there were others)."""
    return entry.get("val_metric", entry.get("val_accuracy"))


def _test(entry: dict) -> float:
    return entry["metric"] if "metric" in entry else entry["accuracy"]


DESCRIPTIONS = {
    "hsd": "the cascade, hierarchical self-distillation",
    "l1": "L1-norm filter pruning of the teacher, fine-tuned with cross-entropy and KD",
    "scratch": "l1's architecture from random weights",
    "l1_on_hsd_mask": "the cascade student's channels in the teacher's weights, fine-tuned as l1 is",
    "scratch_on_hsd_mask": "the cascade student's channels from random weights, trained as scratch is",
}


def budget(config: Config) -> str:
    return f"MAC budget {config.macs_budget:g}" if config.macs_budget else f"prune ratio {config.prune_ratio:g}"


def rows(runs: dict) -> list:
    """(label, results entry) per model, the teacher first, each method's student, then the cascade's other views."""
    teacher = next(iter(runs.values()))["teacher"]
    found = [("teacher (dense)", teacher)]
    found += [(f"{method} student", results["views"][0]) for method, results in runs.items()]
    for method, results in runs.items():
        found += [(f"{method} {view['name']}", view) for view in results["views"][1:]]
    return found


def _metric_name(runs: dict) -> tuple:
    """(name, higher is better) of the runs' primary metric."""
    metric = next(iter(runs.values())).get("primary_metric", {"name": "accuracy", "higher_is_better": True})
    return metric["name"], metric["higher_is_better"]


def _a_fraction(name: str) -> bool:
    """An accuracy, shown in percent."""
    return name == "acc" or name.endswith("accuracy")


def markdown(runs: dict, config: Config) -> str:
    """The comparison table: cost, the primary metric (accuracy for a classifier) and time of every model."""
    teacher = next(iter(runs.values()))["teacher"]
    name, higher = _metric_name(runs)
    percent = _a_fraction(name)
    shown = (lambda v: format(100 * v, ".2f")) if percent else (lambda v: format(v, ".4g"))  # noqa: E731
    label = "accuracy" if percent else f"{name} ({'higher' if higher else 'lower'} is better)"
    lines = [
        f"# {config.arch} on {config.dataset}: {', '.join(runs)} at {budget(config)}",
        "",
        f"{_epochs_line(config)} Test {label}; validation {name} on the hold-out of the training split (what model "
        "selection may use).",
        "",
        f"| model | params | MACs | MACs / teacher | val {name} | test {name} | vs teacher |",
        "|---|---|---|---|---|---|---|",
    ]
    for label_, entry in rows(runs):
        val = _val(entry)
        difference = _test(entry) - _test(teacher)
        lines.append(
            f"| {label_} | {entry['params']:,} | {entry['macs']:,} | {entry['macs'] / teacher['macs']:.3f} | "
            f"{'' if val is None else shown(val)} | {shown(_test(entry))} | "
            + (f"{round(100 * difference, 2) + 0.0:+.2f} |" if percent else f"{difference + 0.0:+.4g} |"))
    lines += ["", *cost_table(runs), ""]
    return "\n".join(lines)


def _epochs_line(config: Config) -> str:
    if config.equal == "compute":
        baselines = ", ".join(f"{method} {config.baseline_epochs(trained_as(method))}"
                              for method in config.compare_methods if method != "hsd")
        return (f"After the same teacher, the cascade trains {config.epochs_after_teacher()} epochs and each baseline "
                f"the epochs that cost as much (`--equal=compute`; {baselines}).")
    return f"Every method trains {config.epochs_after_teacher()} epochs after the same teacher."


def cost_table(runs: dict) -> List[str]:
    """Each method's training after the teacher: epochs, plain steps (forward-backward passes of one batch through
    one model, a forward pass a third of one: `hsd_tf.compute`) and measured seconds, each against the cascade's."""
    costs = {method: results["training_cost"] for method, results in runs.items() if "training_cost" in results}
    if not costs:
        return []
    reference = costs.get("hsd")

    def against(key, cost):
        return f" ({cost[key] / reference[key]:.2f}x)" if reference and reference[key] else ""

    lines = ["Training cost after the teacher (plain steps: forward-backward passes of one batch through one model, "
             "a forward pass counted as a third of one; seconds: the epochs' measured time on this machine):", "",
             "| method | epochs | plain steps | seconds |", "|---|---|---|---|"]
    for method, cost in costs.items():
        epochs = sum(phase["epochs"] for phase in cost["phases"].values())
        lines.append(f"| {method} | {epochs} | {cost['plain_steps']:,.0f}{against('plain_steps', cost)} | "
                     f"{cost['seconds']:,.0f}{against('seconds', cost)} |")
    on_mask = [method for method in costs if method in ON_HSD_MASK]
    if on_mask:
        verb, whose = ("trains", "its") if len(on_mask) == 1 else ("train", "their")
        lines += ["", f"{' and '.join(on_mask)} {verb} the channels the cascade found: {whose} cost comes on top of "
                  "the cascade's."]
    return lines


def plot(runs: dict, path: str, title: str) -> None:
    """The primary metric on the test split against MACs (log axis): each method's student, the cascade's views as
    one family."""
    import matplotlib  # pylint: disable=import-outside-toplevel

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

    name, higher = _metric_name(runs)
    scale = 100 if _a_fraction(name) else 1
    figure, axes = plt.subplots(figsize=(6.5, 4.5))
    teacher = next(iter(runs.values()))["teacher"]
    for method, results in runs.items():
        views = results["views"]
        line = axes.plot([v["macs"] for v in views], [scale * _test(v) for v in views],
                         marker="o", linestyle="--" if len(views) > 1 else "",
                         label=f"{method}" + (" (student, then each view)" if len(views) > 1 else ""))[0]
        axes.plot([views[0]["macs"]], [scale * _test(views[0])], marker="o", markersize=11, color=line.get_color())
        for view in views[1:]:
            axes.annotate(view["name"], (view["macs"], scale * _test(view)), textcoords="offset points",
                          xytext=(4, 4), fontsize=8, color=line.get_color())
    axes.plot([teacher["macs"]], [scale * _test(teacher)], "k*", markersize=13, label="teacher (dense)")
    axes.set_xscale("log")
    axes.set_xlabel("MACs (log scale)")
    axes.set_ylabel("test accuracy (%)" if scale == 100 else f"test {name} ({'higher' if higher else 'lower'} is better)")
    axes.set_title(title)
    axes.grid(alpha=0.3, which="both")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
