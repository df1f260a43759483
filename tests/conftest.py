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


def _bn(x, name):
    return keras.layers.BatchNormalization(name=name)(x)


def pattern_se() -> keras.Model:
    """Squeeze-and-excitation: a sigmoid-gated conv and a dense gate multiply the body's channels."""
    x = keras.Input(INPUT_SHAPE)
    y = keras.layers.ReLU()(_bn(keras.layers.Conv2D(8, 3, padding="same", name="stem")(x), "stem_bn"))
    y = keras.layers.ReLU()(_bn(keras.layers.Conv2D(6, 3, padding="same", name="body")(y), "body_bn"))
    s = keras.layers.GlobalAveragePooling2D(keepdims=True)(y)
    s = keras.layers.Conv2D(2, 1, activation="relu", name="se_reduce")(s)
    s = keras.layers.Conv2D(6, 1, activation="sigmoid", name="se_expand")(s)
    y = keras.layers.Multiply(name="excite")([y, s])
    dense_se = keras.layers.Dense(6, activation="sigmoid", name="se_dense")(keras.layers.GlobalAveragePooling2D()(y))
    y = keras.layers.Multiply()([y, keras.layers.Reshape((1, 1, 6))(dense_se)])
    return keras.Model(x, keras.layers.Dense(NUM_CLASSES, name="fc")(keras.layers.Flatten()(y)), name="se")


def pattern_concat() -> keras.Model:
    """Two branches concatenated, then a BatchNorm over the joined channels."""
    x = keras.Input(INPUT_SHAPE)
    stem = keras.layers.Conv2D(4, 3, padding="same", name="stem")(x)
    a = keras.layers.ReLU()(_bn(keras.layers.Conv2D(5, 1, name="a")(stem), "a_bn"))
    b = keras.layers.Conv2D(6, 3, padding="same", name="b")(stem)
    y = keras.layers.ReLU()(_bn(keras.layers.Concatenate(name="cat")([a, b]), "bn"))
    y = keras.layers.Conv2D(7, 1, name="c")(y)
    return keras.Model(x, keras.layers.Dense(NUM_CLASSES, name="fc")(keras.layers.GlobalAveragePooling2D()(y)),
                       name="concat")


def pattern_depthwise_multiplier() -> keras.Model:
    """A biased depthwise conv with depth_multiplier 2 repeats its input's channels."""
    x = keras.Input(INPUT_SHAPE)
    y = keras.layers.Conv2D(4, 3, name="stem")(x)
    y = _bn(keras.layers.Conv2D(3, 1, name="pw1")(y), "pw1_bn")
    y = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, name="dw")(y)
    y = keras.layers.ReLU()(_bn(y, "dw_bn"))
    y = keras.layers.Conv2D(5, 1, name="pw2")(y)
    return keras.Model(x, keras.layers.Dense(NUM_CLASSES, name="fc")(keras.layers.Flatten()(y)), name="depthwise_mult")


def pattern_nested() -> keras.Model:
    """A Sequential block and a functional block inside the model."""
    inner = keras.Sequential([keras.Input((8, 8, 4)), keras.layers.Conv2D(5, 3, padding="same", name="inner_conv"),
                              keras.layers.BatchNormalization(name="inner_bn"), keras.layers.ReLU()], name="block")
    z = keras.Input((6, 6, 5))
    functional = keras.Model(z, keras.layers.ReLU()(_bn(keras.layers.Conv2D(7, 1, name="f_conv")(z), "f_bn")),
                             name="fblock")
    x = keras.Input(INPUT_SHAPE)
    y = keras.layers.Conv2D(4, 3, padding="same", name="stem")(x)
    y = inner(y)
    y = keras.layers.Conv2D(5, 3, name="outer_conv")(y)
    y = functional(y)
    return keras.Model(x, keras.layers.Dense(NUM_CLASSES, name="fc")(keras.layers.Flatten()(y)), name="nested")


def pattern_raw_ops() -> keras.Model:
    """MobileNetV3's hard-swish as raw keras.ops calls (x + 3 turns a zero channel into 3), and an ops.add merge."""
    x = keras.Input(INPUT_SHAPE)
    stem = keras.layers.Conv2D(4, 3, padding="same", name="stem")(x)
    a = keras.layers.Conv2D(6, 1, name="a")(stem)
    a = a * keras.ops.relu6(a + 3.0) / 6.0
    b = keras.layers.Conv2D(6, 1, name="b")(stem)
    y = keras.ops.add(a, b)
    y = keras.layers.Conv2D(3, 1, name="c")(y)
    return keras.Model(x, keras.layers.Dense(NUM_CLASSES, name="fc")(keras.layers.Flatten()(y)), name="raw_ops")


