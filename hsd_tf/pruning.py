"""`prune`: hierarchical self-distillation on any trained Keras model, from Python.

    student, report = hsd_tf.prune(model, train=(x_train, y_train), validation=(x_val, y_val),
                                   prune_ratio=0.6, num_ta=2, model_dir="runs/mine")

The model is the pre-trained teacher: the cascade starts from its weights and
it teaches the top view. It is neither trained nor changed. The run is the
command line's (`hsd_tf.training.train_and_evaluate`): the same phases,
checkpoints, resume, TensorBoard logs and exports, in `model_dir`.
"""

import dataclasses
import os
from typing import NamedTuple, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from hsd_tf import graph
from hsd_tf import data as data_lib
from hsd_tf import training
from hsd_tf.config import Config


class PruneResult(NamedTuple):
    """What `prune` returns.

    Attributes:
        student: The slim student, a plain functional Keras model ending as the given model ends (its final
            softmax or sigmoid kept).
        report: Per view (student first) and for the teacher: the model's metrics (accuracy for a
            classifier), params, MACs, filters kept, mask changes, exports (results.json).
    """

    student: keras.Model
    report: dict


def prune(model: keras.Model, train, validation, test=None, *, prune_ratio: float = 0.6, num_ta: int = 2,
          model_dir: Optional[str] = None, unpruned_layers: Sequence[str] = (), loss=None, metrics=None,
          loss_weights=None, **settings) -> PruneResult:
    """Prunes a trained functional or Sequential Keras model with hierarchical self-distillation.

    Args:
        model: The trained model: any inputs and outputs. Its own loss and metrics are those it was compiled
            with; an uncompiled classifier (one output of class scores) is trained with cross-entropy and
            measured by accuracy.
        train: Training (inputs, targets) examples in the model's structure (one array, a list or a dict of
            inputs; a target per output): a `tf.data.Dataset`, batched or not, or an (inputs, targets) pair of
            arrays, preprocessed as the model expects. No augmentation is added.
        validation: Held-out examples of the same kind; they drive the teacher ladder.
        test: Examples the report's figures come from (default: validation).
            A keras_hub task's `preprocessor` (its image converter: resizing,
            scale, offset) is applied to all three, as the task's own `fit`
            would; the exported student expects images so converted.
        prune_ratio: Fraction of prunable filters the student removes.
        num_ta: Teaching assistants between the student and the teacher.
        model_dir: Where the run keeps its checkpoints, logs, results and
            exports; re-running with it resumes. Default: runs/<model name>.
        unpruned_layers: Layers whose channels stay whole (see `hsd_tf.graph.trace`).
        loss, metrics, loss_weights: The model's loss and metrics, as `model.compile` takes them, where the
            model was not compiled with them (or to use others). The first metric is the one the run
            optimises for (the teacher ladder, the comparison).
        **settings: Any other setting of the command line, by its flag name
            (joint_epochs, finetune_epochs, batch_size, learning_rate, export, metric_direction, ...).

    Returns:
        A `PruneResult` (student, report).

    Raises:
        hsd_tf.graph.UnsupportedLayerError: A layer the tracer cannot follow; the message names it.
        hsd_tf.task.TaskError: No loss for a model that is not a classifier, or targets that do not fit it.
        ValueError: An unknown or bad setting, or data that does not fit the model.
        hsd_tf.export.ExportError: Some file could not be written or failed verification; the student the run
            built is its `student`, and nothing else is lost.
    """
    known = {f.name for f in dataclasses.fields(Config)} - {"mode", "dataset", "arch", "teacher", "image_size",
                                                             "data_dir", "val_fraction", "max_train_examples"}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ValueError(f"Unknown settings; expected some of {sorted(known)}. Received: {unknown}")
    config = Config(dataset="custom", arch=f"python:{model.name}", prune_ratio=prune_ratio, num_ta=num_ta,
                    model_dir=model_dir or os.path.join("runs", model.name), unpruned_layers=list(unpruned_layers),
                    **settings)
    train, validation, test = (_through_preprocessor(model, examples, config.verbose and i == 0)
                               for i, examples in enumerate((train, validation, test)))
    model_inputs = getattr(model, "inputs", None)
    shapes = [tuple(x.shape[1:]) for x in model_inputs] if model_inputs else [None]
    if all(shape is not None and None not in shape for shape in shapes):
        graph.trace(model, unpruned_layers)  # an unsupported layer reported as itself, before anything runs
    outputs = getattr(model, "outputs", None) or []
    classes = int(outputs[0].shape[-1]) if len(outputs) == 1 and len(outputs[0].shape) == 2 else 0
    data = data_lib.from_datasets(train, validation, test, batch_size=config.batch_size,
                                  input_shape=shapes if len(shapes) > 1 else shapes[0], num_classes=classes,
                                  seed=config.seed, input_keys=training.input_keys(model) if model_inputs else None)
    subject = training.prepare(config, model, data, loss=loss, metrics=metrics, loss_weights=loss_weights)
    report, student = training.prune_model(config, subject)
    return PruneResult(student, report)


def _through_preprocessor(model, examples, say: bool):
    """`examples` with a keras_hub task's image converter applied to the images (unchanged for any other model)."""
    preprocessor = getattr(model, "preprocessor", None)
    if preprocessor is None or examples is None:
        return examples
    convert = getattr(preprocessor, "image_converter", None) or preprocessor
    if say:
        print(f"Applying the model's keras_hub preprocessor ({type(convert).__name__}) to the images, as its own "
              "fit would; the student expects images so converted.", flush=True)
    if isinstance(examples, (tuple, list)) and len(examples) == 2:
        examples = tf.data.Dataset.from_tensor_slices((np.asarray(examples[0]), np.asarray(examples[1]))).batch(256)
    return examples.map(lambda images, labels: (convert(images), labels))
