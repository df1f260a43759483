"""Run configuration: one dataclass of plain data, validated before any heavy work; no TensorFlow import.

`main.py` fills it from absl flags (field names are the flag names); the
Python API can build it directly. Defaults are the paper's CIFAR settings
(docs/method.md section 5).
"""

import dataclasses
import json
import os
from typing import List, Optional

from hsd_tf import compute, export, ratios

SCORE_OPTIMIZERS = ("sgd", "rmsprop", "adam")
SCORE_SCHEDULES = ("cosine", "constant")
MODES = ("train", "profile", "export", "compare")
# hsd: the cascade; l1 and scratch: the simple alternatives at the same budget (`hsd_tf.training`).
METHODS = ("hsd", "l1", "scratch")
# --mode=compare's baselines on the cascade's own student channels, its architecture at the budget: method -> the
# method that trains it (`--masks_from` the cascade's run). They tell the architecture the cascade found from its
# joint training, which decided the result on some data (docs/teaching_assistants.md, "Second round").
ON_HSD_MASK = {"l1_on_hsd_mask": "l1", "scratch_on_hsd_mask": "scratch"}
COMPARE_METHODS = METHODS + tuple(ON_HSD_MASK)


def trained_as(compare_method: str) -> str:
    """The method (`METHODS`) that trains a method of --compare_methods."""
    return ON_HSD_MASK.get(compare_method, compare_method)
SALIENCIES = ("score", "per_mac")  # `hsd_tf.cascade.SALIENCIES`, repeated so that no TensorFlow loads
EXPORT_VIEWS = ("student", "all")
MIXED_PRECISION = ("float32", "bfloat16", "float16")
# What must match between a run and the model_dir it resumes.
IDENTITY_FIELDS = ("method", "dataset", "arch", "num_ta", "prune_ratio", "ta_ratios", "width_multiplier", "image_size",
                   "max_layer_prune_ratio", "min_layer_filters", "max_train_examples", "unpruned_layers",
                   "macs_budget", "round_to", "saliency", "masks_from", "masks_from_counts", "preprocessing", "augment",
                   "distill_from", "finetune_from", "equal")
# Where each method's last trained state is: a finished run has it.
FINAL_CHECKPOINTS = {"hsd": ("finetune", "cascade.weights.h5"), "l1": ("finetune", "cascade.weights.h5"),
                     "scratch": ("scratch", "student.weights.h5")}
# `hsd_tf.data`'s choices, repeated here so that judging the settings loads no TensorFlow (tested to agree).
PREPROCESSINGS = ("auto", "raw", "unit", "symmetric", "caffe", "torch", "tf")
AUGMENTATIONS = ("auto", "flip_crop", "flip", "crop", "none")
METRIC_DIRECTIONS = ("auto", "higher", "lower")  # `hsd_tf.task.DIRECTIONS`
# Whom each view of the cascade learns from in the phases that train every view (`hsd_tf.cascade.DISTILL_SOURCES`).
DISTILL_SOURCES = ("above", "top", "all")
# The weights the student's fine-tuning starts from: the joint training's, or the pre-trained teacher's.
FINETUNE_STARTS = ("joint", "teacher")
# What a baseline is given to match the cascade: the same epochs after the teacher, or the same compute.
EQUAL_BUDGETS = ("epochs", "compute")


class ConfigError(ValueError):
    """A user mistake in one setting. `str(error)` is the one-line message."""

    def __init__(self, flag: str, value, reason: str):
        super().__init__(f"--{flag}: {reason}. Received: {flag}={value!r}")
        self.flag = flag
        self._arguments = (flag, value, reason)

    def __reduce__(self):
        # Rebuilt from its own arguments, so it crosses a process boundary (a pool of worker processes) intact.
        return type(self), self._arguments


