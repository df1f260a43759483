"""Shared fixtures: tiny architectures of each topology, small enough for CPU tests."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

# Two logical CPUs, so MirroredStrategy can be tested on one machine. Must run
# before TensorFlow initialises its devices.
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0],
    [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()],
)

import keras  # noqa: E402

from hsd_tf.architectures import conv_unit  # noqa: E402

INPUT_SHAPE = (8, 8, 3)
NUM_CLASSES = 4


def _model(name, build) -> keras.Model:
    images = keras.Input(INPUT_SHAPE, name="images")
    return keras.Model(images, build(images), name=name)


def tiny_chain() -> keras.Model:
    """Plain chain: stem, two prunable convs, a pool, flatten, two dense layers."""
    def build(x):
        x = conv_unit(x, "stem", 4, kernel=3)
        x = conv_unit(x, "conv_a", 6, kernel=3)
        x = keras.layers.MaxPooling2D(2, 2, name="pool")(x)
        x = conv_unit(x, "conv_b", 5, kernel=3)
        x = keras.layers.Flatten(name="flatten")(x)
        x = keras.layers.Dense(8, activation="relu", name="fc1")(x)
        return keras.layers.Dense(NUM_CLASSES, name="predictions")(x)
    return _model("chain", build)


def tiny_residual() -> keras.Model:
    """Residual block with a projection shortcut, then one with an identity shortcut."""
    def build(x):
        stem = conv_unit(x, "stem", 4, kernel=3, strides=2, pad=1)
        shortcut = conv_unit(stem, "b1_0", 8, relu=False)
        y = conv_unit(stem, "b1_1", 3)
        y = conv_unit(y, "b1_2", 3, kernel=3)
        y = conv_unit(y, "b1_3", 8, relu=False)
        b1 = keras.layers.ReLU(name="b1_out")(keras.layers.Add(name="b1_add")([shortcut, y]))
        y = conv_unit(b1, "b2_1", 4)
        y = conv_unit(y, "b2_3", 8, relu=False)
        b2 = keras.layers.ReLU(name="b2_out")(keras.layers.Add(name="b2_add")([b1, y]))
        return keras.layers.Dense(NUM_CLASSES, name="predictions")(keras.layers.GlobalAveragePooling2D(name="gap")(b2))
    return _model("residual", build)


def tiny_depthwise() -> keras.Model:
    """MobileNet pattern: depthwise convs follow their input's mask."""
    def build(x):
        x = conv_unit(x, "stem", 4, kernel=3)
        x = conv_unit(x, "dw_1", None, kernel=3, depthwise=True)
        x = conv_unit(x, "pw_1", 6)
        x = conv_unit(x, "dw_2", None, kernel=3, strides=2, depthwise=True)
        x = conv_unit(x, "pw_2", 7)
        return keras.layers.Dense(NUM_CLASSES, name="predictions")(keras.layers.GlobalAveragePooling2D(name="gap")(x))
    return _model("depthwise", build)


def tiny_identity() -> keras.Model:
    """A residual add with an identity shortcut: the block input is already in the add's group."""
    def build(x):
        x = conv_unit(x, "stem", 4, kernel=3)
        c0 = conv_unit(x, "c0", 6, kernel=3, strides=2)
        y = conv_unit(c0, "b_1", 5, kernel=3)
        y = conv_unit(y, "b_3", 6, relu=False)
        y = keras.layers.ReLU(name="b_out")(keras.layers.Add(name="b_add")([c0, y]))
        return keras.layers.Dense(NUM_CLASSES, name="predictions")(keras.layers.GlobalAveragePooling2D(name="gap")(y))
    return _model("identity", build)


def tiny_projection() -> keras.Model:
    """A residual add whose shortcut is a strided 1x1 projection conv of the unmasked stem."""
    def build(x):
        x = conv_unit(x, "stem", 4, kernel=3)
        shortcut = conv_unit(x, "b_0", 7, strides=2, relu=False)
        y = conv_unit(x, "b_1", 3, strides=2)
        y = conv_unit(y, "b_3", 7, kernel=3, relu=False)
        y = keras.layers.ReLU(name="b_out")(keras.layers.Add(name="b_add")([shortcut, y]))
        return keras.layers.Dense(NUM_CLASSES, name="predictions")(keras.layers.Flatten(name="flatten")(y))
    return _model("projection", build)


TOPOLOGIES = {
    "chain": tiny_chain,
    "identity": tiny_identity,
    "projection": tiny_projection,
    "depthwise": tiny_depthwise,
    "residual": tiny_residual,  # projection then identity, as in a ResNet stage
}


def kernel_params(model) -> int:
    """Conv and dense kernel weights of a Keras model, counted from the layers themselves."""
    import keras  # pylint: disable=import-outside-toplevel

    kernels = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)
    return sum(int(np.prod(layer.kernel.shape)) for layer in model.layers if isinstance(layer, kernels))


@pytest.fixture
def batch():
    rng = np.random.RandomState(0)
    images = rng.normal(size=(6,) + INPUT_SHAPE).astype("float32")
    labels = rng.randint(0, NUM_CLASSES, size=6).astype("int32")
    return images, labels
