"""The networks to prune, as plain Keras models: the three built-in families, Keras applications, saved models.

`get` resolves `--arch`:
  vgg16, resnet50, mobilenet_v1           built here, at any `width_multiplier`
  keras.applications.NAME                 `keras.applications.NAME(weights=None)` for the
                                          dataset's input shape and classes, BatchNorm
                                          momentum 0.9 as the built-in families
  PATH.keras                              the user's saved functional or Sequential model

Every model is then traced (`hsd_tf.graph`) the same way: the built-in
families are ordinary Keras models, with the Keras applications layer names
(`conv2_block1_1_conv`, `conv2_block1_1_bn`, ...) so weights move between them by name.
The cascade trains on logits: a final softmax or sigmoid is taken off for training and put back on the exported
student (`without_final_activations`).
"""

import functools
import json
import os
import re
import zipfile
from typing import Optional, Sequence

import keras
import tensorflow as tf

from hsd_tf import flatten as flatten_lib
from hsd_tf import user_code

APPLICATIONS_PREFIX = "keras.applications."


def _scaled(width: int, width_multiplier: float) -> int:
    return max(1, int(round(width * width_multiplier)))


def conv_unit(x, name: str, filters: Optional[int], kernel: int = 1, strides: int = 1, pad: Optional[int] = None,
              relu: bool = True, depthwise: bool = False, bn_epsilon: float = 1e-5):
    """[ZeroPadding2D] conv -> BatchNormalization -> [ReLU], named as Keras applications name them.

    Args:
        x: Input tensor.
        name: The conv's name; "<base>_conv" gives "<base>_bn", "<base>_relu", "<base>_pad".
        filters: Output filters (ignored by a depthwise conv).
        kernel: Kernel size.
        strides: Stride.
        pad: None for "same" padding, else explicit zero padding then a "valid" conv.
        relu: Whether a ReLU follows.
        depthwise: A depthwise conv instead of a full one.
        bn_epsilon: BatchNormalization epsilon.

    Returns:
        The unit's output.
    """
    base = name[: -len("_conv")] if name.endswith("_conv") else name
    if pad:
        x = keras.layers.ZeroPadding2D(pad, name=f"{base}_pad")(x)
    padding = "same" if pad is None else "valid"
    if depthwise:
        x = keras.layers.DepthwiseConv2D(kernel, strides, padding=padding, use_bias=False, name=name)(x)
    else:
        x = keras.layers.Conv2D(filters, kernel, strides, padding=padding, use_bias=False, name=name)(x)
    # PyTorch's momentum: the paper's recipes and short runs need moving
    # statistics that follow the weights within an epoch. Synchronized
    # across replicas, so N replicas train exactly like one device on the
    # global batch; only then, as it slows a single device down 2-3x.
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    x = keras.layers.BatchNormalization(momentum=0.9, epsilon=bn_epsilon, synchronized=replicas > 1,
                                        name=f"{base}_bn")(x)
    return keras.layers.ReLU(name=f"{base}_relu")(x) if relu else x


VGG16_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def vgg16(input_shape: Sequence[int] = (32, 32, 3), num_classes: int = 10,
          width_multiplier: float = 1.0) -> keras.Model:
    """The CIFAR VGG16: 13 conv3x3+BN+ReLU, five max-pools, dense 512, dense classes.

    At 32x32 and width 1 it has 14.98M params and 313M MACs (docs/method.md section 6).

    Args:
        input_shape: (height, width, channels).
        num_classes: Classifier outputs.
        width_multiplier: Scales every conv width and the hidden dense layer.

    Returns:
        The model, from images to logits.
    """
    inputs = keras.Input(tuple(input_shape), name="images")
    x, block, index = inputs, 1, 1
    for item in VGG16_CONFIG:
        if item == "M":
            x = keras.layers.MaxPooling2D(2, 2, name=f"block{block}_pool")(x)
            block, index = block + 1, 1
            continue
        x = conv_unit(x, f"block{block}_conv{index}", _scaled(item, width_multiplier), kernel=3)
        index += 1
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(_scaled(512, width_multiplier), activation="relu", name="fc1")(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes, name="predictions")(x), name="vgg16")


RESNET50_STAGES = (("conv2", 64, 3, 1), ("conv3", 128, 4, 2), ("conv4", 256, 6, 2), ("conv5", 512, 3, 2))


