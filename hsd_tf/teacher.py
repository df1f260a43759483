"""The pre-trained teacher: load one, import Keras' ImageNet ResNet50, or train one."""

import os
from typing import Optional

import h5py
import keras
import numpy as np
from keras.src.utils import naming

from hsd_tf import architectures, flatten, graph


def load(path: str, model: keras.Model, source: Optional[keras.Model] = None) -> keras.Model:
    """Gives `model` the weights of a saved teacher.

    Args:
        path: A `.keras` model of the same structure (matched by layer name),
            or a `.weights.h5` file of a model built like `model`.
        model: The dense model of `--arch` (`architectures.get`).
        source: The `.keras` model at `path`, if already loaded (`check`).

    Returns:
        `model`, with the file's weights.
    """
    if path.endswith(".weights.h5"):
        model.load_weights(path)
        return model
    source = graph.layers_by_name(source or architectures.load_saved(path))
    for name, layer in graph.layers_by_name(model).items():
        if layer.weights:
            flatten.set_weights(layer, source[name].get_weights())
    return model


_ANOTHER_RUN = "(a teacher of another --arch, --width_multiplier or dataset?)"


def check(path: str, model: keras.Model) -> Optional[keras.Model]:
    """Checks, before any training, that a teacher file fits `model`.

    Args:
        path: `--teacher`: a `.keras` model or a `.weights.h5` file.
        model: The dense model of `--arch` it must fit.

    Returns:
        The `.keras` model read (for `load`, which then reads nothing), or None for a weights file.

    Raises:
        ValueError: The file is missing, unreadable (not HDF5 or .keras,
            truncated), or lacks a layer of `model` or holds weights of other
            shapes; the message names the first such layer with the expected
            and found shapes.
    """
    if not os.path.isfile(path):
        raise ValueError("file not found")
    if path.endswith(".weights.h5"):
        found = _h5_shapes(path)
        for key, layer in _weights_file_keys(model):
            for i, weight in enumerate(layer.weights):
                shape = found.get(f"{key}/vars/{i}")
                if shape is None:
                    raise ValueError(f"holds no weights for layer {layer.name!r} (a teacher of another --arch?)")
                if shape != tuple(weight.shape):
                    raise ValueError(f"layer {layer.name!r}: expected a {weight.name} of shape {tuple(weight.shape)} "
                                     f"for --arch, found {shape} {_ANOTHER_RUN}")
        return None
    if not path.endswith(".keras"):
        raise ValueError("expected a .keras model or a .weights.h5 file")
    try:
        loaded = architectures.load_saved(path)
    except architectures.MissingCustomObjectError:
        raise
    except ValueError as error:
        raise ValueError(f"cannot be read as a .keras model ({str(error)[:200]})") from None
    source = graph.layers_by_name(loaded)
    for name, layer in graph.layers_by_name(model).items():
        if not layer.weights:
            continue
        if name not in source:
            raise ValueError(f"has no layer {name!r} (a teacher of another --arch?)")
        expected = [tuple(w.shape) for w in layer.weights]
        found = [tuple(w.shape) for w in source[name].weights]
        if expected != found:
            raise ValueError(f"layer {name!r}: expected weight shapes {expected} for --arch, found {found} "
                             f"{_ANOTHER_RUN}")
    return loaded


def _weights_file_keys(model: keras.Model, prefix: str = "layers"):
    """(key in a `.weights.h5` file, layer) of every layer with weights, in the model's order.

    Keras keys a layer by its class, not its name: the n-th Conv2D of a model
    is `layers/conv2d_<n-1>` (`keras.src.saving.saving_lib`).
    """
    used = {}
    for layer in model.layers:
        base = naming.to_snake_case(layer.__class__.__name__)
        key = f"{prefix}/{base}" if base not in used else f"{prefix}/{base}_{used[base] + 1}"
        used[base] = used.get(base, -1) + 1
        if isinstance(layer, keras.Model):
            yield from _weights_file_keys(layer, f"{key}/layers")
        elif layer.weights:
            yield key, layer


