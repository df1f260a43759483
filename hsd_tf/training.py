"""`train_and_evaluate`: the whole run, phase by phase, resumable by default.

    teacher   pre-train the dense model (skipped when --teacher is given)
    joint     all views, masks from scores every step       (--joint_epochs)
    frozen    all views, masks frozen                        (--frozen_epochs)
    finetune  the student alone, teacher ladder T1..TN, then the pre-trained
              teacher                                        (--finetune_epochs)
              from the joint phases' weights, or with --finetune_from=teacher
              from the pre-trained teacher's under the student's mask

Every phase writes `<model_dir>/<phase>/cascade.weights.h5` when it ends; a
re-run loads finished phases instead of redoing them, and `EpochBackup`
resumes an interrupted phase from its last finished epoch. Results
go to `<model_dir>/results.json`; TensorBoard logs to `<model_dir>/logs/<phase>`. Callbacks, checkpoints and
optimizers live in their own modules (`hsd_tf/callbacks.py`, `hsd_tf/checkpoints.py`, `hsd_tf/optimizers.py`).
"""

import contextlib
import dataclasses
import functools
import json
import os
import time
from typing import List, Optional, Tuple

import keras
import numpy as np
import tensorflow as tf

from hsd_tf import architectures, compute, costs, graph, masks, slimming, strategy
from hsd_tf import data as data_lib
from hsd_tf import task as task_lib
from hsd_tf import export as export_lib
from hsd_tf import teacher as teacher_lib
from hsd_tf.cascade import PHASES, Cascade
from hsd_tf.callbacks import MaskChangeLog, StopOnNonFiniteLoss, TeacherLadder, TrainingClock
from hsd_tf.checkpoints import (EpochBackup, RunInterrupted, StopOnInterrupt, discard_backup, interrupts_noted,
                                load_weights, model_dir_lock, read_checkpoint, save_weights, write_json)
from hsd_tf.config import FINAL_CHECKPOINTS, Config, ConfigError
from hsd_tf.optimizers import score_optimizer, weight_optimizer
from hsd_tf.summaries import CascadeSummaries

CHECKPOINT = "cascade.weights.h5"
TEACHER_CHECKPOINT = "teacher.weights.h5"
CLOCK = "seconds.json"  # each phase's seconds per epoch (`TrainingClock`)


def train_and_evaluate(config: Config, model: Optional[keras.Model] = None, data=None,
                       subject: Optional["Subject"] = None) -> dict:
    """Runs (or resumes) every phase and writes results.json.

    Every process reads `config.model_dir`; only the chief writes it, holding
    its lock (`checkpoints.model_dir_lock`) so that no second run writes it
    meanwhile. Under `--strategy=multi_worker` the other workers run the same
    steps (they take part in every collective) but write into
    `<model_dir>/workers/<task>`, and resume from the chief's checkpoints, so
    the model_dir must be on storage that every worker sees.

    Args:
        config: The run's `Config`.
        model: A trained Keras model to prune instead of `--arch` (`hsd_tf.prune`):
            it is the teacher, and no teacher is trained.
        data: The `hsd_tf.data.Data` to use instead of `--dataset` (with `model`).
        subject: `prepare(config)` made already (`--mode=compare` reads the model once for every method).

    Returns:
        The results dictionary written to `<model_dir>/results.json`.

    Raises:
        ConfigError: A bad setting, model, or model_dir (another run holds it), before anything is written.
        TrainingError: Training cannot go on, or the slim student does not compute what the masked one did.
        export.ExportError: Some files could not be exported or failed verification; everything else is written.
        checkpoints.RunInterrupted: Ctrl-C; the message says where the run stopped and how to resume.
    """
    distribution = _strategy(config)  # first: a multi-worker strategy configures TensorFlow's runtime at start-up
    return _run(config, subject or prepare(config, model, data), rebuild_student=False, distribution=distribution)[0]


def prune_model(config: Config, subject: "Subject") -> Tuple[dict, keras.Model]:
    """`train_and_evaluate` on a prepared model and data (`prepare`), also returning the slim student itself.

    The student is the model this run built, not a reload of its `.keras` file
    (which Keras refuses to load by default when the model holds a Lambda); a
    run found finished rebuilds it from its last checkpoint, without training.
    """
    return _run(config, subject, rebuild_student=True)


@dataclasses.dataclass
class Subject:
    """The model a run prunes, read once (`prepare`): what every phase needs to know about it.

    Attributes:
        model: The dense model with its final activations taken off
            (`architectures.without_final_activations`).
        trace: Its trace (`hsd_tf.graph.trace`).
        task: Its outputs, loss, distillation and metrics (`hsd_tf.task`).
        activations: The activation taken off each output (put back on the exported models).
        data: The run's `hsd_tf.data.Data` where it is read before training (given, or `--dataset=py:`);
            None where the run loads it (an image dataset).
        trained: Whether `model` holds the teacher's weights already (a given model, or a `.keras` --arch with its
            --teacher); otherwise the run trains or loads them.
    """

    model: keras.Model
    trace: graph.Trace
    task: task_lib.Task
    activations: List[Optional[str]]
    data: Optional[data_lib.Data] = None
    trained: bool = False


def _strategy(config: Config):
    """The run's tf.distribute strategy (`--strategy`), its replicas checked against the batch size."""
    config.validate()
    try:
        distribution = strategy.make(config.strategy)
    except ValueError as error:
        raise ConfigError("strategy", config.strategy, str(error)) from None
    config.check_replicas(distribution.num_replicas_in_sync)
    return distribution


def _run(config: Config, subject: Subject, rebuild_student: bool, distribution=None):
    start = time.time()
    distribution = distribution or _strategy(config)
    config.check_model_dir()
    is_chief, worker = strategy.worker(distribution)
    lock = model_dir_lock(config.model_dir, refuse(config)) if is_chief else contextlib.nullcontext()
    with lock, interrupts_noted():
        results_path = os.path.join(config.model_dir, "results.json")
        if config.mode == "train" and _finished(results_path, config):
            with open(results_path) as f:
                results = json.load(f)
            return results, _finished_student(config, subject) if rebuild_student else None
        try:
            return _train_export_and_report(config, distribution, subject, is_chief, worker, start)
        except RunInterrupted:
            raise
        except KeyboardInterrupt:
            raise RunInterrupted(f"Interrupted; every finished phase and epoch is saved in {config.model_dir}. "
                                 "Re-run the same command to resume from there.") from None