def pattern_called_twice() -> keras.Model:
    """One conv called on two tensors: the same filters, so the same channels, in both outputs."""
    x = keras.Input(INPUT_SHAPE)
    stem = keras.layers.Conv2D(4, 3, padding="same", name="stem")(x)
    shared = keras.layers.Conv2D(5, 3, padding="same", name="shared")
    y = keras.layers.Concatenate()([shared(stem), shared(keras.layers.ReLU()(stem))])
    y = keras.layers.Conv2D(3, 1, name="c")(y)
    return keras.Model(x, keras.layers.Dense(NUM_CLASSES, name="fc")(keras.layers.Flatten()(y)), name="called_twice")


def pattern_shared_on_two_branches() -> keras.Model:
    """One conv and one BatchNorm called on two branches that different convs make: one slim layer reads both."""
    x = keras.Input(INPUT_SHAPE)
    stem = keras.layers.Conv2D(4, 3, padding="same", name="stem")(x)
    a = keras.layers.ReLU()(_bn(keras.layers.Conv2D(6, 3, padding="same", name="a")(stem), "a_bn"))
    b = keras.layers.ReLU()(_bn(keras.layers.Conv2D(6, 1, name="b")(stem), "b_bn"))
    shared = keras.layers.Conv2D(5, 3, padding="same", name="shared")
    shared_bn = keras.layers.BatchNormalization(name="shared_bn")
    y = keras.layers.Concatenate()([keras.layers.ReLU()(shared_bn(shared(a))), keras.layers.ReLU()(shared_bn(shared(b)))])
    y = keras.layers.Conv2D(3, 1, name="c")(y)
    return keras.Model(x, keras.layers.Dense(NUM_CLASSES, name="fc")(keras.layers.Flatten()(y)), name="shared_branches")


def pattern_shared_on_uneven_branches() -> keras.Model:
    """A shared conv reads one conv's 6 channels on one branch, a concatenation of 2 and 4 on the other."""
    x = keras.Input(INPUT_SHAPE)
    stem = keras.layers.Conv2D(4, 3, padding="same", name="stem")(x)
    a = keras.layers.ReLU()(_bn(keras.layers.Conv2D(6, 3, padding="same", name="a")(stem), "a_bn"))
    a = keras.layers.Identity()(keras.layers.Dropout(0.1)(a))  # a deeper branch: `a` comes first in the model's order
    b = keras.layers.Concatenate()([keras.layers.Conv2D(2, 1, name="b1")(stem), keras.layers.Conv2D(4, 1, name="b2")(stem)])
    b = keras.layers.ReLU()(_bn(b, "b_bn"))
    shared = keras.layers.Conv2D(5, 3, padding="same", name="shared")
    y = keras.layers.Concatenate()([shared(a), shared(b)])
    y = keras.layers.Conv2D(3, 1, name="c")(keras.layers.ReLU()(_bn(y, "y_bn")))
    return keras.Model(x, keras.layers.Dense(NUM_CLASSES, name="fc")(keras.layers.Flatten()(y)), name="uneven")


def pattern_channel_split() -> keras.Model:
    """CSPNet's split of the channel axis in two halves, one half through a conv, then joined again."""
    x = keras.Input(INPUT_SHAPE)
    stem = keras.layers.Conv2D(4, 3, padding="same", name="stem")(x)
    y = keras.layers.ReLU()(_bn(keras.layers.Conv2D(8, 1, name="wide")(stem), "wide_bn"))
    a, b = keras.ops.split(y, 2, axis=-1)
    a = keras.layers.ReLU()(_bn(keras.layers.Conv2D(4, 3, padding="same", name="a")(a), "a_bn"))
    y = keras.layers.Conv2D(3, 1, name="c")(keras.layers.Concatenate()([a, b]))
    return keras.Model(x, keras.layers.Dense(NUM_CLASSES, name="fc")(keras.layers.Flatten()(y)), name="split")