def _h5_shapes(path: str) -> dict:
    """Dataset path -> shape of every array in an HDF5 weights file."""
    shapes = {}
    try:
        with h5py.File(path, "r") as f:
            f.visititems(lambda key, item: shapes.__setitem__(key, tuple(item.shape))
                         if isinstance(item, h5py.Dataset) else None)
    except OSError as error:
        raise ValueError(f"cannot be read as an HDF5 weights file ({' '.join(str(error).split())[:200]})") from None
    return shapes


def from_keras_resnet50(model: keras.Model, source: keras.Model = None) -> keras.Model:
    """Gives our resnet50 the weights of the Keras applications ResNet50.

    Keras' convs carry biases; ours do not, since BatchNorm follows. A bias b
    before BN is the same as subtracting b from BN's moving mean, so the
    imported network computes the same function at inference.

    Args:
        model: `architectures.resnet50` at width 1.
        source: The Keras model; default downloads the ImageNet weights.

    Returns:
        `model`, with the source's weights.
    """
    if source is None:
        source = keras.applications.ResNet50(weights="imagenet", input_shape=model.inputs[0].shape[1:])
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kernel, bias = source.get_layer(layer.name).get_weights()
            layer.set_weights([kernel])
            bn_name = layer.name[: -len("_conv")] + "_bn"
            gamma, beta, mean, variance = source.get_layer(bn_name).get_weights()
            model.get_layer(bn_name).set_weights([gamma, beta, mean - bias, variance])
        elif isinstance(layer, keras.layers.Dense):
            layer.set_weights(source.get_layer(layer.name).get_weights())
    return model


def compiled_for_training(model: keras.Model, data, config, task=None) -> keras.Model:
    """Compiles a model for training from its current weights with the task's own loss.

    SGD with Nesterov momentum and weight decay, cosine learning rate from
    `config.teacher_learning_rate` to 0 over `config.teacher_epochs`.

    Args:
        model: The dense model (logits out).
        data: `hsd_tf.data.Data`.
        config: `hsd_tf.config.Config`.
        task: The model's `hsd_tf.task.Task`: its loss on logits, weighted as compiled. Default, and for a
            classifier: cross-entropy on logits, with accuracy shown while it trains.

    Returns:
        `model`, compiled.
    """
    schedule = keras.optimizers.schedules.CosineDecay(
        config.teacher_learning_rate, config.teacher_epochs * data.steps_per_epoch
    )
    optimizer = keras.optimizers.SGD(schedule, momentum=config.momentum, nesterov=True,
                                     weight_decay=config.weight_decay)
    if task is None or task.default_classifier:
        model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=[keras.metrics.SparseCategoricalAccuracy(name="acc")])
    else:  # the compiled metrics read activated outputs, not these logits: the run measures them itself
        model.compile(optimizer=optimizer, loss=task.keras_losses(), loss_weights=task.loss_weights())
    return model


def accuracy(model: keras.Model, dataset) -> float:
    """Top-1 accuracy of a logits model over a dataset."""
    correct = total = 0
    for images, labels in dataset:
        predictions = np.argmax(model(images, training=False), axis=-1)
        correct += int(np.sum(predictions == labels.numpy()))
        total += len(predictions)
    return correct / total


def near_chance_warning(val_accuracy: float, num_classes: int) -> Optional[str]:
    """A warning when the teacher scores under twice chance on the validation split (with few classes, under a
    quarter of the way from chance to perfect: twice chance is perfect for two), else None.

    The cascade starts from the teacher's weights and its top view distils
    from it; a user whose model is broken in inference mode should hear so
    before hours of training, not from the final table.

    Args:
        val_accuracy: The teacher's top-1 accuracy on the validation split.
        num_classes: The number of classes.

    Returns:
        The warning's text, or None.
    """
    chance = 1.0 / num_classes
    if val_accuracy >= min(2 * chance, chance + (1.0 - chance) / 4):
        return None
    return (f"Warning: the teacher's validation accuracy is {val_accuracy:.4f}, near chance ({chance:.4f} for "
            f"{num_classes} classes). The cascade starts from its weights and its top view learns from it. "
            "A model that scores well in training but not here was often fed otherwise when it was trained "
            "(--preprocessing: raw, unit, symmetric, caffe, torch) or has stale BatchNorm moving statistics "
            "(Keras' default momentum 0.99 needs thousands of steps): train it longer, or with momentum 0.9.")