@dataclasses.dataclass
class Config:
    """Everything one run needs. See `main.py` for each field's help text."""

    mode: str = "train"
    method: str = "hsd"
    compare_methods: List[str] = dataclasses.field(
        default_factory=lambda: ["hsd", "l1", "scratch", "scratch_on_hsd_mask"])
    dataset: str = "cifar10"
    arch: str = "vgg16"
    num_ta: int = 2
    prune_ratio: float = 0.6
    macs_budget: float = 0.0
    round_to: int = 1
    saliency: str = "score"
    masks_from: Optional[str] = None
    masks_from_counts: bool = False
    ta_ratios: Optional[List[float]] = None
    width_multiplier: float = 1.0
    unpruned_layers: List[str] = dataclasses.field(default_factory=list)
    image_size: Optional[int] = None
    preprocessing: str = "auto"
    augment: str = "auto"
    custom_objects: List[str] = dataclasses.field(default_factory=list)
    data_dir: Optional[str] = None
    val_fraction: float = 0.1
    model_dir: str = "runs/default"
    teacher: Optional[str] = None
    teacher_epochs: int = 160
    teacher_learning_rate: float = 0.1
    joint_epochs: int = 80
    frozen_epochs: int = 0
    finetune_epochs: int = 80
    distill_from: str = "above"
    finetune_from: str = "joint"
    equal: str = "epochs"
    batch_size: int = 128
    learning_rate: float = 0.008
    lr_cycle_epochs: int = 5
    lr_peak_decay: float = 0.8
    momentum: float = 0.9
    weight_decay: float = 4e-4
    score_optimizer: str = "rmsprop"
    score_learning_rate: float = 1e-3
    score_schedule: str = "cosine"
    max_layer_prune_ratio: float = 0.96
    min_layer_filters: int = 2
    mask_hysteresis: float = 0.05
    recalibration_batches: int = 50
    max_train_examples: int = 0
    kd_weight: float = 0.4
    temperature: float = 15.0
    hint_weight: float = 0.001
    seed: int = 0
    verbose: int = 1
    profile_json: Optional[str] = None
    export: List[str] = dataclasses.field(default_factory=lambda: list(export.FORMATS))
    export_views: str = "student"
    strategy: str = "auto"
    mixed_precision: str = "float32"
    deterministic: bool = False
    tensorboard: bool = True
    metric_direction: str = "auto"

    def prune_ratios(self) -> List[float]:
        """Student first: the explicit TA list, or even spacing down to 0 (the student's alone for a baseline)."""
        if self.method != "hsd":
            return [self.prune_ratio]
        if self.ta_ratios:
            return [self.prune_ratio] + list(self.ta_ratios)
        return ratios.even_prune_ratios(self.prune_ratio, self.num_ta)

    def macs_fractions(self) -> Optional[List[float]]:
        """Student first: the MAC budget, then the assistants evenly spaced in MACs up to 1; None without one."""
        if not self.macs_budget:
            return None
        return ratios.even_macs_fractions(self.macs_budget, self.num_ta if self.method == "hsd" else 0)

    def masks_from_results(self) -> str:
        """The results.json that `masks_from` names (the file, or the finished run's model_dir)."""
        if os.path.isdir(self.masks_from):
            return os.path.join(self.masks_from, "results.json")
        return self.masks_from

    def epochs_after_teacher(self) -> int:
        """What every method trains after the teacher: the cascade's joint + frozen + finetune epochs."""
        return self.joint_epochs + self.frozen_epochs + self.finetune_epochs

    def baseline_epochs(self, method: Optional[str] = None) -> int:
        """The epochs l1 or scratch (`method`, default this run's) train: the cascade's epochs after the teacher,
        or with `equal="compute"` as many as cost what the cascade of these settings does (`hsd_tf.compute`)."""
        if self.equal == "compute":
            return compute.equal_compute_epochs(method or self.method, self.joint_epochs, self.frozen_epochs,
                                                self.finetune_epochs, self.num_ta)
        return self.epochs_after_teacher()

    def validate(self) -> None:
        """Raises ConfigError naming the first bad setting that can be judged without the stack.

        `dataset`, `arch`, `strategy` and `teacher` are judged where they are used, before anything is
        trained or written (`hsd_tf.training.check_model`, `hsd_tf.strategy.make`).
        """
        _choice("mode", self.mode, MODES)
        _choice("method", self.method, METHODS)
        if self.mode == "compare":
            listed = ",".join(self.compare_methods)
            if not self.compare_methods or len(set(self.compare_methods)) != len(self.compare_methods):
                raise ConfigError("compare_methods", listed,
                                  f"expected distinct names among {', '.join(COMPARE_METHODS)}")
            for position, method in enumerate(self.compare_methods):
                if method not in COMPARE_METHODS:
                    raise ConfigError("compare_methods", listed,
                                      f"{method!r} is no method; expected some of {', '.join(COMPARE_METHODS)}")
                if method in ON_HSD_MASK and "hsd" not in self.compare_methods[:position]:
                    raise ConfigError("compare_methods", listed, f"{method} trains the cascade's student channels, so "
                                      "hsd must come before it")
        if self.ta_ratios and self.method != "hsd":
            raise ConfigError("ta_ratios", self.ta_ratios, f"are the cascade's; --method={self.method} trains the "
                              "student alone")
        if self.dataset.startswith("folder:"):
            root = self.dataset[len("folder:"):]
            if not os.path.isdir(root):
                raise ConfigError("dataset", self.dataset, "folder not found")
        if self.dataset.startswith("py:"):
            source = self.dataset[len("py:"):]
            if source.endswith(".py") and not os.path.isfile(source):
                raise ConfigError("dataset", self.dataset, "file not found")
            if not self.arch.endswith(".keras") and not self.arch.startswith("python:"):
                raise ConfigError("arch", self.arch, "a dataset of any targets (--dataset=py:) is pruned with your own "
                                  "model, a .keras file")
            if self.preprocessing != "auto" or self.augment != "auto":
                raise ConfigError("preprocessing" if self.preprocessing != "auto" else "augment",
                                  self.preprocessing if self.preprocessing != "auto" else self.augment,
                                  "applies to image datasets; a --dataset=py: module gives its examples as the model "
                                  "reads them")
        if self.dataset == "imagenet2012" and not self.data_dir and self.mode == "train":
            raise ConfigError("data_dir", self.data_dir, "imagenet2012 needs the folder holding the ILSVRC2012 archives")
        if self.num_ta < 0:
            raise ConfigError("num_ta", self.num_ta, "must be 0 or more")
        if not 0.0 <= self.prune_ratio < 1.0:
            raise ConfigError("prune_ratio", self.prune_ratio, "must be in [0, 1)")
        if self.ta_ratios:
            if len(self.ta_ratios) != self.num_ta:
                raise ConfigError("ta_ratios", self.ta_ratios, f"needs num_ta={self.num_ta} values, the last 0")
            try:
                ratios.validate_prune_ratios(self.prune_ratios())
            except ValueError as error:
                raise ConfigError(
                    "ta_ratios", self.ta_ratios,
                    "must be in [0, 1), decrease from below prune_ratio and end at 0",
                ) from error
        elif self.num_ta and self.prune_ratio == 0.0:
            raise ConfigError("prune_ratio", self.prune_ratio, "must be above 0 when there are teaching assistants")
        if not self.width_multiplier > 0:
            raise ConfigError("width_multiplier", self.width_multiplier, "must be positive")
        if self.image_size is not None and self.image_size < 8:
            raise ConfigError("image_size", self.image_size, "must be at least 8")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError("val_fraction", self.val_fraction, "must be in [0, 1)")
        for name in ("teacher_epochs", "joint_epochs", "finetune_epochs", "batch_size", "lr_cycle_epochs"):
            if getattr(self, name) < 1:
                raise ConfigError(name, getattr(self, name), "must be at least 1")
        if not 0.0 < self.max_layer_prune_ratio <= 1.0:
            raise ConfigError("max_layer_prune_ratio", self.max_layer_prune_ratio, "must be in (0, 1]")
        if self.min_layer_filters < 1:
            raise ConfigError("min_layer_filters", self.min_layer_filters, "must be at least 1")
        if self.recalibration_batches < 0:
            raise ConfigError("recalibration_batches", self.recalibration_batches, "must be 0 (off) or more")
        if self.mask_hysteresis < 0:
            raise ConfigError("mask_hysteresis", self.mask_hysteresis, "must be 0 or more")
        if not 0.0 <= self.macs_budget < 1.0:
            raise ConfigError("macs_budget", self.macs_budget, "must be in (0, 1), or 0 for none")
        if self.macs_budget and self.ta_ratios:
            raise ConfigError("ta_ratios", self.ta_ratios, "are prune ratios; with --macs_budget the assistants' "
                              "budgets are spaced evenly in MACs")
        if self.masks_from:
            if self.method == "hsd":
                raise ConfigError("masks_from", self.masks_from, "gives a baseline (--method=l1 or scratch) another "
                                  "run's student channels; the cascade learns its own")
            if not os.path.isfile(self.masks_from_results()):
                raise ConfigError("masks_from", self.masks_from, "no results.json of a finished run there")
        if self.masks_from_counts and not self.masks_from:
            raise ConfigError("masks_from_counts", self.masks_from_counts, "takes the per-layer counts of the run "
                              "--masks_from names; none is named")
        _choice("saliency", self.saliency, SALIENCIES)
        if self.saliency != "score" and not self.macs_budget:
            raise ConfigError("saliency", self.saliency, "weighs scores against MACs, so it needs --macs_budget")
        if self.round_to < 1:
            raise ConfigError("round_to", self.round_to, "must be at least 1 (1: no rounding)")
        if self.max_train_examples < 0:
            raise ConfigError("max_train_examples", self.max_train_examples, "must be 0 (all) or more")
        if self.frozen_epochs < 0:
            raise ConfigError("frozen_epochs", self.frozen_epochs, "must be 0 or more")
        _choice("distill_from", self.distill_from, DISTILL_SOURCES)
        _choice("finetune_from", self.finetune_from, FINETUNE_STARTS)
        _choice("equal", self.equal, EQUAL_BUDGETS)
        cascade_only = "distill_from" if self.distill_from != "above" else (
            "finetune_from" if self.finetune_from != "joint" else None)
        if cascade_only and self.method != "hsd" and self.mode != "compare":
            raise ConfigError(cascade_only, getattr(self, cascade_only), f"changes the cascade's training; "
                              f"--method={self.method} trains the student alone")
        if self.equal == "compute" and self.method == "hsd" and self.mode != "compare":
            raise ConfigError("equal", self.equal, "gives a baseline (--method=l1 or scratch, or the baselines of "
                              "--mode=compare) the cascade's compute; the cascade's own is what they are given")
        for name in ("learning_rate", "teacher_learning_rate", "score_learning_rate", "temperature"):
            if not getattr(self, name) > 0:
                raise ConfigError(name, getattr(self, name), "must be positive")
        for name in ("kd_weight", "lr_peak_decay", "momentum"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(name, getattr(self, name), "must be in [0, 1]")
        for name in ("hint_weight", "weight_decay"):
            if getattr(self, name) < 0:
                raise ConfigError(name, getattr(self, name), "must be 0 or more")
        _choice("metric_direction", self.metric_direction, METRIC_DIRECTIONS)
        _choice("preprocessing", self.preprocessing, PREPROCESSINGS)
        _choice("augment", self.augment, AUGMENTATIONS)
        for module in self.custom_objects:
            if module.endswith(".py") and not os.path.isfile(module):
                raise ConfigError("custom_objects", module, "file not found")
        _choice("score_optimizer", self.score_optimizer, SCORE_OPTIMIZERS)
        _choice("score_schedule", self.score_schedule, SCORE_SCHEDULES)
        try:
            export.validate_formats(self.export)
        except ValueError:
            raise ConfigError("export", ",".join(self.export), f"expected some of {', '.join(export.FORMATS)}") from None
        _choice("export_views", self.export_views, EXPORT_VIEWS)
        _choice("mixed_precision", self.mixed_precision, MIXED_PRECISION)
        if self.mode == "export" and not os.path.exists(os.path.join(self.model_dir, *FINAL_CHECKPOINTS[self.method])):
            raise ConfigError("model_dir", self.model_dir, "--mode=export needs a finished run here")
        if self.teacher == "imagenet" and (self.arch != "resnet50" or self.dataset != "imagenet2012"):
            raise ConfigError("teacher", self.teacher, "'imagenet' weights exist for --arch=resnet50 --dataset=imagenet2012 only")
        if self.teacher not in (None, "imagenet") and not os.path.exists(self.teacher):
            raise ConfigError("teacher", self.teacher, "file not found (expected a .keras or .weights.h5 file, or 'imagenet')")

    def check_replicas(self, replicas: int) -> None:
        """The global batch must split evenly over the replicas."""
        if self.batch_size % replicas:
            raise ConfigError("batch_size", self.batch_size, f"must divide evenly over the {replicas} replicas")

    def identity(self) -> dict:
        return {name: getattr(self, name) for name in IDENTITY_FIELDS}

    def check_model_dir(self) -> None:
        """Refuses to resume a model_dir made with a different run identity.

        The first run writes `config.json`; later runs must agree on every
        field of `IDENTITY_FIELDS`. A model_dir that is a file, or in which
        (or, not yet made, above which) nothing can be written, is refused too.
        """
        if os.path.exists(self.model_dir) and not os.path.isdir(self.model_dir):
            raise ConfigError("model_dir", self.model_dir, "is a file, not a folder")
        existing = os.path.abspath(self.model_dir)
        while not os.path.exists(existing):
            existing = os.path.dirname(existing)
        if self.mode != "profile" and not (os.path.isdir(existing) and os.access(existing, os.W_OK | os.X_OK)):
            what = "cannot be written" if existing == os.path.abspath(self.model_dir) else f"cannot be made in {existing}"
            raise ConfigError("model_dir", self.model_dir, f"{what} (no write permission there)")
        path = os.path.join(self.model_dir, "config.json")
        if not os.path.exists(path):
            return
        with open(path) as f:
            stored = json.load(f)
        for name, value in self.identity().items():
            if name in stored and _normalise(stored[name]) != _normalise(value):
                raise ConfigError(
                    name, value,
                    f"model_dir {self.model_dir} holds a run with {name}={stored[name]!r}; "
                    "use another --model_dir",
                )

    def save(self) -> None:
        os.makedirs(self.model_dir, exist_ok=True)
        with open(os.path.join(self.model_dir, "config.json"), "w") as f:
            json.dump(dataclasses.asdict(self), f, indent=2)


def _normalise(value):
    """Lists compare as lists, numbers in them as floats (0.3 given as "0.3" or 0.3), names as they are."""
    if isinstance(value, (list, tuple)):
        return [float(v) if isinstance(v, (int, float)) else v for v in value]
    return value


def _choice(flag, value, choices):
    if value not in choices:
        raise ConfigError(flag, value, f"expected one of {', '.join(choices)}")