def resnet50(input_shape: Sequence[int] = (224, 224, 3), num_classes: int = 1000,
             width_multiplier: float = 1.0) -> keras.Model:
    """ResNet50 v1 in the Keras applications layout (stride on the first 1x1), convs without biases.

    Layer names follow `keras.applications.ResNet50`, so its ImageNet weights
    load by name (`hsd_tf.teacher.from_keras_resnet50`). At 224x224 and width 1:
    25.5M params, 3.86B MACs.

    Args:
        input_shape: (height, width, channels).
        num_classes: Classifier outputs.
        width_multiplier: Scales every conv width.

    Returns:
        The model, from images to logits.
    """
    inputs = keras.Input(tuple(input_shape), name="images")
    unit = functools.partial(conv_unit, bn_epsilon=1.001e-5)
    x = unit(inputs, "conv1_conv", _scaled(64, width_multiplier), kernel=7, strides=2, pad=3)
    x = keras.layers.ZeroPadding2D(1, name="pool1_pad")(x)
    x = keras.layers.MaxPooling2D(3, 2, name="pool1_pool")(x)
    for stage, width, blocks, stride in RESNET50_STAGES:
        inner, outer = _scaled(width, width_multiplier), _scaled(4 * width, width_multiplier)
        for b in range(1, blocks + 1):
            prefix = f"{stage}_block{b}"
            block_stride = stride if b == 1 else 1
            shortcut = x
            if b == 1:
                shortcut = unit(x, f"{prefix}_0_conv", outer, strides=block_stride, relu=False)
            y = unit(x, f"{prefix}_1_conv", inner, strides=block_stride)
            y = unit(y, f"{prefix}_2_conv", inner, kernel=3)
            y = unit(y, f"{prefix}_3_conv", outer, relu=False)
            x = keras.layers.Add(name=f"{prefix}_add")([shortcut, y])
            x = keras.layers.ReLU(name=f"{prefix}_out")(x)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes, name="predictions")(x), name="resnet50")


MOBILENET_V1_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
                       (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))


def mobilenet_v1(input_shape: Sequence[int] = (32, 32, 3), num_classes: int = 100,
                 width_multiplier: float = 1.0) -> keras.Model:
    """MobileNetV1 with Keras applications names.

    The CIFAR variant (inputs under 128 pixels) uses stride 1 in the stem so a
    32x32 image is not reduced to 1x1 before the last blocks.

    Args:
        input_shape: (height, width, channels).
        num_classes: Classifier outputs.
        width_multiplier: Scales every conv width (MobileNet's alpha).

    Returns:
        The model, from images to logits.
    """
    inputs = keras.Input(tuple(input_shape), name="images")
    stem_stride = 1 if min(input_shape[:2]) < 128 else 2
    x = conv_unit(inputs, "conv1", _scaled(32, width_multiplier), kernel=3, strides=stem_stride)
    for i, (width, stride) in enumerate(MOBILENET_V1_BLOCKS, start=1):
        x = conv_unit(x, f"conv_dw_{i}", None, kernel=3, strides=stride, depthwise=True)
        x = conv_unit(x, f"conv_pw_{i}", _scaled(width, width_multiplier))
    x = keras.layers.GlobalAveragePooling2D(name="global_average_pooling2d")(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes, name="predictions")(x), name="mobilenet_v1")


ARCHITECTURES = {"vgg16": vgg16, "resnet50": resnet50, "mobilenet_v1": mobilenet_v1}


def check_name(name: str) -> None:
    """Raises ValueError unless `name` is a value `get` can resolve (without building anything)."""
    if name in ARCHITECTURES:
        return
    if name.startswith(APPLICATIONS_PREFIX):
        if not callable(getattr(keras.applications, name[len(APPLICATIONS_PREFIX):], None)):
            raise ValueError(f"keras.applications has no model {name[len(APPLICATIONS_PREFIX):]!r}. "
                             f"Received: arch={name!r}")
        return
    if name.endswith(".keras"):
        if not os.path.isfile(name):
            raise ValueError(f"No saved model at this path. Received: arch={name!r}")
        return
    raise ValueError(f"Unknown arch; expected one of {sorted(ARCHITECTURES)}, keras.applications.NAME or a "
                     f"PATH.keras saved model. Received: arch={name!r}")


