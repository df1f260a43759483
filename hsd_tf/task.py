"""What the user's model is for: its outputs, its loss and metrics, and how a view distils from the view above.

The cascade, the baselines and the driver are task-agnostic: whatever they
need to know about the task comes from one `Task`, read once from the model
(`from_model`: the loss and metrics it was compiled with, or given; its final
activations) and the targets of its data.

- **Outputs and their kinds.** A model's final softmax or sigmoid is taken off
  for training (`architectures.without_final_activations`): the losses work on
  logits, where cross-entropy is exact and stable, and the exported student
  gets it back, so it ends as the user's model ends. Each output is of a kind:
  `classes` (scores over its last axis: a softmax, or a categorical
  cross-entropy), `binary` (independent probabilities: a sigmoid, or a binary
  cross-entropy), or `values` (anything else: regression, reconstruction).
- **The model's own loss**, output by output, weighted as compiled: a
  cross-entropy that read probabilities reads the logits instead (the same
  function, computed stably); any other loss reads the output as the user's
  model gives it (the activation applied). An uncompiled classifier (one output
  of class scores, no loss) keeps hsd_tf's default: cross-entropy on logits,
  accuracy. Any other model without a loss is refused (`TaskError`).
- **Distillation from the view above, on every output** (docs/method.md,
  "Beyond classifiers"): `classes`, temperature KL over the last axis, averaged
  over positions for a map (segmentation: per pixel); `binary`, the same KL
  between the two-class distributions of each element; `values`, the output's
  own loss with the teacher's output as the target where it is one of Keras'
  regression losses (so the term has the task's units and scale), else the mean
  squared error. Terms are weighted by the compiled loss weights.
- **The primary metric** is the first compiled metric (the loss where none is):
  the console's column, the teacher ladder's and the advice's measure, the
  comparison's axis. Its direction is the metric's own (Keras' built-in metrics
  know theirs), or `metric_direction`; an unknown one is refused.

Metrics are computed with Keras' own `CompileMetrics`, the object `fit` and
`evaluate` use, from the compiled configuration: a teacher's metrics here are
the user's `evaluate` figures.
"""

import dataclasses
from typing import Callable, Dict, List, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf
# Keras' compile-time resolution ("accuracy" and "crossentropy" by the shapes of targets and outputs, metric names
# prefixed by output names) lives in compile_utils, not in the public API; using it is what makes the metrics equal
# to the user's own `evaluate`.
from keras.src.losses.losses import LossFunctionWrapper  # what compile makes of a loss function; not exported
from keras.src.trainers import compile_utils

from hsd_tf import graph, losses

KINDS = ("classes", "binary", "values")
FINAL_ACTIVATIONS = ("softmax", "sigmoid")
DIRECTIONS = ("auto", "higher", "lower")
# Cross-entropies that can read logits, by the activation that makes the probabilities they read otherwise.
_CROSS_ENTROPY_CLASSES = {
    keras.losses.SparseCategoricalCrossentropy: "softmax", keras.losses.CategoricalCrossentropy: "softmax",
    keras.losses.CategoricalFocalCrossentropy: "softmax", keras.losses.BinaryCrossentropy: "sigmoid",
    keras.losses.BinaryFocalCrossentropy: "sigmoid",
}
_CROSS_ENTROPY_FUNCTIONS = {
    keras.losses.sparse_categorical_crossentropy: "softmax", keras.losses.categorical_crossentropy: "softmax",
    keras.losses.categorical_focal_crossentropy: "softmax", keras.losses.binary_crossentropy: "sigmoid",
    keras.losses.binary_focal_crossentropy: "sigmoid",
}
_REGRESSION_CLASSES = (keras.losses.MeanSquaredError, keras.losses.MeanAbsoluteError, keras.losses.Huber,
                       keras.losses.LogCosh, keras.losses.MeanSquaredLogarithmicError,
                       keras.losses.MeanAbsolutePercentageError)
_REGRESSION_FUNCTIONS = (keras.losses.mean_squared_error, keras.losses.mean_absolute_error, keras.losses.huber,
                         keras.losses.log_cosh, keras.losses.mean_squared_logarithmic_error,
                         keras.losses.mean_absolute_percentage_error)
