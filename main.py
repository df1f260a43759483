"""hsd_tf command line: prune a CNN with hierarchical self-distillation.

    python main.py --flagfile=flags/digits_demo.cfg --model_dir=runs/digits
    python main.py --dataset=cifar10 --arch=vgg16 --num_ta=2
    python main.py --mode=profile --arch=vgg16 --dataset=cifar10

Re-running a command with the same --model_dir resumes it.
"""

import dataclasses
import json
import os
import sys

# TensorFlow's C++ start-up chatter would bury one-line errors on stderr.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


from absl import app, flags, logging  # noqa: E402

from hsd_tf import config as config_lib  # noqa: E402  (plain data: no TensorFlow import)
from hsd_tf.quiet import native_stderr_silenced  # noqa: E402

FLAGS = flags.FLAGS
_HELP = {
    "mode": "train: run (or resume) every phase; profile: a dry run that prints the dense network's params and "
            "MACs, its mask groups and the layers each view owns, before any training; "
            "export: export the views of a finished --model_dir again; compare: train every method of "
            "--compare_methods from one teacher at one budget and write compare.md, .json and .png (accuracy "
            "against MACs) in --model_dir.",
    "method": "hsd: the cascade (the default); l1: the teacher's filters of largest layer-normalised L1 norm kept "
              "within the same budget and floors, fine-tuned with cross-entropy and KD (--kd_weight) for "
              "joint + frozen + finetune epochs; scratch: l1's architecture from random weights, trained with the "
              "teacher's recipe for as many epochs.",
    "compare_methods": "The methods --mode=compare trains, each in <model_dir>/<method>: hsd, l1, scratch, and "
                       "l1_on_hsd_mask and scratch_on_hsd_mask, the cascade student's channels (its architecture) "
                       "trained as l1 and as scratch are (after hsd, whose run they need).",
    "dataset": "cifar10, cifar100, imagenet2012 (tfds), digits (offline, bundled with scikit-learn), "
               "folder:PATH (PATH/train/<class>/*, PATH/test/<class>/*), or py:FILE.py (or py:module) whose "
               "datasets() returns (train, validation, test) tf.data.Datasets of (inputs, targets) in your "
               "model's structure: any task, with --arch=PATH.keras compiled with its loss and metrics.",
    "arch": "vgg16, resnet50 or mobilenet_v1 (built here); keras.applications.NAME (weights=None, built for the "
            "dataset); or PATH.keras, your own functional or Sequential model (add --teacher=PATH.keras if it is "
            "already trained).",
    "unpruned_layers": "Layers whose input and output channels stay whole: a layer the tracer cannot follow "
                       "(a Lambda, a grouped conv), or one you want left at full width.",
    "num_ta": "Teaching assistants between the student and the frozen teacher; the top one keeps every filter.",
    "prune_ratio": "Fraction of prunable filters the student removes (the paper's k0).",
    "macs_budget": "Instead of --prune_ratio: the student's MACs as a fraction of the dense model's, in (0, 1); "
                   "it keeps filters in score order while its slim model stays within it, and the assistants are "
                   "spaced evenly in MACs up to 1. 0: none.",
    "round_to": "Every layer (mask group) keeps a multiple of this many filters (at least one multiple, or all "
                "of a smaller layer), within the budget: widths that hardware kernels may run faster. 1: any.",
    "saliency": "How filters rank for a --macs_budget: score (the paper: the learned scores, initialised from L1 "
                "norms) or per_mac (each score against the MACs its filter costs, so that a cheap useful filter "
                "can stay in place of a dear one; for every method).",
    "masks_from": "With --method=l1 or scratch: a finished run's model_dir (or its results.json) whose student's "
                  "channels the baseline keeps instead of the L1 ranking, e.g. an hsd run's: its learned mask "
                  "trained as l1 is, which tells the mask's worth from the cascade's training.",
    "masks_from_counts": "With --masks_from: keep only as many channels per layer as that run's student, chosen by "
                         "the teacher's L1 ranking within each layer: its architecture without its choice of "
                         "filters.",
    "ta_ratios": "Prune ratios of the assistants from T1 up, ending at 0; default: even spacing.",
    "width_multiplier": "Scales every layer width of the built-in architectures, for small runs.",
    "image_size": "Image side for folder: datasets whose model leaves its input size open (a model with a fixed "
                  "input size is fed at its own size and channels; other datasets use their native size).",
    "preprocessing": "How pixel values reach the model: raw (0..255, for a model that rescales inside), unit "
                     "([0, 1]), symmetric or tf ([-1, 1]), caffe, torch (keras.applications' conventions); auto: "
                     "with a trained --teacher, the one under which it scores best on the validation split "
                     "(printed), else the dataset's own normalisation.",
    "augment": "Training augmentation: flip_crop (flips and shifted crops), flip, crop (no flips: digits, text, "
               "medical images), none; auto: the dataset's own (no flips on digits), and with a trained --teacher, "
               "flips and crops each only if its validation accuracy holds on mirrored and on shifted images "
               "(printed).",
    "custom_objects": "Modules (or .py files) that define the custom layers of a --arch/--teacher .keras file; "
                      "imported before it is loaded (keras_hub, for keras_hub models).",
    "data_dir": "tfds data directory; for imagenet2012, the folder holding the ILSVRC2012 archives.",
    "val_fraction": "Fraction of the training split held out to drive the fine-tuning teacher ladder.",
    "model_dir": "Where checkpoints, TensorBoard logs and results.json go; re-running resumes.",
    "teacher": "Pre-trained teacher: a .keras or .weights.h5 file of --arch's structure, or 'imagenet' (resnet50); "
               "default: train one first.",
    "teacher_epochs": "Epochs of teacher pre-training (when --teacher is not given).",
    "teacher_learning_rate": "Initial learning rate of teacher pre-training (cosine to 0).",
    "joint_epochs": "Epochs of joint training with masks recomputed every step.",
    "frozen_epochs": "Epochs of joint training with frozen masks (the paper uses 10 on ImageNet).",
    "finetune_epochs": "Epochs of student fine-tuning with the teacher ladder.",
    "distill_from": "Whom each view of the cascade learns from while every view trains: above (the paper: the view "
                    "just above, the top view from the pre-trained teacher), top (every view from the full view, "
                    "in-place distillation as in slimmable networks), all (every larger model, teachers dropped at "
                    "random per step). Masks follow the view above's gradient in each.",
    "finetune_from": "The weights the cascade's student fine-tunes from: joint (the paper: those of the joint "
                     "training) or teacher (the pre-trained teacher's under the mask the joint training chose: the "
                     "cascade as a search for the student's architecture).",
    "equal": "What the baselines (--method=l1 or scratch, or those of --mode=compare) are given to match the "
             "cascade: epochs (joint + frozen + finetune epochs, the default) or compute (the epochs whose "
             "forward-backward passes cost what the cascade of these flags costs, docs/command_line.md).",
    "batch_size": "Global batch size.",
    "learning_rate": "Peak learning rate of the cascade phases (SGD, Nesterov).",
    "lr_cycle_epochs": "Length of one cosine cycle in epochs, adjusted so that each phase holds a whole number "
                       "of cycles and ends annealed.",
    "lr_peak_decay": "Factor applied to the peak learning rate at each restart.",
    "momentum": "SGD momentum.",
    "weight_decay": "Weight decay of the network weights (not of the scores).",
    "score_optimizer": "Optimizer of the importance scores: sgd (Nesterov, the weights' momentum; the paper's "
                       "CIFAR choice), rmsprop (its ImageNet choice) or adam.",
    "score_learning_rate": "Learning rate of the importance scores.",
    "score_schedule": "cosine: the score learning rate follows the weights' cosine cycles, so masks settle when "
                      "the weights do; constant: score_learning_rate throughout.",
    "recalibration_batches": "Training batches over which every view's BatchNorm statistics are recomputed "
                             "under its frozen mask at the end of joint training; 0: off.",
    "max_layer_prune_ratio": "No layer (mask group) loses more than this fraction of its filters; 1 turns the "
                             "floor off.",
    "min_layer_filters": "No layer (mask group) keeps fewer filters than this (or all it has, if fewer).",
    "mask_hysteresis": "Score margin by which a dropped filter must beat a kept one to take its place during "
                       "joint training (0: plain top-k every step); damps mask churn.",
    "max_train_examples": "Train on at most this many examples of the training split (after the validation "
                          "hold-out), for quick studies; 0: all.",
    "kd_weight": "lambda_KD: weight of the distillation term; CE gets 1 - lambda_KD.",
    "temperature": "Distillation temperature tau.",
    "hint_weight": "lambda_H: weight of the hint (feature MSE) loss; 0 switches hints off.",
    "seed": "Random seed.",
    "verbose": "Keras verbosity: 0 silent, 1 progress bar, 2 one line per epoch.",
    "profile_json": "With --mode=profile, also write the report as JSON here.",
    "export": "Formats written at the end of a run: savedmodel, tflite (float32), tflite_dynamic "
              "(dynamic-range), tflite_int8 (full integer); empty for none.",
    "export_views": "student: export the slim student; all: every TA and the dense teacher too.",
    "tensorboard": "Write TensorBoard logs to <model_dir>/logs (--notensorboard: none); "
                   "open them with: tensorboard --logdir=<model_dir>/logs",
    "deterministic": "Repeatable runs: TensorFlow op determinism on top of the seeds (slower on GPUs).",
    "strategy": "tf.distribute strategy: auto (mirrored over several GPUs, else one device), one_device, "
                "mirrored (every GPU, or every logical CPU), multi_worker (the cluster in TF_CONFIG; "
                "model_dir on storage every worker sees), tpu (TPU_NAME, or the local TPU VM).",
    "mixed_precision": "float32, or bfloat16 / float16 compute with float32 variables, logits and losses "
                       "(float16 adds dynamic loss scaling).",
    "metric_direction": "Whether a higher or a lower primary metric (the model's first compiled metric) is better: "
                        "it drives the teacher ladder and the comparison. auto: the metric's own (Keras' built-in "
                        "metrics know theirs); a metric that does not say is refused in one line.",
}