def refuse(config: Config):
    """The refusal `checkpoints.model_dir_lock` gives when another run holds `config.model_dir`."""
    def refuse(holder: str):
        raise ConfigError("model_dir", config.model_dir,
                          f"another hsd_tf run{' (process ' + holder + ')' if holder else ''} is writing this folder; "
                          "wait for it to end, or use another --model_dir")
    return refuse


def _train_export_and_report(config: Config, distribution, subject: Subject, is_chief: bool, worker: str,
                             start: float):
    out_dir = config.model_dir if is_chief else os.path.join(config.model_dir, "workers", worker)
    if is_chief:
        _announce_resume(config, trains_teacher=not subject.trained and not config.teacher)
        config.save()
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    policy = keras.config.dtype_policy()
    # Mixed policies compute in 16 bits and keep every variable in float32.
    keras.config.set_dtype_policy("float32" if config.mixed_precision == "float32" else f"mixed_{config.mixed_precision}")
    try:
        with distribution.scope():
            results, candidates, data = _train_and_evaluate(config, out_dir, subject)
    finally:
        keras.config.set_dtype_policy(policy)
    # Slim models are plain float32 single-device models, built outside the
    # strategy, so exporting involves no collective and the chief does it alone.
    # The slim student's .keras file is written whatever --export says: it is what the run made.
    failures, student = [], None
    if is_chief:
        models = _checked_slim_models(candidates, data, subject)
        student = models[0][1]
        try:
            failures = _export(config, models, data, results, subject.task)
        except KeyboardInterrupt:
            raise RunInterrupted(f"Interrupted while exporting; training is finished and saved in {config.model_dir}. "
                                 "Re-run the same command to export again.") from None
    results["wall_seconds_this_invocation"] = round(time.time() - start, 1)
    write_json(os.path.join(out_dir, "results.json"), results)
    if failures:
        raise export_lib.ExportError(failures, results, student)
    return results, student


def _train_and_evaluate(config: Config, out_dir: str, subject: Subject):
    """Trains or loads every phase of `config.method`; returns (results, candidates, data).

    candidates: [(results entry, build, reference)] of every model to export:
    `build()` makes the slim inference model (outside the strategy's scope),
    `reference(inputs)` gives the logits it must compute.
    """
    task = subject.task
    data = subject.data or load_data(config, architectures.input_shape_of(config.arch))
    if subject.trained:  # a float32 copy made in the strategy's scope, flattened: the user's model stays as it is
        model = dense_teacher = slimming.slim_model(subject.trace, {}, name="teacher")
    else:
        model = _dense_model(config, data)
        dense_teacher = _teacher(config, out_dir, model, data, task)
    if config.teacher and subject.data is None:  # an image dataset, fed as the given teacher was trained
        data = _chosen_for_teacher(config, dense_teacher, data)
    validation = data.val if data.val is not None else data.test
    teacher_val = task.evaluate(dense_teacher, validation)[task.primary]
    if config.verbose:
        name = "accuracy" if task.is_classifier else task.primary
        print(f"\nTeacher: validation {name} {teacher_val:.4f}; {STARTS[config.method]}.", flush=True)
    if task.is_classifier and data.num_classes:
        warning = teacher_lib.near_chance_warning(teacher_val, data.num_classes)
        if warning:
            print(warning, flush=True)
    teacher_trace = graph.trace(dense_teacher, config.unpruned_layers, data.input_shape)
    dense_cost = costs.count(teacher_trace)
    teacher_entry = {"params": dense_cost["params"], "macs": dense_cost["macs"]}
    _record_metrics(teacher_entry, task, task.evaluate(dense_teacher, data.test),
                    teacher_val if data.val is not None else None)
    results = {
        "method": config.method,
        "dataset": config.dataset,
        "arch": config.arch,
        "num_ta": config.num_ta if config.method == "hsd" else 0,
        "width_multiplier": config.width_multiplier,
        "macs_budget": config.macs_budget or None,
        "masks_from": config.masks_from,
        "primary_metric": {"name": task.primary, "higher_is_better": task.higher_is_better},
        "teacher": teacher_entry,
    }
    train = _train_scratch if config.method == "scratch" else _train_cascade
    candidates = train(config, out_dir, model, dense_teacher, data, validation, teacher_val, results, task)
    results["training_cost"] = training_cost(config, data.steps_per_epoch)
    results["prune_ratios"] = [view["prune_ratio"] for view in results["views"]]
    if config.export_views == "all":
        candidates.append((results["teacher"], lambda: slimming.slim_model(teacher_trace, {}, name="teacher",
                                                                          inference=True),
                           lambda inputs: dense_teacher(graph.model_inputs(inputs), training=False)))
    return results, candidates, data


def training_cost(config: Config, steps_per_epoch: int) -> dict:
    """What the run's training after its teacher cost: per phase and in all, its steps, forward-backward and
    forward passes, plain steps (`hsd_tf.compute`) and the seconds its epochs took (`TrainingClock`)."""
    method = config.method
    epochs = ({"joint": config.joint_epochs, "frozen": config.frozen_epochs, "finetune": config.finetune_epochs}
              if method == "hsd" else {METHOD_PHASES[method][0]: config.baseline_epochs()})
    phases = {phase: compute.phase_cost(method, phase, count, steps_per_epoch, config.num_ta,
                                        TrainingClock.seconds(os.path.join(config.model_dir, phase, CLOCK)))
              for phase, count in epochs.items() if count}
    return {"equal": config.equal, "phases": phases, **compute.total(list(phases.values()))}