# How a metric is named in the cascade's logs ("student_acc"): Keras' name, "accuracy" shortened as hsd_tf always had it.
LOG_NAMES = {"accuracy": "acc"}


class TaskError(ValueError):
    """A model, loss, metric or target that hsd_tf cannot train with; `str(error)` is one line saying what to do."""


@dataclasses.dataclass(frozen=True)
class Output:
    """One output of the model, as the cascade trains it.

    Attributes:
        key: Its name: the dict key for a model with dict outputs, else the output layer's name.
        shape: Its shape without the batch axis.
        activation: "softmax" or "sigmoid" taken off for training (put back on the exported student), or None.
        kind: "classes", "binary" or "values".
        loss: The model's own loss for it, reading the output as the user's model gives it (activated); None
            for an output without one.
        logit_loss: The same loss reading logits: a cross-entropy with `from_logits`, else the activation applied
            first. What the cascade, the teacher and the scratch baseline train with.
        weight: Its loss weight.
        exact_sparse: `logit_loss` is a sparse cross-entropy on logits with Keras' default reduction: computed
            as hsd_tf always computed a classifier's (`losses.pair_loss`), so classifiers train exactly as before.
        distill_with_loss: Distillation uses `loss` with the teacher's output as the target (Keras' regression
            losses); else the kind's rule.
        probabilities: The output is probabilities already (an activation inside the model, where no final one
            could be taken off, and a cross-entropy that reads probabilities): distillation takes their logits.
    """

    key: str
    shape: tuple
    activation: Optional[str]
    kind: str
    loss: Optional[keras.losses.Loss]
    logit_loss: Optional[keras.losses.Loss]
    weight: float = 1.0
    exact_sparse: bool = False
    distill_with_loss: bool = False
    probabilities: bool = False