def _define_flags():
    for field in dataclasses.fields(config_lib.Config):
        default, help_text = field.default, _HELP[field.name]
        if field.name == "ta_ratios":
            flags.DEFINE_list(field.name, None, help_text)
        elif field.name in ("unpruned_layers", "custom_objects", "compare_methods", "export"):
            flags.DEFINE_list(field.name, getattr(config_lib.Config(), field.name), help_text)
        elif isinstance(default, bool):
            flags.DEFINE_bool(field.name, default, help_text)
        elif isinstance(default, int):
            flags.DEFINE_integer(field.name, default, help_text)
        elif isinstance(default, float):
            flags.DEFINE_float(field.name, default, help_text)
        elif field.name == "image_size":
            flags.DEFINE_integer(field.name, None, help_text)
        else:
            flags.DEFINE_string(field.name, default, help_text)


_define_flags()


def _config_from_flags() -> config_lib.Config:
    values = {f.name: FLAGS[f.name].value for f in dataclasses.fields(config_lib.Config)}
    if values["ta_ratios"] is not None:
        try:
            values["ta_ratios"] = [float(v) for v in values["ta_ratios"]]
        except ValueError:
            raise config_lib.ConfigError("ta_ratios", ",".join(values["ta_ratios"]), "must be numbers") from None
    return config_lib.Config(**values)