def pattern_axis_ops() -> keras.Model:
    """keras.ops on non-channel axes: MobileNet's SE mean, ResNetV2's pad, a transformer's tokens and class token."""
    x = keras.Input(INPUT_SHAPE)
    stem = keras.layers.Conv2D(4, 3, padding="same", name="stem")(x)
    y = keras.layers.ReLU()(_bn(keras.layers.Conv2D(6, 3, padding="same", name="body")(stem), "body_bn"))
    se = keras.ops.mean(y, axis=(1, 2), keepdims=True)
    se = keras.layers.Conv2D(2, 1, activation="relu", name="se_reduce")(se)
    y = y * keras.layers.Conv2D(6, 1, activation="sigmoid", name="se_expand")(se)
    y = keras.ops.pad(y, ((0, 0), (1, 1), (1, 1), (0, 0)))
    y = keras.layers.Conv2D(5, 3, name="after_pad")(y)
    tokens = keras.ops.reshape(y, (-1, 64, 5))
    return keras.Model(x, keras.layers.Dense(NUM_CLASSES, name="fc")(tokens[:, 0]), name="axis_ops")


class ScaleShift(keras.layers.Layer):
    """A layer with scalar weights of its own, `scale * x + shift` (HGNetV2's learnable affine block)."""

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(), initializer="ones", name="scale")
        self.shift = self.add_weight(shape=(), initializer="zeros", name="shift")

    def call(self, x):
        return self.scale * x + self.shift


def pattern_scalar_affine() -> keras.Model:
    x = keras.Input(INPUT_SHAPE)
    y = keras.layers.Conv2D(4, 3, padding="same", name="stem")(x)
    y = ScaleShift(name="affine")(_bn(keras.layers.Conv2D(6, 3, padding="same", name="body")(y), "body_bn"))
    y = keras.layers.Conv2D(5, 1, name="after")(keras.layers.ReLU()(y))
    return keras.Model(x, keras.layers.Dense(NUM_CLASSES, name="fc")(keras.layers.Flatten()(y)), name="scalar_affine")


