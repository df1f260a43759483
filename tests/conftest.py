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

from hsd_tf.architectures import Architecture, Node  # noqa: E402

INPUT_SHAPE = (8, 8, 3)
NUM_CLASSES = 4


def tiny_chain() -> Architecture:
    """Plain chain: stem, two prunable convs, a pool, flatten, two dense layers."""
    nodes = (
        Node("input", "input"),
        Node("stem", "conv", ("input",), filters=4, kernel=3),
        Node("conv_a", "conv", ("stem",), kernel=3, group="conv_a"),
        Node("pool", "maxpool", ("conv_a",), kernel=2, strides=2, pad=0),
        Node("conv_b", "conv", ("pool",), kernel=3, group="conv_b", hint=True),
        Node("flatten", "flatten", ("conv_b",)),
        Node("fc1", "dense", ("flatten",), filters=8),
        Node("predictions", "dense", ("fc1",), filters=NUM_CLASSES, relu=False),
    )
    return Architecture("chain", INPUT_SHAPE, NUM_CLASSES, nodes, (("conv_a", 6), ("conv_b", 5)))


def tiny_residual() -> Architecture:
    """Residual block with a projection shortcut, then one with an identity shortcut."""
    nodes = (
        Node("input", "input"),
        Node("stem", "conv", ("input",), filters=4, kernel=3, strides=2, pad=1),
        Node("b1_0", "conv", ("stem",), group="out", relu=False),
        Node("b1_1", "conv", ("stem",), group="b1_1"),
        Node("b1_2", "conv", ("b1_1",), kernel=3, group="b1_2"),
        Node("b1_3", "conv", ("b1_2",), group="out", relu=False),
        Node("b1_add", "add", ("b1_0", "b1_3"), hint=True),
        Node("b2_1", "conv", ("b1_add",), group="b2_1"),
        Node("b2_3", "conv", ("b2_1",), group="out", relu=False),
        Node("b2_add", "add", ("b1_add", "b2_3"), hint=True),
        Node("gap", "gap", ("b2_add",)),
        Node("predictions", "dense", ("gap",), filters=NUM_CLASSES, relu=False),
    )
    groups = (("out", 8), ("b1_1", 3), ("b1_2", 3), ("b2_1", 4))
    return Architecture("residual", INPUT_SHAPE, NUM_CLASSES, nodes, groups)


def tiny_depthwise() -> Architecture:
    """MobileNet pattern: depthwise convs follow their input's mask."""
    nodes = (
        Node("input", "input"),
        Node("stem", "conv", ("input",), filters=4, kernel=3),
        Node("dw_1", "depthwise", ("stem",), kernel=3),
        Node("pw_1", "conv", ("dw_1",), group="pw_1"),
        Node("dw_2", "depthwise", ("pw_1",), kernel=3, strides=2),
        Node("pw_2", "conv", ("dw_2",), group="pw_2", hint=True),
        Node("gap", "gap", ("pw_2",)),
        Node("predictions", "dense", ("gap",), filters=NUM_CLASSES, relu=False),
    )
    return Architecture("depthwise", INPUT_SHAPE, NUM_CLASSES, nodes, (("pw_1", 6), ("pw_2", 7)))


def tiny_identity() -> Architecture:
    """A residual add with an identity shortcut: the block input is already in the add's group."""
    nodes = (
        Node("input", "input"),
        Node("stem", "conv", ("input",), filters=4, kernel=3),
        Node("c0", "conv", ("stem",), kernel=3, strides=2, group="out"),
        Node("b_1", "conv", ("c0",), kernel=3, group="b_1"),
        Node("b_3", "conv", ("b_1",), group="out", relu=False),
        Node("b_add", "add", ("c0", "b_3"), hint=True),
        Node("gap", "gap", ("b_add",)),
        Node("predictions", "dense", ("gap",), filters=NUM_CLASSES, relu=False),
    )
    return Architecture("identity", INPUT_SHAPE, NUM_CLASSES, nodes, (("out", 6), ("b_1", 5)))


def tiny_projection() -> Architecture:
    """A residual add whose shortcut is a strided 1x1 projection conv of the unmasked stem."""
    nodes = (
        Node("input", "input"),
        Node("stem", "conv", ("input",), filters=4, kernel=3),
        Node("b_0", "conv", ("stem",), strides=2, group="out", relu=False),
        Node("b_1", "conv", ("stem",), strides=2, group="b_1"),
        Node("b_3", "conv", ("b_1",), kernel=3, group="out", relu=False),
        Node("b_add", "add", ("b_0", "b_3"), hint=True),
        Node("flatten", "flatten", ("b_add",)),
        Node("predictions", "dense", ("flatten",), filters=NUM_CLASSES, relu=False),
    )
    return Architecture("projection", INPUT_SHAPE, NUM_CLASSES, nodes, (("out", 7), ("b_1", 3)))


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