def main(argv):
    if len(argv) > 1:
        _fail(f"unexpected arguments {argv[1:]}; every setting is a --flag")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # TensorFlow's SavedModel writer is chatty at INFO
    try:
        config = _config_from_flags()
        config.validate()
        if FLAGS["macs_budget"].present and FLAGS["prune_ratio"].present:
            raise config_lib.ConfigError("macs_budget", config.macs_budget,
                                         f"is an alternative to --prune_ratio (given too: {config.prune_ratio})")
    except config_lib.ConfigError as error:
        _fail(str(error))  # before TensorFlow loads: a mistyped flag is answered at once
    try:
        return _run(config)
    except KeyboardInterrupt as interrupt:  # Ctrl-C: where the run stopped and how to resume, not a traceback
        print(str(interrupt) or "Interrupted before the run started; nothing was written.", file=sys.stderr)
        sys.exit(130)


def _run(config) -> int:
    with native_stderr_silenced():
        import tensorflow  # noqa: F401  pylint: disable=unused-import,import-outside-toplevel  (its start-up logs)
    from hsd_tf.export import ExportError  # pylint: disable=import-outside-toplevel

    try:
        if config.mode == "profile":
            return _profile(config)
        if config.mode == "compare":
            return _compare(config)
        from hsd_tf import training  # pylint: disable=import-outside-toplevel

        results = training.train_and_evaluate(config)
    except (config_lib.ConfigError, _dataset_error()) as error:
        _fail(str(error))
    except _training_error() as error:
        _fail(str(error), status=1)
    except ExportError as error:  # every other file is written: the table and the paths first, then each failure
        print(_summary(error.results))
        print(_where(config, error.results))
        for failure in error.failures:
            print(f"error: --export: {failure}", file=sys.stderr)
        sys.exit(1)
    print(_summary(results))
    print(_where(config, results))
    from hsd_tf.compare import advice  # pylint: disable=import-outside-toplevel

    note = advice(results)
    if note:
        print(note)
    return 0


def _compare(config) -> int:
    """--mode=compare: every method's run, then the table; exit 1 if some file could not be exported."""
    from hsd_tf import compare  # pylint: disable=import-outside-toplevel

    comparison = compare.compare(config)
    print(f"\n{comparison.table}")
    print(f"{'comparison:':<24}{os.path.join(config.model_dir, 'compare.md')} (.json, .png)")
    for failure in comparison.failures:
        print(f"error: --export: {failure}", file=sys.stderr)
    return 1 if comparison.failures else 0