def get(name: str, input_shape, num_classes: Optional[int], width_multiplier: float = 1.0) -> keras.Model:
    """Builds (or loads) the full-width model of `--arch`.

    Args:
        name: A built-in family, `keras.applications.NAME` or a `.keras` path.
        input_shape: (height, width, channels) of the dataset (one shape per input, for a dataset of several).
        num_classes: The dataset's classes; None for a dataset of any targets (`--dataset=py:`), which takes a
            saved model.
        width_multiplier: Scales the built-in families' widths; must be 1 otherwise.

    Returns:
        A functional or Sequential `keras.Model` from images to logits.

    Raises:
        ValueError: The name, the width multiplier, or a model that does not fit
            the dataset; the message echoes what was received.
    """
    check_name(name)
    if not width_multiplier > 0:
        raise ValueError(f"width_multiplier must be positive. Received: width_multiplier={width_multiplier}")
    if num_classes is None and not name.endswith(".keras"):
        raise ValueError("a dataset of any targets (--dataset=py:) is pruned with your own model, a .keras file; "
                         f"the built-in and keras.applications models are image classifiers. Received: arch={name!r}")
    if name in ARCHITECTURES:
        return ARCHITECTURES[name](tuple(input_shape), num_classes, width_multiplier)
    if width_multiplier != 1.0:
        raise ValueError(f"width_multiplier applies to the built-in architectures {sorted(ARCHITECTURES)} only. "
                         f"Received: width_multiplier={width_multiplier} with arch={name!r}")
    if name.startswith(APPLICATIONS_PREFIX):
        application = getattr(keras.applications, name[len(APPLICATIONS_PREFIX):])
        try:
            model = application(weights=None, input_shape=tuple(input_shape), classes=num_classes,
                                classifier_activation=None)
        except ValueError as error:  # Keras refuses inputs below each model's minimum size
            raise ValueError(f"{name} cannot be built for input shape {tuple(input_shape)}: "
                             f"{str(error).splitlines()[0]} Received: arch={name!r}") from None
        # Trained from scratch here, like the built-in families: their BatchNorm momentum (see conv_unit).
        # Keras' 0.99 or 0.999 leaves a short run's moving statistics far from the weights' (a MobileNetV2
        # teacher after 4 digits epochs: 9.7% in inference mode).
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = 0.9
        return model
    return check_fits(load_saved(name), input_shape, num_classes, name)


class MissingCustomObjectError(ValueError):
    """A `.keras` file uses a class that is not imported; the message names it and the `--custom_objects` to pass."""


def load_saved(path: str) -> keras.Model:
    """Loads a `.keras` model.

    Raises:
        MissingCustomObjectError: A custom class is not imported (one line naming it).
        ValueError: The file cannot be loaded otherwise (one line).
    """
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as error:  # pylint: disable=broad-except  (a truncated zip, a missing class: one line)
        text = " ".join(str(error).split())
        missing = re.search(r"Could not locate (?:class|function) '([\w.>]+)'", text)
        if not missing:
            raise ValueError(f"{path} cannot be loaded ({text[:200]})") from None
        module = re.search(r"'module': '([\w.]+)', 'class_name': '" + re.escape(missing.group(1)) + "'", text)
        where = module.group(1) if module else "the module that defines it"
        raise MissingCustomObjectError(f"{path} uses the class {missing.group(1)!r}, which is not imported: pass "
                         f"--custom_objects={where} (a module, or the .py file that defines it)") from None


def input_shape_of(name: str):
    """The input shape (no batch axis) of a saved `.keras` model named by `--arch`; None for the built ones."""
    if not name.endswith(".keras"):
        return None
    shape = _input_shape_in_config(name)
    if shape is not None:
        return shape
    model = load_saved(name)
    return tuple(model.inputs[0].shape[1:]) if getattr(model, "inputs", None) else None


def _input_shape_in_config(path: str):
    """The one input's shape as a functional or Sequential `.keras` file's config.json records it, read without
    loading the model (large files load in seconds, and the run loads it anyway); None where it is not that
    plain: the model is loaded to find it."""
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    if config.get("class_name") not in ("Functional", "Sequential"):
        return None
    inputs = [layer for layer in config.get("config", {}).get("layers", []) if layer.get("class_name") == "InputLayer"]
    shape = inputs[0].get("config", {}).get("batch_shape") if len(inputs) == 1 else None
    return tuple(shape[1:]) if shape else None


def compile_config(path: str) -> Optional[dict]:
    """What a `.keras` file's model was compiled with (its loss, loss weights and metrics, serialized), read
    without loading the model; None for a model saved uncompiled."""
    try:
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read("config.json")).get("compile_config") or None
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None


def import_custom_objects(modules: Sequence[str]) -> None:
    """Imports the modules (or .py files) of `--custom_objects`, and registers every Keras layer class they define,
    so that a `.keras` file using them loads.

    Raises:
        ValueError: A module that cannot be imported, naming it and why.
    """
    for module in modules:
        try:
            loaded = user_code.import_module(module)
        except Exception as error:  # pylint: disable=broad-except  (the user's code: any failure is one line)
            raise ValueError(f"{module} cannot be imported ({type(error).__name__}: "
                             f"{' '.join(str(error).split())[:200]})") from None
        keras.saving.get_custom_objects().update(
            {name: value for name, value in vars(loaded).items()
             if isinstance(value, type) and issubclass(value, keras.layers.Layer)})