class Task:
    """The outputs, loss, distillation and metrics of one model, read once (`from_model`).

    Attributes:
        outputs: One `Output` per model output, in the model's order.
        structure: How the user's model gives outputs and takes targets: "single", "list" or "dict".
        primary: Result key of the primary metric ("accuracy", "mean_io_u", "class_accuracy", "loss").
        higher_is_better: Its direction.
        default_classifier: No loss was compiled or given: hsd_tf's cross-entropy and accuracy.
    """

    def __init__(self, outputs: Sequence[Output], structure: str, metrics, weighted_metrics, target_spec,
                 direction: str = "auto", default_classifier: bool = False):
        self.outputs = tuple(outputs)
        self.structure = structure
        self.default_classifier = default_classifier
        self._metrics, self._weighted_metrics = metrics or None, weighted_metrics or None
        self.target_spec = target_spec
        try:
            probe = self.built_metrics()
            probe.update_state(*self._zeros())
        except Exception as error:  # pylint: disable=broad-except  (Keras' own message, on one line)
            raise TaskError(f"the compiled metrics cannot be computed on these outputs and targets: "
                            f"{' '.join(str(error).split())[:300]}") from None
        self.metric_keys = list(probe.result())
        self.primary = self.metric_keys[0]
        found = _direction(probe.metrics[0])
        if direction != "auto":
            found = direction == "higher"
        if found is None:
            raise TaskError(f"whether a higher or a lower {self.primary} is better is not known (it is the first "
                            "compiled metric, which drives the teacher ladder and the comparison): give "
                            "metric_direction=higher or lower (--metric_direction)")
        self.higher_is_better = found

    # ------------------------------------------------------------ structure

    @property
    def keys(self) -> List[str]:
        return [o.key for o in self.outputs]

    @property
    def is_classifier(self) -> bool:
        """One output of class scores per example: the path hsd_tf always had (accuracy, top-1 agreement)."""
        return len(self.outputs) == 1 and self.outputs[0].kind == "classes" and len(self.outputs[0].shape) == 1

    def flat(self, targets) -> list:
        """Targets (or outputs) in the user's structure as one value per output, in the model's order."""
        if isinstance(targets, dict):
            return [targets[key] for key in self.keys]
        return list(targets) if isinstance(targets, (list, tuple)) else [targets]

    def structured(self, values: Sequence):
        """One value per output as the user's model gives them: the value, a list, or a dict."""
        values = list(values)
        if self.structure == "dict":
            return dict(zip(self.keys, values))
        return values if self.structure == "list" else values[0]

    def activated(self, outputs: Sequence) -> list:
        """Logits with each output's final activation applied: what the user's model computes."""
        return [_activate(o.activation, z) for o, z in zip(self.outputs, outputs)]

    # --------------------------------------------------------------- losses

    def loss(self, targets, outputs, sample_weight=None):
        """The model's own loss on the logits `outputs` (one per output), a mean over the global batch divided out
        for this replica (summed over replicas: the global mean), as Keras' losses are under tf.distribute."""
        terms = []
        for output, y, z in zip(self.outputs, self.flat(targets), outputs):
            if output.loss is None:
                continue
            z = tf.cast(z, tf.float32)
            if output.exact_sparse and sample_weight is None:
                per_example = keras.losses.sparse_categorical_crossentropy(y, z, from_logits=True)
                value = losses.replica_mean(_mean_per_example(per_example) if per_example.shape.rank > 1
                                            else per_example, _global_batch(z))
            else:
                value = output.logit_loss(y, z, sample_weight=sample_weight)
            terms.append(output.weight * value)
        return tf.add_n(terms) if terms else tf.constant(0.0)

    def keras_losses(self):
        """The loss of every output on logits, for `model.compile` (with `loss_weights()`), in the user's structure."""
        return self.structured([o.logit_loss for o in self.outputs])

    def loss_weights(self):
        return self.structured([o.weight for o in self.outputs])

    def distillation(self, outputs, teacher_outputs, temperature: float):
        """Distillation of every output from the (detached) teacher's, weighted as the losses are."""
        terms = []
        for output, z, t in zip(self.outputs, outputs, teacher_outputs):
            t = tf.stop_gradient(tf.cast(t, tf.float32))
            z = tf.cast(z, tf.float32)
            if output.probabilities:
                z, t = _logits_of(output.kind, z), _logits_of(output.kind, t)
            if output.kind == "classes":
                per_example = _mean_per_example(losses.distillation_loss(z, t, temperature))
            elif output.kind == "binary":
                per_example = _mean_per_example(binary_distillation_loss(z, t, temperature))
            elif output.distill_with_loss:
                terms.append(output.weight * output.loss(t, z))
                continue
            else:
                per_example = _mean_per_example(tf.square(z - t))
            terms.append(output.weight * losses.replica_mean(per_example, _global_batch(z)))
        return tf.add_n(terms)

    # -------------------------------------------------------------- metrics

    def new_metrics(self) -> compile_utils.CompileMetrics:
        """Fresh metric objects of the compiled configuration (built on first use, as `fit` builds them). A model
        compiled without metrics is measured by its loss, output by output ("loss", "<output>_loss")."""
        if self._metrics is None and self._weighted_metrics is None:
            metrics = self.structured([[_LossMetric(o.loss)] if o.loss is not None else [] for o in self.outputs])
            return compile_utils.CompileMetrics(metrics, None, output_names=self.keys)
        return compile_utils.CompileMetrics(_fresh(self._metrics), _fresh(self._weighted_metrics),
                                            output_names=self.keys)

    def built_metrics(self) -> compile_utils.CompileMetrics:
        """`new_metrics`, built now: their variables exist before any training step (a strategy's scope)."""
        metrics = self.new_metrics()
        metrics.build(*self._zeros())
        return metrics

    def _zeros(self):
        """(targets, outputs) of one example of zeros, in the user's structure: what builds the metrics."""
        def zeros(spec):
            return np.zeros((1,) + tuple(d or 1 for d in spec.shape[1:]), keras.backend.standardize_dtype(spec.dtype))
        targets = self.flat(keras.tree.map_structure(zeros, self.target_spec))
        return (self.structured(targets),
                self.structured([np.zeros((1,) + tuple(d or 1 for d in o.shape), "float32") for o in self.outputs]))

    def update(self, metrics, targets, outputs, sample_weight=None) -> None:
        """Feeds one batch of logits `outputs` (one per output) to `metrics`, activated as the user's model gives them."""
        metrics.update_state(self.structured(self.flat(targets)), self.structured(self.activated(outputs)),
                             sample_weight=sample_weight)

    def evaluate(self, predict: Callable, dataset) -> Dict[str, float]:
        """Every compiled metric of `predict` over `dataset`.

        Args:
            predict: Inputs (one tensor, or a tuple of them) to logits (one tensor, or one per output); a Keras
                model of the run (logits out) is called in inference mode.
            dataset: Batches of (inputs, targets[, sample weights]).

        Returns:
            Keras' result name -> value, as the user's `evaluate` names them.
        """
        if isinstance(predict, keras.Model):
            model = predict
            predict = lambda inputs: model(graph.model_inputs(inputs), training=False)  # noqa: E731
        metrics = self.new_metrics()
        for batch in dataset:
            inputs, targets, weights = keras.utils.unpack_x_y_sample_weight(batch)
            self.update(metrics, targets, keras.tree.flatten(predict(inputs)), weights)
        return {name: float(value) for name, value in metrics.result().items()}

    def better(self, value: float, than: float) -> bool:
        """Whether primary-metric `value` is better than `than`."""
        return value > than if self.higher_is_better else value < than

    def log_name(self, name: Optional[str] = None) -> str:
        """A metric's key in the cascade's logs (`student_<this>`): the primary one by default."""
        name = self.primary if name is None else name
        return LOG_NAMES.get(name, name)

    def describe(self) -> str:
        """One line for the console: each output's kind and loss, and the primary metric."""
        parts = []
        for o in self.outputs:
            loss = "no loss" if o.loss is None else o.loss.name
            parts.append(f"{o.key} ({o.kind}{', ' + o.activation if o.activation else ''}; {loss})")
        return (f"Task: {', '.join(parts)}; primary metric {self.primary} "
                f"({'higher' if self.higher_is_better else 'lower'} is better).")