def _record_metrics(entry: dict, task: task_lib.Task, test: dict, val: Optional[float]) -> None:
    """A results entry's figures: every compiled metric on the test split (`metrics`), the primary one
    (`metric`, and `val_metric` on the validation split); a classifier's `accuracy` and `val_accuracy` too."""
    entry["metrics"] = test
    entry["metric"] = test[task.primary]
    if val is not None:
        entry["val_metric"] = val
    if task.is_classifier and task.primary in ("accuracy", "acc"):
        entry["accuracy"] = test[task.primary]
        if val is not None:
            entry["val_accuracy"] = val


def _cascade(config: Config, model: keras.Model, input_shape, task: task_lib.Task,
             teacher: Optional[keras.Model] = None) -> Cascade:
    """The run's cascade: every view for `--method=hsd`; for l1 and scratch the student alone at the same budget
    and per-layer floors (`Config.prune_ratios`, `Config.macs_fractions`)."""
    return Cascade(
        model, None if config.macs_budget else config.prune_ratios(), teacher=teacher,
        macs_fractions=config.macs_fractions(), round_to=config.round_to, kd_weight=config.kd_weight,
        temperature=config.temperature, hint_weight=config.hint_weight,
        max_layer_prune_ratio=config.max_layer_prune_ratio, min_layer_filters=config.min_layer_filters,
        mask_hysteresis=config.mask_hysteresis, unpruned_layers=config.unpruned_layers, input_shape=input_shape,
        saliency=config.saliency, task=task, distill_from=config.distill_from, seed=config.seed, name="cascade",
    )


def _train_cascade(config: Config, out_dir: str, model, dense_teacher, data, validation, teacher_val, results,
                   task: task_lib.Task):
    """`--method=hsd`: joint, frozen and finetune phases of the cascade; `--method=l1`: its student alone.

    l1 (Li et al.'s filter pruning) is the cascade's student at the same budget
    and per-layer floor with its masks frozen at the scores' initial ranking
    (the teacher's layer-normalised filter L1 norms), fine-tuned with the
    student's own fine-tuning losses (the model's loss plus KD from the teacher,
    `--kd_weight`) for every epoch the cascade trains after its teacher.
    """
    hsd = config.method == "hsd"
    cascade = _cascade(config, model, data.input_shape, task, teacher=dense_teacher)
    first_phase = "joint" if hsd else "finetune"
    if not os.path.exists(_phase_path(config.model_dir, first_phase)):
        cascade.initialize_from(dense_teacher)
        if not hsd:
            _freeze_baseline_masks(config, cascade)
    if hsd:
        mask_log = MaskChangeLog(cascade.view_names, os.path.join(out_dir, "joint", "mask_changes.json"))
        _run_phase(config, out_dir, cascade, "joint", config.joint_epochs, data, validation, [mask_log])
        _run_phase(config, out_dir, cascade, "frozen", config.frozen_epochs, data, validation)

    snapshot = cascade.snapshot()
    snapshot.compile()
    ta_test = snapshot.evaluate(data.test, return_dict=True, verbose=0)
    ladder_names = cascade.view_names[1:] + ["teacher"]
    ladder_val = snapshot.evaluate(validation, return_dict=True, verbose=0)
    ladder_values = [float(ladder_val[cascade.metric_name(n)]) for n in cascade.view_names[1:]]
    ladder_values.append(teacher_val)
    ladder = TeacherLadder(ladder_names, ladder_values, os.path.join(out_dir, "finetune", "ladder.json"),
                           monitor=f"val_{cascade.metric_name()}", better=task.better, metric=task.primary)
    cascade.set_ladder(snapshot)
    if hsd and config.finetune_from == "teacher":  # the joint phases chose the mask; the teacher's weights train it
        cascade.restart_student_from(dense_teacher)
    _run_phase(config, out_dir, cascade, "finetune",
               config.finetune_epochs if hsd else config.baseline_epochs(), data, validation, [ladder])

    student_test = cascade.evaluate(data.test, return_dict=True, verbose=0)
    student_val = cascade.evaluate(data.val, return_dict=True, verbose=0) if data.val is not None else None
    views = cascade.view_costs(frozen=True)
    if config.masks_from:
        _removed_fraction(views[0])
    mask_changes = mask_log.changes() if hsd else None
    for i, view in enumerate(views):
        logs = student_test if i == 0 else ta_test
        test = {key: float(logs[f"{view['name']}_{task.log_name(key)}"]) for key in task.metric_keys}
        # On the held-out part of the training split: what model selection may look at.
        val = None
        if data.val is not None:
            val = float(student_val[cascade.metric_name()]) if i == 0 else ladder_values[i - 1]
        _record_metrics(view, task, test, val)
        if hsd:
            view["mask_changes"] = mask_changes[view["name"]]
        view["kept_channels"] = {group: np.flatnonzero(mask).tolist()
                                 for group, mask in zip(cascade.trace.group_names, cascade.hard_masks(i, frozen=True))}
    results["views"] = views
    results["teacher_ladder"] = {"names": ladder_names, "val_metrics": ladder_values, "switches": ladder.switches()}
    exported = range(len(cascade.views)) if config.export_views == "all" else range(1)
    return [(views[i], functools.partial(slimming.slim_view, cascade if i == 0 else snapshot, i,
                                         name=cascade.view_names[i], inference=True),
             functools.partial(slimming.masked_outputs, cascade if i == 0 else snapshot, i)) for i in exported]