def check_fits(model: keras.Model, input_shape, num_classes: Optional[int], name: str) -> keras.Model:
    """Returns `model` if it reads inputs of `input_shape` and, for a dataset of `num_classes` classes (None: a
    dataset of any targets, checked against the model's task), has one output of as many class scores; else
    raises ValueError."""
    inputs = getattr(model, "inputs", None) or [None]
    if num_classes is not None and len(inputs) != 1:
        shapes = ", ".join(str(tuple(x.shape[1:])) for x in inputs)
        raise ValueError(f"The dataset gives one image per example; the model takes {len(inputs)} inputs ({shapes}): "
                         f"a model of several inputs takes --dataset=py:FILE.py. Received: arch={name!r}")
    for x, shape in zip(inputs, flatten_lib.per_input(input_shape, len(inputs))):
        expected = tuple(x.shape[1:]) if x is not None else None
        if shape is None:
            continue
        if expected is None or len(expected) != len(shape) or any(
                e is not None and e != d for e, d in zip(expected, shape)):
            raise ValueError(f"The model reads inputs of shape {expected}, the dataset's inputs have shape "
                             f"{tuple(shape)}. Received: arch={name!r}")
    if num_classes is None:
        return model
    if len(model.outputs) != 1 or len(model.outputs[0].shape) != 2:
        shapes = ", ".join(str(tuple(x.shape[1:])) for x in model.outputs)
        raise ValueError(f"The dataset is an image classification one; the model gives {shapes}, not one score per "
                         f"class (a model of another task takes --dataset=py:FILE.py). Received: arch={name!r}")
    outputs = model.outputs[0].shape[-1]
    if outputs != num_classes:
        raise ValueError(f"The model has {outputs} outputs, the dataset {num_classes} classes. "
                         f"Received: arch={name!r}")
    return model


def without_final_activations(model: keras.Model):
    """`model` with the softmax or sigmoid that ends each output taken off, and what was taken off.

    The cascade's losses work on logits (`hsd_tf.task`); the exported student
    gets the activations back (`hsd_tf.slimming.with_final_activations`). A
    softmax over another axis than the last, or a subclassed model (its layers
    are no graph to edit), is left as it is.

    Returns:
        (the model, or a model sharing its layers, the last ones without their activation; one of "softmax",
        "sigmoid" or None per output).
    """
    if not isinstance(model, keras.Sequential) and not hasattr(model, "_nodes_by_depth"):
        return model, [None] * len(getattr(model, "outputs", None) or [None])
    ends = [_final_activation(t._keras_history.operation) for t in model.outputs]  # pylint: disable=protected-access
    if not any(ends):
        return model, ends
    built_in = {id(t._keras_history.operation) for t, end in zip(model.outputs, ends)  # pylint: disable=protected-access
                if end and not isinstance(t._keras_history.operation, (keras.layers.Softmax, keras.layers.Activation))}  # pylint: disable=protected-access
    if built_in:  # a layer whose own activation ends the model (Dense(..., activation="softmax")): a copy without it
        copies = {}

        def clone(layer):  # every other layer shared as it is (a Lambda's function need not be rebuilt)
            if id(layer) not in built_in:
                return layer
            copies[id(layer)] = (layer, layer.__class__.from_config({**layer.get_config(), "activation": None}))
            return copies[id(layer)][1]

        # Cloned from an uncompiled model of the same graph: Keras compiles a clone of a compiled model again, which
        # fails for a loss or metric function it cannot deserialize (a user's own, unregistered).
        model = keras.models.clone_model(keras.Model(model.inputs, model.outputs, name=model.name),
                                         clone_function=clone)
        for original, copy in copies.values():
            flatten_lib.set_weights(copy, original.get_weights())
    # An activation layer ends an output: the output is its input, the logits (the layers are shared, not trained).
    def logits(tensor):
        history = tensor._keras_history  # pylint: disable=protected-access
        return history.operation._inbound_nodes[history.node_index].input_tensors[0]  # pylint: disable=protected-access

    outputs = [logits(t) if end and isinstance(t._keras_history.operation,  # pylint: disable=protected-access
                                               (keras.layers.Softmax, keras.layers.Activation))
               else t for t, end in zip(model.outputs, ends)]
    structure = getattr(model, "_outputs_struct", None)
    if isinstance(structure, dict):
        outputs = dict(zip(sorted(structure), outputs))
    elif len(outputs) == 1:
        outputs = outputs[0]
    return keras.Model(model.inputs if len(model.inputs) > 1 else model.inputs[0], outputs, name=model.name), ends


def _final_activation(layer) -> Optional[str]:
    """"softmax" or "sigmoid" where `layer` ends with one over the last axis, else None."""
    if isinstance(layer, keras.layers.Softmax):
        return "softmax" if layer.axis in (-1, [-1], (-1,)) else None
    activation = getattr(layer, "activation", None)
    for name in ("softmax", "sigmoid"):
        if activation is keras.activations.get(name):
            return name
    return None