def _summary(results) -> str:
    """One line per model: costs, fewest filters kept by a layer, the primary metric on the test split (accuracy for
    a classifier) and the exported float32 TFLite file's."""
    name = results.get("primary_metric", {}).get("name", "accuracy")
    column, tflite_column = ("accuracy", "tflite acc") if name in ("accuracy", "acc") else (name[:14], "tflite")
    width = max(9, len(column))
    lines = [f"{'model':<10} {'prune':>6} {'params':>12} {'MACs':>14} {'min layer':>9} {column:>{width}} "
             f"{tflite_column:>11}"]
    for entry in [dict(results["teacher"], name="teacher", prune_ratio=0.0)] + results["views"]:
        tflite = entry.get("exports", {}).get("tflite", {})
        shown = "failed" if "error" in tflite else format(_metric(tflite), ".4f") if tflite else ""
        fewest = entry.get("fewest_layer_filters", "")
        lines.append(f"{entry['name']:<10} {entry['prune_ratio']:>6.3f} {entry['params']:>12,} {entry['macs']:>14,} "
                     f"{fewest:>9} {_metric(entry):>{width}.4f} {shown:>11}")
    return "\n".join(lines)


def _metric(entry) -> float:
    """An entry's primary metric: `metric`, or `accuracy` in results written before there were others."""
    return entry["metric"] if "metric" in entry else entry["accuracy"]


def _where(config, results) -> str:
    """Where the run's results, files and logs are."""
    lines = [f"{'results:':<24}{os.path.join(config.model_dir, 'results.json')}"]
    for entry in [dict(results["teacher"], name="teacher")] + results["views"]:
        for fmt, exported in entry.get("exports", {}).items():
            where = "failed (below)" if "error" in exported else exported["path"]
            if "runtime" in exported:  # verified, but not by LiteRT's default set-up
                where += " (XNNPACK cannot run it; verified on LiteRT's built-in kernels: results.json says how)"
            if "batch" in exported:  # verified, one example at a time
                where += " (converted for batch 1: it takes one example at a time; results.json says why)"
            lines.append(f"{entry['name'] + ' ' + fmt + ':':<24}{where}")
    if config.tensorboard:
        lines.append(f"{'TensorBoard:':<24}tensorboard --logdir={os.path.join(config.model_dir, 'logs')}")
    return "\n".join(lines)


def _profile(config):
    """The dry run: costs, mask groups and per-view layers of --arch, with no training."""
    from hsd_tf import costs, graph, masks, training  # pylint: disable=import-outside-toplevel

    subject = training.prepare(config)
    model_trace = subject.trace
    shapes = ", ".join("x".join(map(str, shape)) for shape in model_trace.input_shapes)
    report = costs.count(model_trace)
    print(f"{config.arch} on {config.dataset} ({shapes}, width x{config.width_multiplier})")
    print(subject.task.describe())
    print(costs.format_table(report))
    print(graph.describe(model_trace))
    names = ["student"] + [f"ta{i}" for i in range(1, config.num_ta + 1)]
    if config.macs_budget:
        for name, fraction in zip(names, config.macs_fractions()):
            print(f"{name}: MAC budget {fraction:g}, at most {fraction * report['macs']:,.0f} MACs")
    for name, ratio in zip(names, [] if config.macs_budget else config.prune_ratios()):
        budget = masks.keep_budget(1.0 - ratio, model_trace.filter_counts, model_trace.group_widths)
        print(f"{name}: prune ratio {ratio:g}, keeps {budget} of {model_trace.total_filters} prunable filters")
    if config.profile_json:
        with open(config.profile_json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


def _dataset_error():
    from hsd_tf.data import DatasetError  # pylint: disable=import-outside-toplevel

    return DatasetError


def _training_error():
    from hsd_tf.checkpoints import TrainingError  # pylint: disable=import-outside-toplevel

    return TrainingError


def _fail(message, status=2):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(status)


def _parse_flags(argv):
    """absl's parsing, with its errors as our one line and exit status 2 (absl prints two lines, exit 1)."""
    try:
        return FLAGS(argv)
    except flags.Error as error:
        message = " ".join(str(error).split())
        if "Unable to open flagfile" in message:
            path = message.rsplit(": ", 1)[-1]
            reason = message.split("Unable to open flagfile: ", 1)[1].rsplit(": ", 1)[0]
            _fail(f"--flagfile: cannot be read ({reason}). Received: flagfile={path}")
        _fail(f"{message} (python main.py --helpfull lists every flag)")


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