class TupleBlock(keras.layers.Layer):
    """A residual MLP block that returns `(outputs, None)`, as keras_hub's DeiTEncoderBlock does; its residual is
    an argument of its own (DeiTOutput's `input_tensor`)."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.hidden = keras.layers.Dense(units, activation="relu", name="hidden")
        self.out = None

    def build(self, input_shape):
        self.out = keras.layers.Dense(input_shape[-1], name="out")

    def call(self, x, residual):
        return residual + self.out(self.hidden(x)), None

    def get_config(self):
        return {**super().get_config(), "units": self.units}


class TupleEncoder(keras.layers.Layer):
    """Calls two TupleBlocks and returns a constant beside its output (DeiTEncoder's empty attention scores)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.blocks = [TupleBlock(6, name="block_1"), TupleBlock(5, name="block_2")]

    def call(self, x):
        for block in self.blocks:
            x, _ = block(x, x)  # one tensor as two arguments
        return x, keras.ops.zeros((0, x.shape[-1]))


def pattern_blocks_returning_none() -> keras.Model:
    """A composite whose blocks Keras cannot record as nodes (they return None): inlined block by block."""
    x = keras.Input(INPUT_SHAPE)
    y = keras.layers.Conv2D(4, 3, padding="same", name="stem")(x)
    y, _ = TupleEncoder(name="encoder")(y)
    return keras.Model(x, keras.layers.Dense(NUM_CLASSES, name="fc")(keras.layers.Flatten()(y)), name="tuple_blocks")


def branchy_cnn(input_shape=(32, 32, 3), num_classes=10) -> keras.Model:
    """A CNN of one's own: concatenated conv and depthwise branches, SE blocks, residual adds, a softmax.

    The README's end-to-end `--arch=PATH.keras` run saves this model (`model.save("/tmp/mine.keras")`).
    """
    x = keras.Input(input_shape)
    y = keras.layers.Conv2D(16, 3, padding="same", use_bias=False)(x)
    y = keras.layers.ReLU()(keras.layers.BatchNormalization(momentum=0.9)(y))
    for filters in (32, 64):
        a = keras.layers.Conv2D(filters, 3, strides=2, padding="same", activation="relu")(y)
        b = keras.layers.DepthwiseConv2D(3, strides=2, padding="same")(y)
        y = keras.layers.Concatenate()([a, b])
        shortcut = y
        y = keras.layers.Conv2D(filters, 1, use_bias=False)(y)
        y = keras.layers.ReLU()(keras.layers.BatchNormalization(momentum=0.9)(y))
        se = keras.layers.GlobalAveragePooling2D(keepdims=True)(y)
        se = keras.layers.Conv2D(filters // 4, 1, activation="relu")(se)
        se = keras.layers.Conv2D(filters, 1, activation="sigmoid")(se)
        y = keras.layers.Multiply()([y, se])
        y = keras.layers.Conv2D(shortcut.shape[-1], 1)(y)
        y = keras.layers.Add()([shortcut, y])
    y = keras.layers.Dropout(0.2)(keras.layers.GlobalAveragePooling2D()(y))
    return keras.Model(x, keras.layers.Dense(num_classes, activation="softmax")(y), name="mine")


PATTERNS = {
    "se": pattern_se,
    "concat": pattern_concat,
    "depthwise_multiplier": pattern_depthwise_multiplier,
    "nested": pattern_nested,
    "raw_ops": pattern_raw_ops,
    "called_twice": pattern_called_twice,
    "shared_on_two_branches": pattern_shared_on_two_branches,
    "channel_split": pattern_channel_split,
    "axis_ops": pattern_axis_ops,
    "scalar_affine": pattern_scalar_affine,
    "blocks_returning_none": pattern_blocks_returning_none,
}


def kernel_params(model) -> int:
    """Conv and dense kernel weights of a Keras model, counted from the layers themselves."""
    import keras  # pylint: disable=import-outside-toplevel

    kernels = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)
    return sum(int(np.prod(layer.kernel.shape)) for layer in model.layers if isinstance(layer, kernels))


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same random state, whichever worker runs it and whatever ran before."""
    keras.utils.set_random_seed(0)


@pytest.fixture
def batch():
    rng = np.random.RandomState(0)
    images = rng.normal(size=(6,) + INPUT_SHAPE).astype("float32")
    labels = rng.randint(0, NUM_CLASSES, size=6).astype("int32")
    return images, labels


# ---------------------------------------------------------------- beyond image classifiers
# Each: a compiled model of another task, tiny, and a function of (rng, batch) giving (inputs, targets) that fit it.

def _bn_relu(x, name=None):
    return keras.layers.ReLU()(keras.layers.BatchNormalization(name=name)(x))


def beyond_conv1d():
    """keras.io's time-series classifier: Conv1D, BatchNorm, ReLU, pooling, GlobalAveragePooling1D (and a separable conv)."""
    x = keras.Input((16, 3))
    y = _bn_relu(keras.layers.Conv1D(4, 3, padding="same", name="stem")(x))
    y = _bn_relu(keras.layers.Conv1D(6, 3, padding="same", name="c1")(y))
    y = keras.layers.MaxPooling1D()(y)
    y = _bn_relu(keras.layers.SeparableConv1D(5, 3, padding="same", name="c2")(y))
    model = keras.Model(x, keras.layers.Dense(NUM_CLASSES, activation="softmax")(keras.layers.GlobalAveragePooling1D()(y)))
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model, lambda rng, n: (rng.normal(size=(n, 16, 3)).astype("float32"), rng.randint(0, NUM_CLASSES, n))


def beyond_conv3d():
    """Volumes: Conv3D, MaxPooling3D, UpSampling3D, ZeroPadding3D and Cropping3D, a transposed Conv3D."""
    x = keras.Input((6, 6, 6, 1))
    y = _bn_relu(keras.layers.Conv3D(3, 3, padding="same", name="stem")(x))
    y = _bn_relu(keras.layers.Conv3D(5, 3, padding="same", name="c1")(y))
    y = keras.layers.Cropping3D(1)(keras.layers.ZeroPadding3D(1)(keras.layers.UpSampling3D()(keras.layers.MaxPooling3D()(y))))
    y = _bn_relu(keras.layers.Conv3DTranspose(4, 3, padding="same", name="c2")(y))
    model = keras.Model(x, keras.layers.Dense(NUM_CLASSES)(keras.layers.GlobalMaxPooling3D()(y)))
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model, lambda rng, n: (rng.normal(size=(n, 6, 6, 6, 1)).astype("float32"), rng.randint(0, NUM_CLASSES, n))


def beyond_tokens():
    """Text: integer tokens, an Embedding, Conv1D, GlobalMaxPooling1D."""
    x = keras.Input((12,), dtype="int32")
    y = keras.layers.Embedding(30, 6)(x)
    y = keras.layers.Conv1D(8, 3, activation="relu", name="stem")(y)
    y = keras.layers.Conv1D(6, 3, activation="relu", name="c1")(y)
    model = keras.Model(x, keras.layers.Dense(NUM_CLASSES)(keras.layers.GlobalMaxPooling1D()(y)))
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model, lambda rng, n: (rng.randint(0, 30, size=(n, 12)).astype("int32"), rng.randint(0, NUM_CLASSES, n))


def beyond_image_and_vector():
    """Two inputs: an image and a vector, joined after pooling."""
    image, vector = keras.Input(INPUT_SHAPE, name="image"), keras.Input((5,), name="vector")
    y = _bn_relu(keras.layers.Conv2D(4, 3, padding="same", name="stem")(image))
    y = keras.layers.GlobalAveragePooling2D()(_bn_relu(keras.layers.Conv2D(6, 3, padding="same", name="c1")(y)))
    y = keras.layers.Dense(8, activation="relu")(keras.layers.Concatenate()([y, vector]))
    model = keras.Model([image, vector], keras.layers.Dense(NUM_CLASSES, activation="softmax")(y))
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model, lambda rng, n: ((rng.normal(size=(n,) + INPUT_SHAPE).astype("float32"),
                                   rng.normal(size=(n, 5)).astype("float32")), rng.randint(0, NUM_CLASSES, n))


def beyond_siamese():
    """Two images through one tower (shared layers), their distance, a sigmoid: binary cross-entropy."""
    stem, bn1 = keras.layers.Conv2D(4, 3, padding="same", name="stem"), keras.layers.BatchNormalization(name="bn1")
    body, bn2 = keras.layers.Conv2D(6, 3, padding="same", name="body"), keras.layers.BatchNormalization(name="bn2")
    pool = keras.layers.GlobalAveragePooling2D()

    def tower(x):
        return pool(keras.layers.ReLU()(bn2(body(keras.layers.ReLU()(bn1(stem(x)))))))

    a, b = keras.Input(INPUT_SHAPE, name="a"), keras.Input(INPUT_SHAPE, name="b")
    distance = keras.ops.abs(keras.layers.Subtract()([tower(a), tower(b)]))
    model = keras.Model([a, b], keras.layers.Dense(1, activation="sigmoid")(distance))
    model.compile("adam", "binary_crossentropy", metrics=["accuracy"])
    return model, lambda rng, n: ((rng.normal(size=(n,) + INPUT_SHAPE).astype("float32"),
                                   rng.normal(size=(n,) + INPUT_SHAPE).astype("float32")),
                                  rng.randint(0, 2, size=(n, 1)).astype("float32"))


def beyond_two_outputs():
    """A class (softmax) and a value (linear) from one trunk, weighted losses."""
    x = keras.Input(INPUT_SHAPE)
    y = _bn_relu(keras.layers.Conv2D(4, 3, padding="same", name="stem")(x))
    y = keras.layers.GlobalAveragePooling2D()(_bn_relu(keras.layers.Conv2D(6, 3, padding="same", name="c1")(y)))
    model = keras.Model(x, [keras.layers.Dense(NUM_CLASSES, activation="softmax", name="kind")(y),
                            keras.layers.Dense(1, name="size")(y)])
    model.compile("adam", ["sparse_categorical_crossentropy", "mae"], loss_weights=[1.0, 0.5],
                  metrics=[["accuracy"], ["mae"]])
    return model, lambda rng, n: (rng.normal(size=(n,) + INPUT_SHAPE).astype("float32"),
                                  (rng.randint(0, NUM_CLASSES, n), rng.normal(size=(n, 1)).astype("float32")))


def beyond_dict_outputs():
    """Outputs as a dict (keys other than the layers' names), losses and metrics by key."""
    x = keras.Input(INPUT_SHAPE)
    y = _bn_relu(keras.layers.Conv2D(4, 3, padding="same", name="stem")(x))
    y = keras.layers.GlobalAveragePooling2D()(_bn_relu(keras.layers.Conv2D(6, 3, padding="same", name="c1")(y)))
    model = keras.Model(x, {"label": keras.layers.Dense(NUM_CLASSES, name="head_a")(y),
                            "box": keras.layers.Dense(4, activation="sigmoid", name="head_b")(y)})
    model.compile("adam", {"label": keras.losses.SparseCategoricalCrossentropy(from_logits=True), "box": "mse"},
                  metrics={"label": ["accuracy"], "box": [keras.metrics.MeanAbsoluteError(name="err")]})
    return model, lambda rng, n: (rng.normal(size=(n,) + INPUT_SHAPE).astype("float32"),
                                  {"label": rng.randint(0, NUM_CLASSES, n),
                                   "box": rng.uniform(size=(n, 4)).astype("float32")})


def beyond_unet():
    """Segmentation: a U-Net with a concatenated skip, a strided conv down, a transposed conv up, a class per pixel."""
    x = keras.Input(INPUT_SHAPE)
    c1 = _bn_relu(keras.layers.Conv2D(4, 3, padding="same", name="stem")(x))
    c1 = _bn_relu(keras.layers.Conv2D(6, 3, padding="same", name="c1")(c1))
    c2 = _bn_relu(keras.layers.Conv2D(8, 3, strides=2, padding="same", name="down")(c1))
    u = _bn_relu(keras.layers.Conv2DTranspose(6, 3, strides=2, padding="same", name="up")(c2))
    u = _bn_relu(keras.layers.Conv2D(5, 3, padding="same", name="c2")(keras.layers.Concatenate()([u, c1])))
    model = keras.Model(x, keras.layers.Conv2D(NUM_CLASSES, 1, activation="softmax", name="classes")(u))
    model.compile("adam", "sparse_categorical_crossentropy",
                  metrics=[keras.metrics.MeanIoU(NUM_CLASSES, sparse_y_pred=False, name="iou"), "accuracy"])
    return model, lambda rng, n: (rng.normal(size=(n,) + INPUT_SHAPE).astype("float32"),
                                  rng.randint(0, NUM_CLASSES, size=(n,) + INPUT_SHAPE[:2]))


def beyond_autoencoder():
    """An image out: conv, pool, upsample, a sigmoid reconstruction with mean squared error."""
    x = keras.Input(INPUT_SHAPE)
    y = _bn_relu(keras.layers.Conv2D(4, 3, padding="same", name="stem")(x))
    y = keras.layers.MaxPooling2D()(_bn_relu(keras.layers.Conv2D(6, 3, padding="same", name="c1")(y)))
    y = keras.layers.UpSampling2D()(_bn_relu(keras.layers.Conv2D(5, 3, padding="same", name="c2")(y)))
    model = keras.Model(x, keras.layers.Conv2D(3, 3, padding="same", activation="sigmoid", name="image")(y))
    model.compile("adam", "mse")
    return model, lambda rng, n: ((images := rng.uniform(size=(n,) + INPUT_SHAPE).astype("float32")), images)


def beyond_sequence_to_sequence():
    """A value per time step: strided Conv1D down, UpSampling1D and Conv1DTranspose up, padding, cropping, a
    depthwise Conv1D."""
    x = keras.Input((16, 2))
    y = _bn_relu(keras.layers.Conv1D(4, 3, padding="same", name="stem")(x))
    y = _bn_relu(keras.layers.Conv1D(6, 3, strides=2, padding="same", name="down")(y))
    y = keras.layers.Conv1DTranspose(5, 3, padding="same", name="up")(keras.layers.UpSampling1D()(y))
    y = keras.layers.Cropping1D(1)(keras.layers.ZeroPadding1D(1)(_bn_relu(y)))
    y = _bn_relu(keras.layers.DepthwiseConv1D(3, padding="same", name="depthwise")(y))
    model = keras.Model(x, keras.layers.Conv1D(1, 1, name="value")(y))
    model.compile("adam", "mae", metrics=["mse"])
    return model, lambda rng, n: (rng.normal(size=(n, 16, 2)).astype("float32"),
                                  rng.normal(size=(n, 16, 1)).astype("float32"))


BEYOND = {
    "conv1d": beyond_conv1d,
    "conv3d": beyond_conv3d,
    "tokens": beyond_tokens,
    "image_and_vector": beyond_image_and_vector,
    "siamese": beyond_siamese,
    "two_outputs": beyond_two_outputs,
    "dict_outputs": beyond_dict_outputs,
    "unet": beyond_unet,
    "autoencoder": beyond_autoencoder,
    "sequence_to_sequence": beyond_sequence_to_sequence,
}