class _LossMetric(keras.metrics.Mean):
    """The mean of an output's own loss over the examples: the measure of a model compiled without metrics."""

    def __init__(self, loss, name="loss"):
        super().__init__(name=name)
        self.loss = loss
        self._direction = "down"

    def update_state(self, y_true, y_pred, sample_weight=None):
        values = self.loss.call(y_true, y_pred)
        values = _mean_per_example(values) if len(values.shape) > 1 else values
        return super().update_state(values, sample_weight=sample_weight)


def from_model(model: keras.Model, activations: Sequence[Optional[str]], target_spec, compile_config=None,
               loss=None, metrics=None, loss_weights=None, metric_direction: str = "auto", shapes=None) -> Task:
    """The task of a model: its outputs, its own loss and metrics, and its targets.

    Args:
        model: The user's model (its output names and structure, and what it was compiled with).
        activations: The final activation taken off each output ("softmax", "sigmoid" or None;
            `architectures.without_final_activations`): the cascade trains on the logits before it.
        target_spec: The structure of `tf.TensorSpec`s of one batch of targets (the data's `element_spec[1]`).
        compile_config: What the model was compiled with (`model.get_compile_config()`, or a `.keras`
            file's "compile_config"); default: the model's own, if compiled.
        loss, metrics, loss_weights: Given instead of the compiled ones (as `model.compile` takes them).
        metric_direction: "auto", "higher" or "lower": whether a higher primary metric is better.
        shapes: Each output's shape without the batch axis (default: the model's own; a subclassed model's come
            from its trace).

    Raises:
        TaskError: No loss for a model that is not a classifier, a loss or metric Keras does not know, or
            targets that do not fit the outputs; one line each.
    """
    if metric_direction not in DIRECTIONS:
        raise TaskError(f"metric_direction must be one of {', '.join(DIRECTIONS)}. "
                        f"Received: metric_direction={metric_direction!r}")
    if loss is None and type(model).compute_loss is not keras.Model.compute_loss:
        raise TaskError(
            f"the model {model.name!r} computes its loss itself ({type(model).__name__}.compute_loss), which hsd_tf "
            "cannot apply to the outputs of each view: give loss= for its outputs to hsd_tf.prune, or save "
            "keras.Model(model.inputs, model.outputs) compiled with the loss of its outputs")
    compiled = _compiled(model, compile_config)
    loss = compiled.get("loss") if loss is None else loss
    metrics = compiled.get("metrics") if metrics is None else metrics
    weighted_metrics = compiled.get("weighted_metrics")
    loss_weights = compiled.get("loss_weights") if loss_weights is None else loss_weights
    shapes = [tuple(shape) for shape in shapes] if shapes is not None else [tuple(x.shape[1:]) for x in model.outputs]
    keys, structure = output_keys(model, len(shapes))
    default = loss is None
    if default and (len(shapes) != 1 or len(shapes[0]) != 1 or (shapes[0][0] or 0) < 2):
        raise TaskError(
            f"the model {model.name!r} ({_outputs_text(keys, shapes)}) has no loss, and only a classifier (one "
            "output of class scores) has a default one: compile it with its loss (model.compile(loss=...), "
            "saved with the .keras file) or give loss= to hsd_tf.prune")
    check_targets(keys, shapes, target_spec)
    flat_spec = _flat(target_spec, keys)
    if default:
        # On logits, or on the probabilities of the softmax taken off (which then reads the logits: the same).
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=activations[0] is None)
        metrics = ["accuracy"] if metrics is None else metrics
    per_output_loss = _per_output(loss, keys, "loss")
    weights = _per_output(loss_weights, keys, "loss_weights") if loss_weights is not None else [1.0] * len(keys)
    outputs = []
    for key, shape, activation, spec, identifier, weight in zip(keys, shapes, activations, flat_spec,
                                                                 per_output_loss, weights):
        outputs.append(_output(key, shape, activation, spec, identifier, 1.0 if weight is None else float(weight)))
    for identifier in keras.tree.flatten(metrics or []) + keras.tree.flatten(weighted_metrics or []):
        _check_metric(identifier)
    return Task(outputs, structure, metrics, weighted_metrics, target_spec, metric_direction, default)