def _train_scratch(config: Config, out_dir: str, model, dense_teacher, data, validation, teacher_val, results,
                   task: task_lib.Task):
    """`--method=scratch`: l1's slim architecture from random weights, trained with the teacher's recipe
    (the model's own loss, SGD from `--teacher_learning_rate`, cosine to 0) for the epochs the cascade trains after
    its teacher. What pruning must beat to be worth its teacher."""
    del teacher_val  # no ladder: scratch learns from the targets alone
    student, view, unpruned = _scratch_student(config, model, dense_teacher, data.input_shape, task)
    epochs = config.baseline_epochs()
    path = os.path.join(config.model_dir, *FINAL_CHECKPOINTS["scratch"])
    if os.path.exists(path):
        read_checkpoint(lambda: load_weights(student, path), path, "train the scratch student again")
    else:
        teacher_lib.compiled_for_training(student, data, dataclasses.replace(config, teacher_epochs=epochs), task)
        _fit(student, config, out_dir, "scratch", epochs, data, validation)
        save_weights(student, os.path.join(out_dir, *FINAL_CHECKPOINTS["scratch"]))
        discard_backup(out_dir, "scratch")
    _record_metrics(view, task, task.evaluate(student, data.test),
                    task.evaluate(student, data.val)[task.primary] if data.val is not None else None)
    results["views"] = [view]
    trained = graph.trace(student, unpruned, data.input_shape)

    def reference(inputs):  # in 16 bits, its float32 copy: rounding must not pass for a slimming error
        inputs = graph.model_inputs(inputs)
        if keras.backend.standardize_dtype(student.compute_dtype) == "float32":
            return student(inputs, training=False)
        return slimming.slim_model(trained, {}, name="reference")(inputs, training=False)

    return [(view, lambda: slimming.slim_model(trained, {}, name="student", inference=True), reference)]


def _scratch_student(config: Config, model: keras.Model, dense_teacher: keras.Model, input_shape,
                     task: task_lib.Task) -> Tuple[keras.Model, dict, List[str]]:
    """(l1's slim architecture, augmentation layers kept for training, freshly initialised; its results entry:
    costs and kept channels; the layers the tracer must leave whole in it)."""
    cascade = _cascade(config, model, input_shape, task)
    cascade.initialize_from(dense_teacher)
    _freeze_baseline_masks(config, cascade)
    view = cascade.view_costs(frozen=True)[0]
    if config.masks_from:
        _removed_fraction(view)
    view["kept_channels"] = {group: np.flatnonzero(mask).tolist() for group, mask in
                             zip(cascade.trace.group_names, cascade.hard_masks(0, frozen=True))}
    # Every layer with weights anew, from its config; a weightless one is used as it is (a Lambda's config would
    # need Keras' unsafe deserialization, and it has nothing to initialise).
    student = keras.models.clone_model(
        slimming.slim_view(cascade, 0, frozen=True, name="student"),
        clone_function=lambda layer: layer.__class__.from_config(layer.get_config()) if layer.weights else layer)
    return student, view, cascade.unpruned_layers


def _freeze_baseline_masks(config: Config, cascade: Cascade) -> None:
    """l1's and scratch's student channels: the L1 ranking within the budget, `--masks_from` another run's, or with
    `--masks_from_counts` as many per layer as that run's, the L1 ranking within each layer (the scores still hold
    the teacher's L1 norms here)."""
    if not config.masks_from:
        cascade.freeze_masks()
        return
    kept = masks_from(config, cascade.trace)
    if config.masks_from_counts:
        kept = {g.name: np.argsort(-score.numpy(), kind="stable")[:len(kept[g.name])]
                for g, score in zip(cascade.trace.groups, cascade.views[0].scores)}
    cascade.views[0].remember_masks([np.isin(np.arange(g.width), kept[g.name]).astype(np.float32)
                                     for g in cascade.trace.groups])


def _removed_fraction(view: dict) -> None:
    """A view whose channels were given, not budgeted: its prune ratio is the fraction of filters it removed."""
    view["prune_ratio"] = round(1.0 - view["filters_kept"] / view["filters_total"], 4)


def masks_from(config: Config, model_trace: graph.Trace) -> dict:
    """Group name -> kept channels of the student of the run `--masks_from` names, checked against this model.

    Raises:
        ConfigError: Unreadable, or of another model (other groups or widths).
    """
    try:
        with open(config.masks_from_results()) as f:
            student = json.load(f)["views"][0]
        kept, total = student["kept_channels"], student["filters_total"]
    except (OSError, ValueError, KeyError, IndexError, TypeError) as error:
        raise ConfigError("masks_from", config.masks_from, f"its results.json has no student channels ({error})"
                          ) from None
    widths = dict(zip(model_trace.group_names, model_trace.group_widths))
    if (set(kept) != set(widths) or total != model_trace.total_filters
            or any(not channels or max(channels) >= widths[g] for g, channels in kept.items())):
        raise ConfigError("masks_from", config.masks_from, "its student was pruned from another model (other mask "
                          "groups or widths) than this run's")
    return kept


def _chosen_for_teacher(config: Config, teacher: keras.Model, data):
    """The data as the given, trained teacher was fed: `--preprocessing` and `--augment` where they are "auto".

    Preprocessing: the candidate under which the teacher scores best on the
    validation split. A model made the way the Keras guides make one (a
    `Rescaling(1/255)` layer inside) expects 0..255 pixels; one trained with
    keras.applications' `preprocess_input`, its convention; a model of an
    earlier hsd_tf run, the dataset's own normalisation.

    Augmentation: the dataset's own flips and shifted crops, each only if the
    teacher is indifferent to it: its validation accuracy on mirrored images
    within `FLIP_TOLERANCE` of the originals, on shifted crops of them (the
    training transform) within `SHIFT_TOLERANCE`. A teacher that tells mirrored
    images apart (digits, text, many medical images) was not trained on flips,
    and training its student on them teaches it labels that are wrong. One that
    loses accuracy on shifted images was not trained on shifts (the Keras
    guides train without augmentation): its distillation targets on them are
    partly wrong, and the student, which starts as the teacher, spends its
    epochs on images the teacher never learned. ImageNet's random-resized crops
    are kept: every ImageNet model is trained on them, and none keeps its
    accuracy on them.

    The console says what was chosen and why; resumed runs choose the same.
    """
    preprocessing, augment = config.preprocessing, config.augment
    validation = lambda candidate: candidate.val if candidate.val is not None else candidate.test  # noqa: E731
    loaded, accuracies = {(preprocessing, augment): data}, {}  # each (convention, augmentation) loaded once

    def data_for(candidate_preprocessing, candidate_augment=config.augment):
        key = (candidate_preprocessing, candidate_augment)
        if key not in loaded:
            loaded[key] = load_data(config, data.input_shape, *key)
        return loaded[key]

    if preprocessing == "auto":
        for candidate_name in CANDIDATE_PREPROCESSINGS:
            accuracies[candidate_name] = teacher_lib.accuracy(teacher, validation(data_for(candidate_name)))
        preprocessing = max(accuracies, key=accuracies.get)  # ties: the earlier in CANDIDATE_PREPROCESSINGS
        if config.verbose:
            listed = ", ".join(f"{name} {accuracy:.4f}" for name, accuracy in accuracies.items())
            print(f"Preprocessing: {preprocessing}, under which the teacher scores best on the validation split "
                  f"({listed}); --preprocessing=NAME chooses one.", flush=True)
    if augment == "auto":
        chosen = data_for(preprocessing)
        accuracy = accuracies.get(preprocessing)
        if accuracy is None:
            accuracy = teacher_lib.accuracy(teacher, validation(chosen))
        flip, crop, probes = data_lib.flips(config.dataset), True, []
        if flip:
            mirrored = teacher_lib.accuracy(teacher, validation(chosen).map(_mirrored))
            flip = mirrored >= accuracy - FLIP_TOLERANCE
            probes.append(f"{mirrored:.4f} on mirrored images")
        if config.dataset != "imagenet2012":
            shifted = teacher_lib.accuracy(teacher, _shifted_validation(data_for(preprocessing, "crop"),
                                                                        config.batch_size))
            crop = shifted >= accuracy - SHIFT_TOLERANCE
            probes.append(f"{shifted:.4f} on shifted crops")
        augment = {(True, True): "flip_crop", (True, False): "flip", (False, True): "crop"}.get((flip, crop), "none")
        if config.verbose:
            print(f"Augmentation: {augment}: the teacher's validation accuracy is {accuracy:.4f}, "
                  f"{', '.join(probes)}; --augment=NAME chooses one.", flush=True)
    return data_for(preprocessing, augment)


def _mirrored(images, labels):
    return tf.image.flip_left_right(images), labels