def output_keys(model: keras.Model, count: int):
    """(the name of each of the `count` outputs in the model's order, "single" | "list" | "dict"): dict keys for a
    model with dict outputs, else its output names ("output_<i>" where it has none: a subclassed model)."""
    structure = getattr(model, "_outputs_struct", None)
    if isinstance(structure, dict):
        return sorted(structure), "dict"
    names = list(getattr(model, "output_names", None) or [])
    if len(names) != count:
        names = [f"output_{i}" for i in range(count)] if count > 1 else ["output"]
    return names, "list" if count > 1 else "single"


def check_targets(keys, shapes, target_spec) -> None:
    """Raises TaskError, naming the output, unless the targets of one batch fit the outputs.

    A target fits an output of the same shape, or of class scores over its last axis when it holds one class index
    per position (its shape without the last axis, or with a last axis of 1).
    """
    targets = _flat(target_spec, keys)
    if len(targets) != len(shapes):
        raise TaskError(f"the data give {len(targets)} target(s) per example and the model has {len(shapes)} "
                        f"output(s) ({_outputs_text(keys, shapes)}): give one target per output, in the model's "
                        "structure (a dict by output name, or a list in its order)")
    for key, shape, spec in zip(keys, shapes, targets):
        found = tuple(spec.shape[1:])
        same = len(found) == len(shape) and all(f is None or s is None or f == s for f, s in zip(found, shape))
        indices = _fits(found, shape[:-1]) or (len(found) == len(shape) and found[-1:] == (1,)
                                               and _fits(found[:-1], shape[:-1]))
        if not (same or indices):
            raise TaskError(f"the targets of output {key!r} have shape {found} per example; the output has shape "
                            f"{shape}: give targets of its shape, or class indices of shape {shape[:-1]}")


def _fits(found, expected) -> bool:
    return len(found) == len(expected) and all(f is None or e is None or f == e for f, e in zip(found, expected))


def _flat(spec, keys) -> list:
    if isinstance(spec, dict):
        missing = [key for key in keys if key not in spec]
        if missing:
            raise TaskError(f"the data's targets are a dict with keys {sorted(spec)}; the model's outputs are "
                            f"{keys}: name every output")
        return [spec[key] for key in keys]
    return list(spec) if isinstance(spec, (list, tuple)) else [spec]


def _outputs_text(keys, shapes) -> str:
    return ", ".join(f"{key} {shape}" for key, shape in zip(keys, shapes))


def _fresh(metrics):
    """Metric objects of their own with the same configuration (a function or a name is stateless: itself)."""
    if metrics is None:
        return None
    return keras.tree.map_structure(
        lambda m: type(m).from_config(m.get_config()) if isinstance(m, keras.metrics.Metric) else m, metrics)


_COMPILED = ("loss", "loss_weights", "metrics", "weighted_metrics")


def _compiled(model, compile_config) -> dict:
    """The loss, loss weights and metrics a model was compiled with, as objects (no optimizer): a model in memory's
    own (its functions need not be registered), or those of a `.keras` file's compile config."""
    if compile_config is None:
        live = getattr(getattr(model, "_compile_config", None), "config", None)  # what compile() was given
        if getattr(model, "compiled", False) and isinstance(live, dict):
            return {k: live.get(k) for k in _COMPILED}
        compile_config = model.get_compile_config() if getattr(model, "compiled", False) else {}
    config = {k: v for k, v in (compile_config or {}).items() if k in _COMPILED}
    try:
        return keras.saving.deserialize_keras_object(config) if config else {}
    except Exception as error:  # pylint: disable=broad-except  (an unregistered custom loss or metric: one line)
        raise TaskError(f"the model's compiled loss or metrics cannot be rebuilt ({' '.join(str(error).split())[:200]}): "
                        "import the module that defines them (--custom_objects) or give loss= and metrics=") from None


def _per_output(value, keys, what) -> list:
    """A compile argument as one entry per output (a single one applies to every output)."""
    if isinstance(value, dict):
        unknown = sorted(set(value) - set(keys))
        if unknown:
            raise TaskError(f"{what} names outputs the model does not have: {unknown}; its outputs are {keys}")
        return [value.get(key) for key in keys]
    if isinstance(value, (list, tuple)):
        if len(value) != len(keys):
            raise TaskError(f"{what} has {len(value)} entries for the model's {len(keys)} outputs ({keys})")
        return list(value)
    return [value] * len(keys)


def _check_metric(identifier) -> None:
    if isinstance(identifier, str) and identifier.lower() not in ("accuracy", "acc"):
        try:
            keras.metrics.get(identifier)
        except ValueError:
            raise TaskError(f"Keras knows no metric {identifier!r}: give a metric name Keras knows "
                            "(keras.metrics.get) or a metric object") from None


def _output(key, shape, activation, spec, identifier, weight) -> Output:
    """One output's kind, losses and distillation rule."""
    target = np.zeros((1,) + tuple(d or 1 for d in spec.shape[1:]), keras.backend.standardize_dtype(spec.dtype))
    prediction = np.zeros((1,) + tuple(d or 1 for d in shape), "float32")
    loss = None
    if identifier is not None:
        try:
            loss = compile_utils.get_loss(identifier, target, prediction)
        except ValueError:
            raise TaskError(f"Keras knows no loss {identifier!r} (output {key!r}): give a loss name Keras knows "
                            "(keras.losses.get) or a loss object") from None
    reads = _cross_entropy_activation(loss)
    kind = ("classes" if activation == "softmax" or reads == "softmax" else
            "binary" if activation == "sigmoid" or reads == "sigmoid" else "values")
    if kind == "classes" and (shape[-1] or 0) < 2:
        raise TaskError(f"output {key!r} has one unit, so it holds no class scores to distil "
                        f"({'a softmax' if activation == 'softmax' else 'a categorical cross-entropy'} over one value): "
                        "give it a sigmoid or a binary cross-entropy")
    logit_loss = _on_logits(loss, activation, reads)
    options = getattr(logit_loss, "_fn_kwargs", {})
    exact_sparse = (getattr(logit_loss, "fn", None) is keras.losses.sparse_categorical_crossentropy
                    and type(logit_loss) in (keras.losses.SparseCategoricalCrossentropy, LossFunctionWrapper)  # pylint: disable=unidiomatic-typecheck
                    and logit_loss.reduction == "sum_over_batch_size" and options.get("from_logits")
                    and options.get("ignore_class") is None and options.get("axis", -1) == -1)
    probabilities = (reads is not None and activation is None
                     and not getattr(loss, "_fn_kwargs", {}).get("from_logits", False))
    return Output(key, tuple(shape), activation, kind, loss, logit_loss, weight, exact_sparse,
                  distill_with_loss=kind == "values" and _is_regression(loss), probabilities=probabilities)