def _shifted_validation(cropping, batch_size: int):
    """The validation split (else the test split) of `cropping`, a `Data` whose training transform is shifted
    crops, as that transform would train on it: each image once, seeded."""
    examples = cropping.val_examples_ds if cropping.val is not None else cropping.test_examples_ds
    return examples.enumerate().map(
        lambda i, example: cropping.augment(*example, tf.stack([tf.constant(SHIFT_PROBE_SEED, tf.int64), i])),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(batch_size)


# A teacher trained on flips loses well under a point on mirrored images; one that was not loses many.
FLIP_TOLERANCE = 0.01
# Measured on validation splits (docs/command_line.md): models trained on shifted crops lose 0.3-0.7 points on
# them, the Keras-guide models of benchmarks/own_images.py, trained without, 9 to 49.
SHIFT_TOLERANCE = 0.02
SHIFT_PROBE_SEED = 0

# "auto" first: the dataset's own normalisation (an earlier hsd_tf run's teacher) wins ties; "tf" is "symmetric".
CANDIDATE_PREPROCESSINGS = ("auto", "raw", "unit", "symmetric", "caffe", "torch")


def prepare(config: Config, model: Optional[keras.Model] = None, data=None, loss=None, metrics=None,
            loss_weights=None) -> Subject:
    """Reads the model to prune once, with its task, and checks everything that can be checked before training.

    `--arch` is built or loaded (a `.keras` file once, with its compiled loss
    and metrics), a `.keras` model gets its `--teacher`'s weights, a
    `--dataset=py:` module's datasets are read, and then the model is traced,
    its task read (`hsd_tf.task.from_model`), its slimming rehearsed and its
    budgets checked: all before anything is trained or written.

    Args:
        config: The run's settings.
        model: The model to prune instead of `--arch` (`hsd_tf.prune`): trained, it is the teacher.
        data: Its `hsd_tf.data.Data` (with `model`).
        loss, metrics, loss_weights: Given to `hsd_tf.prune` instead of what `model` was compiled with.

    Returns:
        The `Subject`.

    Raises:
        ConfigError: A model that cannot be built, loaded or traced, has no loss for its task, does not fit its
            data, has nothing to prune, or per-layer floors that alone exceed some view's budget.
        DatasetError: A dataset that cannot be read.
    """
    config.validate()
    try:
        architectures.import_custom_objects(config.custom_objects)
    except ValueError as error:
        raise ConfigError("custom_objects", config.custom_objects, str(error)) from None
    trained, compile_config = model is not None, None
    input_shape = data.input_shape if data is not None else None
    if model is None:
        model, data, compile_config, trained, input_shape = _model_of_flags(config)
    original = model
    model, activations = architectures.without_final_activations(model)
    try:
        model_trace = graph.trace(model, config.unpruned_layers, input_shape)
    except graph.UnsupportedLayerError as error:
        flag = "unpruned_layers" if isinstance(error, graph.UnknownLayersError) else "arch"
        raise ConfigError(flag, getattr(config, flag), str(error).rstrip(".")) from None
    target_spec = data.target_spec if data is not None else task_lib.default_target_spec()
    try:
        task = task_lib.from_model(original, activations, target_spec, compile_config, loss=loss, metrics=metrics,
                                   loss_weights=loss_weights, metric_direction=config.metric_direction,
                                   shapes=[tuple(x.shape[1:]) for x in model_trace.model.outputs])
    except task_lib.TaskError as error:
        if trained and not config.arch.endswith(".keras"):  # hsd_tf.prune: the error as it is, no flag to name
            raise
        flag = "metric_direction" if "metric_direction" in str(error) else "dataset" if "target" in str(error) else "arch"
        raise ConfigError(flag, getattr(config, flag), str(error)) from None
    subject = Subject(model, model_trace, task, activations, data, trained)
    _check_trace(config, model_trace, original)
    return subject


def _model_of_flags(config: Config):
    """(model, data or None, compile config or None, whether the model holds its teacher's weights, the input
    shape to trace it at) of `--arch`, `--dataset` and `--teacher`, checked."""
    data_lib.validate_name(config.dataset)  # before the model: its errors are --arch's
    data = compile_config = None
    try:
        if config.dataset.startswith("py:"):
            model = architectures.load_saved(config.arch)
            data = data_lib.load_module(config.dataset, config.batch_size, [tuple(x.shape[1:]) for x in model.inputs],
                                        input_keys(model), config.seed)
            shape = data.input_shape
            architectures.check_fits(model, shape, None, config.arch)
        else:
            model_shape = architectures.input_shape_of(config.arch)
            fixed = model_shape is not None and len(model_shape) == 3 and None not in model_shape[:2]
            if config.image_size and fixed and config.dataset.startswith("folder:") and (
                    config.image_size, config.image_size) != tuple(model_shape[:2]):
                raise ConfigError("image_size", config.image_size,
                                  f"the model reads {model_shape[0]}x{model_shape[1]} images; leave the flag out")
            shape, num_classes = data_lib.describe(config.dataset, config.image_size, model_shape)
            model = architectures.get(config.arch, shape, num_classes, config.width_multiplier)
        if getattr(model, "preprocessor", None) is not None:
            raise ValueError(
                f"the model carries a keras_hub preprocessor ({type(model.preprocessor).__name__}), which the "
                "command line does not apply: save the model with `model.preprocessor = None` and choose "
                "--preprocessing to match it, or prune it with hsd_tf.prune, which applies it")
    except ValueError as error:
        if isinstance(error, (ConfigError, data_lib.DatasetError)):
            raise
        raise ConfigError("arch", config.arch, str(error).split(" Received:")[0].rstrip(".")) from None
    saved = config.arch.endswith(".keras")
    if saved:
        compile_config = architectures.compile_config(config.arch)
    trained = False
    if config.teacher and config.teacher != "imagenet":
        same_file = saved and os.path.abspath(config.teacher) == os.path.abspath(config.arch)
        try:
            source = None if same_file else teacher_lib.check(config.teacher, model)
        except ValueError as error:
            raise ConfigError("teacher", config.teacher, str(error)) from None
        if saved:  # its weights now, so that the trace holds them: the file is read once
            if not same_file:
                teacher_lib.load(config.teacher, model, source)
            trained = True
    if config.dataset.startswith("folder:") and config.mode in ("train", "compare"):
        data_lib.folder_files(config.dataset[len("folder:"):])
    return model, data, compile_config, trained, shape


def input_keys(model: keras.Model) -> List[str]:
    """The model's input names in its order: the keys a dict of inputs is read by."""
    structure = getattr(model, "_inputs_struct", None)
    if isinstance(structure, dict):
        return sorted(structure)
    return [x.name for x in model.inputs]


def _check_trace(config: Config, model_trace: graph.Trace, original: keras.Model) -> None:
    """Something to prune, slimming rehearsed (a student savable as .keras where the model is), per-layer floors
    within every budget; ConfigError otherwise."""
    if not model_trace.groups:
        raise ConfigError("arch", config.arch, model_trace.nothing_prunable())
    try:
        slimming.rehearse(model_trace, original=original if config.mode != "profile" else None)
    except slimming.SlimmingError as error:
        raise ConfigError("arch", config.arch, f"hsd_tf cannot prune this model exactly: slimmed to random masks "
                                               f"before training, {error}") from None
    if config.mode != "profile" and any(fmt.startswith("tflite") for fmt in config.export):
        why = export_lib.tflite_convertible(slimming.rehearsal_model(model_trace))
        if why:
            raise ConfigError("export", ",".join(config.export), f"the student cannot be converted to TFLite, as a "
                              f"student slimmed to random masks before training showed ({why}): leave the tflite "
                              "formats out")
    floors = masks.layer_floors(model_trace.group_widths, config.max_layer_prune_ratio, config.min_layer_filters)
    if config.masks_from:  # the channels are given: no budget to check
        masks_from(config, model_trace)
        return
    if config.round_to > 1:
        floors = masks.rounded_floors(floors, model_trace.group_widths, config.round_to)
    floor_note = f"with --max_layer_prune_ratio={config.max_layer_prune_ratio} every layer keeps at least"
    remedy = "lower --min_layer_filters, raise --max_layer_prune_ratio or prune less"
    if config.macs_budget:
        mac_model = costs.MacModel(model_trace)
        floor_macs = mac_model.keeping(floors)
        if floor_macs > config.macs_budget * mac_model.dense:
            raise ConfigError("min_layer_filters", config.min_layer_filters,
                              f"{floor_note} its floor, which costs {floor_macs / mac_model.dense:.3f} of the dense "
                              f"MACs, more than --macs_budget={config.macs_budget}; {remedy}")
        return
    for ratio in config.prune_ratios():
        overflow = masks.floors_overflow(1.0 - ratio, model_trace.filter_counts, model_trace.group_widths, floors)
        if overflow:
            raise ConfigError(
                "min_layer_filters", config.min_layer_filters,
                f"{floor_note} {overflow[0]} filters in all, more than the {overflow[1]} that prune ratio {ratio:g} "
                f"leaves; {remedy}")


def _announce_resume(config: Config, trains_teacher: bool) -> None:
    """One line when a run picks up work already in its folder: which phases are done, where the next resumes."""
    if config.mode == "export":
        print(f"Exporting again from the finished run in {config.model_dir}.", flush=True)
        return
    phases = (("teacher",) if trains_teacher else ()) + METHOD_PHASES[config.method]
    checkpoint = {"teacher": TEACHER_CHECKPOINT, "scratch": FINAL_CHECKPOINTS["scratch"][1]}
    done = [phase for phase in phases if os.path.exists(
        os.path.join(config.model_dir, phase, checkpoint.get(phase, CHECKPOINT)))]
    started = [(phase, EpochBackup.latest(os.path.join(config.model_dir, phase, "backup"))[0])
               for phase in phases if phase not in done]
    if not done and not any(epochs for _, epochs in started):
        return
    finished = f"{', '.join(done)} finished" if done else "no phase finished"
    phase, epochs = started[0] if started else (None, 0)
    next_step = (f"; {phase} resumes after epoch {epochs}" if epochs else f"; {phase} starts from its first epoch"
                 if phase else "; only the export is left")
    print(f"Resuming the run in {config.model_dir}: {finished}{next_step}.", flush=True)


def _finished(results_path: str, config: Config) -> bool:
    """Whether a previous invocation already wrote everything this one asks for."""
    if not os.path.exists(results_path):
        return False
    with open(results_path) as f:
        results = json.load(f)
    entries = results["views"] + [results["teacher"]] if config.export_views == "all" else results["views"][:1]
    return all(set(config.export) | {"keras"} <= {fmt for fmt, exported in entry.get("exports", {}).items()
                                                  if "error" not in exported} for entry in entries)


def _checked_slim_models(candidates, data, subject: Subject) -> list:
    """[(results entry, slim model)] of every model to export, each checked against what it was trained as.

    The models to deploy: augmentation layers left out, and each output ending
    as the user's model ends (its final softmax or sigmoid put back). The check
    (`slimming.check_slim`, on the logits) runs on a test batch in every run, so
    a slim model that does not compute what its masked view did stops the run
    before anything is exported.
    """
    inputs = next(iter(data.test))[0]
    models = []
    for entry, build, reference in candidates:
        model = build()
        try:
            slimming.check_slim(model, reference(inputs), inputs)
        except slimming.SlimmingError as error:
            raise slimming.SlimmingError(
                f"{error}, so nothing was exported; the trained checkpoints are kept. This is a bug in hsd_tf's "
                "slimming of this model: please report it with the model.") from None
        models.append((entry, slimming.with_final_activations(model, subject.activations, subject.task.keys,
                                                              subject.task.structure)))
    return models


def _export(config: Config, models, data, results, task: task_lib.Task) -> List[str]:
    """Saves each slim model (.keras), then writes and verifies every --export format of it, each on its own.

    results.json is written once the .keras files are, and again as each file
    is done, so a failure (or a crash) in a conversion loses nothing before it.

    Returns:
        One line per file that could not be made or failed verification.
    """
    directory = os.path.join(config.model_dir, "export")
    results_path = os.path.join(config.model_dir, "results.json")
    os.makedirs(directory, exist_ok=True)
    failures, references = [], []
    for entry, model in models:
        path = os.path.join(directory, f"{model.name}.keras")
        references.append(export_lib.Reference(model, data.test, task))
        entry["exports"] = {"keras": {"path": path, **references[-1].figures()}}
        try:
            model.save(path)
        except Exception as error:  # pylint: disable=broad-except  (reported, the other formats still made)
            entry["exports"]["keras"]["error"] = f"could not be saved: {export_lib.why(error)}"
            failures.append(f"{model.name} keras: {entry['exports']['keras']['error']}")
    write_json(results_path, results)
    sample = export_lib.representative_sample(data.train_from(0, 1)) if "tflite_int8" in config.export else None
    for (entry, model), reference in zip(models, references):
        def record(fmt, exported, entry=entry, name=model.name):
            entry["exports"][fmt] = exported
            write_json(results_path, results)
            if "error" in exported:
                failures.append(f"{name} {fmt}: {exported['error']}")

        export_lib.export_and_verify(model, directory, config.export, data.test, sample, record, reference)
    return failures


def _finished_student(config: Config, subject: Subject) -> keras.Model:
    """The slim student of a finished run, rebuilt from its last checkpoint (no training, no file read back)."""
    model, shapes, task = subject.model, subject.trace.input_shapes, subject.task
    if config.method == "scratch":
        student, _, unpruned = _scratch_student(config, model, model, shapes, task)
        load_weights(student, os.path.join(config.model_dir, *FINAL_CHECKPOINTS["scratch"]))
        slim = slimming.slim_model(graph.trace(student, unpruned, shapes), {}, name="student", inference=True)
    else:
        cascade = _cascade(config, model, shapes, task)
        load_weights(cascade, _phase_path(config.model_dir, "finetune"))
        slim = slimming.slim_view(cascade, 0, frozen=True, name="student", inference=True)
    return slimming.with_final_activations(slim, subject.activations, task.keys, task.structure)


def _dense_model(config: Config, data) -> keras.Model:
    """The dense model to train as the teacher, built in the strategy's scope: a built-in or keras.applications
    model anew, a `.keras` file read again (its final activations taken off, as `prepare` took them)."""
    model = architectures.get(config.arch, data.input_shape, data.num_classes or None, config.width_multiplier)
    return architectures.without_final_activations(model)[0]


def load_data(config: Config, model_shape=None, preprocessing: Optional[str] = None, augment: Optional[str] = None):
    """The `hsd_tf.data.Data` of `--dataset`, read at the model's input shape where it fixes one."""
    return data_lib.load(
        config.dataset, config.batch_size, data_dir=config.data_dir, val_fraction=config.val_fraction,
        image_size=config.image_size, seed=config.seed, max_train_examples=config.max_train_examples,
        preprocessing=preprocessing or config.preprocessing, augment=augment or config.augment, model_shape=model_shape,
    )


def pretrain_teacher(config: Config, subject: Optional[Subject] = None) -> str:
    """Trains the dense teacher of `config` alone (or finds it trained) in its model_dir.

    Several runs can then share one teacher with `--teacher=<the returned path>`.

    Args:
        config: The run's settings.
        subject: `prepare(config)`, if already made.

    Returns:
        The teacher's weights file.
    """
    subject = subject or prepare(config)
    config.check_model_dir()  # a teacher trained for other data or another model is refused, not reused
    config.save()
    keras.utils.set_random_seed(config.seed)
    data = subject.data or load_data(config, architectures.input_shape_of(config.arch))
    _teacher(config, config.model_dir, _dense_model(config, data), data, subject.task)
    return os.path.join(config.model_dir, "teacher", TEACHER_CHECKPOINT)


def _teacher(config: Config, out_dir: str, model: keras.Model, data, task: task_lib.Task) -> keras.Model:
    """The frozen pre-trained teacher (`model` with trained weights): given, imported, stored, or trained now."""
    if config.teacher == "imagenet":
        return teacher_lib.from_keras_resnet50(model)
    if config.teacher:
        return teacher_lib.load(config.teacher, model)
    path = os.path.join(config.model_dir, "teacher", TEACHER_CHECKPOINT)
    if os.path.exists(path):
        return read_checkpoint(lambda: teacher_lib.load(path, model), path, "retrain the teacher")
    teacher_lib.compiled_for_training(model, data, config, task)
    _fit(model, config, out_dir, "teacher", config.teacher_epochs, data, data.val)
    save_weights(model, os.path.join(out_dir, "teacher", TEACHER_CHECKPOINT))
    discard_backup(out_dir, "teacher")
    return model


def _phase_path(directory: str, phase: str) -> str:
    return os.path.join(directory, phase, CHECKPOINT)


def _run_phase(config, out_dir, cascade, phase, epochs, data, validation, callbacks=()) -> None:
    """Trains one phase, or loads its end state when it already finished."""
    path = _phase_path(config.model_dir, phase)
    cascade.set_phase(phase)
    if os.path.exists(path):
        load_weights(cascade, path)
    # Compiled after loading so that a finished phase's optimizer state is not restored.
    cascade.compile(optimizer=weight_optimizer(config, data, epochs),
                    score_optimizer=score_optimizer(config, data, epochs))
    if os.path.exists(path):
        return
    if epochs:
        if config.tensorboard:
            callbacks = [*callbacks, CascadeSummaries(os.path.join(out_dir, "logs", phase))]
        _fit(cascade, config, out_dir, phase, epochs, data, validation, callbacks)
    if phase == "joint":
        cascade.freeze_masks()
    # Every view's BatchNorm statistics are recomputed under its final mask after the last phase that trains it:
    # moving averages taken while masks and kernels changed (or with Keras' momentum 0.99 over a short phase)
    # can be far from its weights (a student at 8.9% in inference mode and 47.5% on batch statistics).
    trained = {"joint": True, "frozen": epochs > 0, "finetune": epochs > 0}[phase]
    if trained and config.recalibration_batches:
        views = [0] if phase == "finetune" else range(len(cascade.views))
        cascade.recalibrate_batch_norm((batch[0] for batch in data.train_from(0, 1).take(
            min(config.recalibration_batches, data.steps_per_epoch))), views)
    save_weights(cascade, _phase_path(out_dir, phase))
    discard_backup(out_dir, phase)


STARTS = {"hsd": "the cascade starts from its weights", "l1": "the l1 student starts from its largest filters",
          "scratch": "the scratch student takes the l1 student's architecture, not its weights"}

# The phases each method trains after its teacher, each resumable on its own.
METHOD_PHASES = {"hsd": PHASES, "l1": ("finetune",), "scratch": ("scratch",)}

PHASE_STORIES = {
    "teacher": "The dense model alone learns the task with cross-entropy; it will teach the top view",
    "joint": "Every view ({views}) trains at once over the shared kernels, each with its own normalization "
             "layers, stems and head; each view's masks follow its scores, stepped along the gradient of the view "
             "above (Eq. 5)",
    "frozen": "Every view ({views}) trains at once with its masks frozen",
    "finetune": "The student alone trains, taught by the TA above it, then by each next one it beats, "
                "up to the pre-trained teacher",
    "l1 finetune": "The student alone, the teacher's filters of largest L1 norm, fine-tuned with cross-entropy and "
                   "KD from the teacher",
    "scratch": "The student's slim architecture alone, from random weights, learns the task with cross-entropy",
}


def _fit(model, config, out_dir, phase, epochs, data, validation, callbacks=()) -> None:
    """Fits one phase, resuming from its newest backup.

    The training data of epoch e depends only on (seed, e), so a resumed run
    sees the batches an uninterrupted one would, and the backup holds the
    optimizer state, so the run continues exactly. Callbacks that change model
    state at the end of an epoch (the teacher ladder) come before the backup.
    """
    first_epoch, path = EpochBackup.latest(os.path.join(config.model_dir, phase, "backup"))
    backup = os.path.join(out_dir, phase, "backup")
    if config.verbose:
        resumed = f", resuming after epoch {first_epoch}" if first_epoch else ""
        views = ", ".join(getattr(model, "view_names", []))
        story = PHASE_STORIES.get(f"{config.method} {phase}", PHASE_STORIES[phase])
        print(f"\n== {phase}: {epochs} epoch{'s' * (epochs != 1)}{resumed}. {story.format(views=views)} ==",
              flush=True)
    if path:
        if not model.optimizer.built:  # the teacher's optimizer builds lazily; its state must load too
            model.optimizer.build(model.trainable_variables)
        load_weights(model, path)
    try:
        model.fit(
            data.train_from(first_epoch, epochs), epochs=epochs, initial_epoch=first_epoch,
            steps_per_epoch=data.steps_per_epoch, validation_data=validation, verbose=config.verbose,
            shuffle=False,  # train_from already shuffles, per epoch and reproducibly
            callbacks=[StopOnNonFiniteLoss(phase, backup), StopOnInterrupt(), *callbacks,
                       TrainingClock(os.path.join(out_dir, phase, CLOCK)), EpochBackup(backup)]
            + ([keras.callbacks.TensorBoard(os.path.join(out_dir, "logs", phase))] if config.tensorboard else []),
        )
    except KeyboardInterrupt:
        done, _ = EpochBackup.latest(backup)
        raise RunInterrupted(
            f"Interrupted in the {phase} phase after {done} of {epochs} epochs (epoch {done + 1}, under way, will be "
            f"redone); everything before is saved in {config.model_dir}. Re-run the same command to resume from "
            "there.") from None