def _cross_entropy_activation(loss) -> Optional[str]:
    """"softmax" or "sigmoid" for a cross-entropy (the activation whose probabilities it compares), else None."""
    if loss is None:
        return None
    for kind, activation in _CROSS_ENTROPY_CLASSES.items():
        if type(loss) is kind:  # pylint: disable=unidiomatic-typecheck  (a subclass may compute something else)
            return activation
    if type(loss) is LossFunctionWrapper:  # pylint: disable=unidiomatic-typecheck
        return _CROSS_ENTROPY_FUNCTIONS.get(loss.fn)
    return None


def _is_regression(loss) -> bool:
    if loss is None:
        return False
    if isinstance(loss, _REGRESSION_CLASSES):
        return True
    return type(loss) is LossFunctionWrapper and loss.fn in _REGRESSION_FUNCTIONS  # pylint: disable=unidiomatic-typecheck


def _on_logits(loss, activation, reads) -> Optional[keras.losses.Loss]:
    """The user's loss of the user's output, as a loss of the logits.

    A cross-entropy whose probabilities are made by the activation taken off
    reads the logits instead (`from_logits=True`: the same function, stable);
    any other loss reads the activated output.
    """
    if loss is None:
        return None
    if reads is not None and activation == reads and not getattr(loss, "_fn_kwargs", {}).get("from_logits", False):
        if type(loss) is LossFunctionWrapper:  # pylint: disable=unidiomatic-typecheck
            kwargs = {**loss._fn_kwargs, "from_logits": True}  # pylint: disable=protected-access
            return LossFunctionWrapper(loss.fn, reduction=loss.reduction, name=loss.name, **kwargs)
        return type(loss).from_config({**loss.get_config(), "from_logits": True})
    return loss if activation is None else _Activated(loss, activation)


class _Activated(keras.losses.Loss):
    """A loss of an activated output, computed from the logits (the activation applied first)."""

    def __init__(self, loss, activation):
        super().__init__(name=loss.name, reduction=loss.reduction)
        self.loss, self.activation = loss, activation

    def call(self, y_true, y_pred):
        return self.loss.call(y_true, _activate(self.activation, y_pred))


def _activate(activation, logits):
    if activation == "softmax":
        return tf.nn.softmax(logits, axis=-1)
    if activation == "sigmoid":
        return tf.sigmoid(logits)
    return logits


def _logits_of(kind: str, probabilities):
    """Logits of probabilities: log p for a softmax's (softmax(log p) = p), log(p / (1 - p)) for a sigmoid's;
    clipped as Keras' cross-entropies clip them."""
    p = tf.clip_by_value(probabilities, keras.backend.epsilon(), 1.0 - keras.backend.epsilon())
    return tf.math.log(p) if kind == "classes" else tf.math.log(p) - tf.math.log(1.0 - p)


def binary_distillation_loss(logits, teacher_logits, temperature: float):
    """Element-wise T^2 * KL(Bernoulli(sigmoid(teacher / T)) || Bernoulli(sigmoid(student / T))).

    The Hinton form of `losses.distillation_loss` for an output of independent
    probabilities: each element is a two-class distribution.
    """
    t, z = teacher_logits / temperature, logits / temperature
    p = tf.sigmoid(t)
    kl = p * (tf.math.log_sigmoid(t) - tf.math.log_sigmoid(z)) + (1.0 - p) * (
        tf.math.log_sigmoid(-t) - tf.math.log_sigmoid(-z))
    return temperature**2 * kl


def _mean_per_example(values):
    """The mean over every axis but the batch (a per-position map becomes one value per example)."""
    return tf.reduce_mean(tf.reshape(values, [tf.shape(values)[0], -1]), axis=-1)


def _global_batch(tensor):
    return tf.shape(tensor)[0] * tf.distribute.get_strategy().num_replicas_in_sync


def _direction(metric) -> Optional[bool]:
    """True when a higher value is better, False when lower, None when the metric does not say.

    Keras' built-in metrics record it (`_direction`, what its callbacks' "auto"
    mode reads); a metric wrapping one of Keras' loss functions is an error,
    lower is better.
    """
    direction = getattr(metric, "_direction", None)
    if direction in ("up", "down"):
        return direction == "up"
    fn = getattr(metric, "_fn", None)
    if fn is not None and fn in vars(keras.losses).values():
        return False
    return None


def default_target_spec():
    """The targets of hsd_tf's own datasets: one class index per image."""
    return tf.TensorSpec((None,), tf.int32)
