"""The tracer: mask groups of any functional or Sequential Keras model, one test per topology pattern."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from hsd_tf import architectures, costs, graph, slimming

from conftest import PATTERNS, kernel_params, pattern_shared_on_uneven_branches


def _groups(trace):
    return {(frozenset(g.members), g.width) for g in trace.groups}


def _hand_written_groups(name):
    """The groups hsd_tf's Node graphs declared by hand before the tracer replaced them."""
    if name == "vgg16":
        return {(frozenset({f"block{b}_conv{i}"}), None) for b, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3))
                for i in range(1, n + 1)} - {(frozenset({"block1_conv1"}), None)}
    if name == "mobilenet_v1":
        return {(frozenset({f"conv_pw_{i}"}), None) for i in range(1, 14)}
    groups = set()
    for stage, _, blocks, _ in architectures.RESNET50_STAGES:
        groups.add((frozenset({f"{stage}_block1_0_conv"} | {f"{stage}_block{b}_3_conv" for b in range(1, blocks + 1)}),
                    None))
        groups |= {(frozenset({f"{stage}_block{b}_{i}_conv"}), None) for b in range(1, blocks + 1) for i in (1, 2)}
    return groups


@pytest.mark.parametrize("name, count, stem", [("vgg16", 12, "block1_conv1"), ("resnet50", 36, "conv1_conv"),
                                               ("mobilenet_v1", 13, "conv1")])
def test_built_in_architectures_trace_to_their_hand_written_groups(name, count, stem):
    model = architectures.get(name, (32, 32, 3), 10, width_multiplier=0.125)
    trace = graph.trace(model)
    assert len(trace.groups) == count
    assert {(members, None) for members, _ in _groups(trace)} == _hand_written_groups(name)
    for group in trace.groups:  # a group is as wide as each of its convs
        assert {model.get_layer(m).filters for m in group.members} == {group.width}
    assert trace.stems == (stem,)
    assert set(trace.head) == {layer.name for layer in model.layers if isinstance(layer, keras.layers.Dense)}
    assert len(trace.normalizations) == sum(isinstance(layer, keras.layers.BatchNormalization)
                                            for layer in model.layers)


def _input():
    return keras.Input((8, 8, 3))


def test_concatenate_joins_the_branches_channels():
    trace = graph.trace(PATTERNS["concat"]())
    assert _groups(trace) == {(frozenset({"a"}), 5), (frozenset({"b"}), 6), (frozenset({"c"}), 7)}
    assert trace.stems == ("stem",) and trace.normalizations == ("a_bn", "bn") and trace.head == ("fc",)
    # The BatchNorm after the concatenation reads a's channels, then b's.
    a, b = trace.group_names.index("a"), trace.group_names.index("b")
    assert trace.first_steps()["bn"].channels_in == tuple((a, i) for i in range(5)) + tuple((b, i) for i in range(6))


def test_squeeze_and_excitation_multiply_puts_the_expand_conv_in_the_group():
    trace = graph.trace(PATTERNS["se"]())
    assert _groups(trace) == {(frozenset({"body", "se_expand", "se_dense"}), 6), (frozenset({"se_reduce"}), 2)}
    # sigmoid(0) = 0.5: the gates are masked after their activation; the multiplies keep zeros.
    assert {"se_expand", "se_dense", "body_bn"} <= set(trace.mask_points())
    assert "excite" not in trace.mask_points()


def test_depthwise_multiplier_repeats_its_input_channels():
    trace = graph.trace(PATTERNS["depthwise_multiplier"]())
    assert _groups(trace) == {(frozenset({"pw1"}), 3), (frozenset({"pw2"}), 5)}
    pw1 = trace.group_names.index("pw1")
    assert trace.first_steps()["dw"].channels_out == tuple((pw1, i) for i in range(3) for _ in range(2))
    assert "dw" in trace.mask_points()  # its bias would turn a zero channel non-zero


def test_nested_sequential_and_functional_models_are_traced_through():
    trace = graph.trace(PATTERNS["nested"]())
    assert _groups(trace) == {(frozenset({"inner_conv"}), 5), (frozenset({"outer_conv"}), 5),
                              (frozenset({"f_conv"}), 7)}
    assert trace.normalizations == ("inner_bn", "f_bn")


def test_raw_ops_hard_swish_and_residual_add_merge_channels():
    trace = graph.trace(PATTERNS["raw_ops"]())
    assert _groups(trace) == {(frozenset({"a", "b"}), 6), (frozenset({"c"}), 3)}
    ops = [type(step.operation).__name__ for step in trace.steps if step.mask is not None]
    assert ops.count("Add") == 1  # a + 3.0 is masked; the add of a and b is not


def test_a_layer_called_twice_produces_the_same_channels():
    trace = graph.trace(PATTERNS["called_twice"]())
    assert _groups(trace) == {(frozenset({"shared"}), 5), (frozenset({"c"}), 3)}


def test_a_layer_called_on_two_branches_reads_the_same_channels_from_both():
    """One slim conv serves both calls: the channels of the two convs feeding it are kept or dropped together."""
    trace = graph.trace(PATTERNS["shared_on_two_branches"]())
    assert _groups(trace) == {(frozenset({"a", "b"}), 6), (frozenset({"shared"}), 5), (frozenset({"c"}), 3)}
    # Channels of one conv tied to two others, slice by slice: two groups, named by all their members.
    trace = graph.trace(pattern_shared_on_uneven_branches())
    assert _groups(trace) == {(frozenset({"a", "b1"}), 2), (frozenset({"a", "b2"}), 4), (frozenset({"shared"}), 5),
                              (frozenset({"c"}), 3)}
    assert trace.group_names[:2] == ("a+b1", "a+b2")


def test_keras_ops_on_other_axes_pass_channels_and_a_split_of_the_channel_axis_divides_them():
    trace = graph.trace(PATTERNS["axis_ops"]())
    assert _groups(trace) == {(frozenset({"body", "se_expand"}), 6), (frozenset({"se_reduce"}), 2),
                              (frozenset({"after_pad"}), 5)}
    trace = graph.trace(PATTERNS["channel_split"]())
    assert _groups(trace) == {(frozenset({"wide"}), 8), (frozenset({"a"}), 4), (frozenset({"c"}), 3)}
    wide = trace.group_names.index("wide")
    split = next(step for step in trace.steps if type(step.operation).__name__ == "Split")
    assert split.channels_in == tuple((wide, i) for i in range(8))


def test_a_layer_with_scalar_weights_acting_on_each_channel_passes_them():
    trace = graph.trace(PATTERNS["scalar_affine"]())
    assert _groups(trace) == {(frozenset({"body"}), 6), (frozenset({"after"}), 5)}
    assert "affine" in trace.mask_points()  # scale * 0 + shift is not 0: masked after it


def test_indexing_the_channel_axis_is_refused_where_channels_are_prunable():
    x = _input()
    y = keras.layers.Conv2D(6, 3, name="prunable")(keras.layers.Conv2D(4, 3, name="stem")(x))
    y = keras.layers.Dense(2)(keras.layers.Flatten()(y[..., :3]))
    with pytest.raises(graph.UnsupportedLayerError, match="selects channels by position"):
        graph.trace(keras.Model(x, y))


def test_channels_reaching_the_output_or_merged_with_the_input_are_not_prunable():
    x = _input()
    y = keras.layers.Conv2D(3, 3, padding="same", name="stem")(x)
    y = keras.layers.Conv2D(3, 3, padding="same", name="into_input")(y)
    y = keras.layers.Add()([x, y])  # merged with the image's channels
    y = keras.layers.Conv2D(4, 3, padding="same", name="reads_image")(y)  # so this reads the input: a stem
    y = keras.layers.Conv2D(5, 3, padding="same", name="kept")(y)
    y = keras.layers.Conv2D(2, 1, name="logits_map")(y)  # the model's output
    trace = graph.trace(keras.Model(x, y))
    assert _groups(trace) == {(frozenset({"kept"}), 5)}
    assert trace.stems == ("stem", "reads_image")


def test_every_unsupported_layer_is_named_with_its_type_in_one_error():
    x = _input()
    y = keras.layers.Conv2D(4, 3, name="stem")(x)
    y = keras.layers.Conv2D(5, 3, name="prunable")(y)
    y = keras.layers.Lambda(lambda t: t[..., ::-1], name="reverse")(y)  # moves channels
    y = keras.layers.Conv2D(6, 1, name="second")(y)
    y = keras.layers.Lambda(lambda t: t - keras.ops.mean(t, axis=-1, keepdims=True), name="center")(y)  # mixes them
    y = keras.layers.Dense(2)(keras.layers.Flatten()(y))
    with pytest.raises(graph.UnsupportedLayerError, match=r"layers 'reverse' \(Lambda\).*'center' \(Lambda\)"
                       r".*--unpruned_layers=reverse,center"):
        graph.trace(keras.Model(x, y))


def test_a_lambda_acting_on_each_channel_alone_is_followed():
    x = _input()
    y = keras.layers.Conv2D(5, 3, name="prunable")(keras.layers.Conv2D(4, 3, name="stem")(x))
    y = keras.layers.Lambda(lambda t: t * 2.0 + 1.0, name="affine")(y)
    trace = graph.trace(keras.Model(x, keras.layers.Dense(2)(keras.layers.Flatten()(y))))
    assert _groups(trace) == {(frozenset({"prunable"}), 5)} and "affine" in trace.mask_points()


def test_a_layer_it_cannot_follow_on_unprunable_channels_is_kept_whole():
    """Preprocessing on the image, or an op right after a stem, reads nothing prunable: nothing to follow."""
    x = _input()
    y = keras.layers.Lambda(lambda t: t[..., ::-1], name="to_bgr")(x)  # on the image: the next conv is a stem
    y = keras.layers.Conv2D(4, 3, name="stem")(y)
    y = keras.layers.Lambda(lambda t: t * 2.0, name="after_stem")(y)
    y = keras.layers.Conv2D(5, 3, name="prunable")(y)
    y = keras.layers.Dense(2)(keras.layers.Flatten()(y))
    trace = graph.trace(keras.Model(x, y))
    assert _groups(trace) == {(frozenset({"prunable"}), 5)} and trace.stems == ("stem",)


def test_keras_applications_resnet50_traces_to_our_hand_written_resnet50_groups():
    # Our resnet50 uses the Keras applications layout and layer names, so the groups must coincide.
    traced = graph.trace(keras.applications.ResNet50(weights=None, input_shape=(32, 32, 3), classes=10))
    assert _groups(traced) == _groups(graph.trace(architectures.get("resnet50", (32, 32, 3), 10)))
    assert traced.stems == ("conv1_conv",) and traced.head == ("predictions",)


def test_convnext_grouped_depthwise_layer_scale_and_pointwise_dense_layers():
    model = keras.applications.ConvNeXtTiny(weights=None, input_shape=(32, 32, 3), classes=10)
    trace = graph.trace(model)
    # Per block, only the 4x expansion (a dense layer on the spatial tensor) is prunable; the residual
    # stream passes through LayerNormalization, which mixes channels, and stays whole.
    assert len(trace.groups) == 3 + 3 + 9 + 3
    for group in trace.groups:
        assert len(group.members) == 1 and group.members[0].endswith("_pointwise_conv_1")
        assert group.width == model.get_layer(group.members[0]).units
    assert trace.head == ("convnext_tiny_head_dense",)


@pytest.mark.parametrize("name, dataset_shape, classes, params, macs", [
    ("vgg16", (32, 32, 3), 10, 14_977_728, 313_463_808),  # --mode=profile, the paper's 14.98M / 313M
    ("resnet50", (224, 224, 3), 1000, 25_502_912, 3_857_973_248),  # the paper's 25.5M / 3.86B
])
def test_dense_costs_from_the_trace_equal_the_profile(name, dataset_shape, classes, params, macs):
    report = costs.count(graph.trace(architectures.get(name, dataset_shape, classes)))
    assert (report["params"], report["macs"]) == (params, macs)


@pytest.mark.parametrize("name", ["vgg16", "resnet50", "mobilenet_v1"])
@pytest.mark.parametrize("seed", [0, 1])
def test_slim_costs_from_the_trace_equal_the_slim_models_own(name, seed):
    """Removing channels also removes them from every layer that reads them, as the slim model has them."""
    rng = np.random.RandomState(seed)
    trace = graph.trace(architectures.get(name, (32, 32, 3), 10, width_multiplier=0.25))
    kept = {}
    for group in trace.groups:
        kept[group.name] = rng.rand(group.width) < 0.5
        kept[group.name][rng.randint(group.width)] = True
    slim = slimming.slim_model(trace, kept)
    assert kernel_params(slim) == costs.count(trace, kept)["params"]
    assert costs.profile(slim)["macs"] == costs.count(trace, kept)["macs"] < costs.count(trace)["macs"]


def test_a_layer_called_twice_counts_its_params_once_and_its_macs_twice():
    x = keras.Input((4, 4, 2))
    shared = keras.layers.Conv2D(3, 1, use_bias=False, name="shared")
    y = keras.layers.Add()([shared(x), shared(keras.layers.ReLU()(x))])
    report = costs.count(graph.trace(keras.Model(x, y)))
    assert (report["params"], report["macs"]) == (2 * 3, 2 * (2 * 3 * 16))


def test_a_sequential_model_is_traced():
    model = keras.Sequential([
        keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, name="stem"), keras.layers.BatchNormalization(name="bn1"),
        keras.layers.Conv2D(6, 3, name="conv"), keras.layers.BatchNormalization(name="bn2"), keras.layers.ReLU(),
        keras.layers.Flatten(), keras.layers.Dense(8, name="fc1"), keras.layers.Dense(2, name="fc2")])
    trace = graph.trace(model)
    assert _groups(trace) == {(frozenset({"conv"}), 6)}
    assert (trace.stems, trace.normalizations, trace.head) == (("stem",), ("bn1", "bn2"), ("fc1", "fc2"))
    # Flatten repeats conv's 6 channels at each of the 4x4 positions: fc1 reads 96 inputs.
    report = costs.count(trace)
    assert (report["params"], report["macs"]) == (3 * 3 * 3 * 4 + 3 * 3 * 4 * 6 + 96 * 8 + 8 * 2,
                                                  3 * 3 * 3 * 4 * 36 + 3 * 3 * 4 * 6 * 16 + 96 * 8 + 8 * 2)


class _Subclassed(keras.Model):
    def __init__(self, tensorflow_op=False):
        super().__init__(name="mine")
        self.stem = keras.layers.Conv2D(4, 3, name="stem")
        self.conv = keras.layers.Conv2D(5, 3, name="conv")
        self.bn = keras.layers.BatchNormalization(name="bn")
        self.fc = keras.layers.Dense(2, name="fc")
        self.tensorflow_op = tensorflow_op

    def call(self, inputs, training=None):
        y = self.bn(self.conv(self.stem(inputs)), training=training)
        if self.tensorflow_op:  # a TensorFlow op on a symbolic tensor: no graph to record
            y = tf.nn.relu(y)
        return self.fc(keras.layers.Flatten()(keras.ops.relu(y)))


def test_a_subclassed_model_is_traced_at_the_given_input_size():
    model = _Subclassed()
    model(keras.ops.zeros((1, 8, 8, 3)))
    with pytest.raises(graph.UnsupportedLayerError, match="'mine'.*subclassed.*no input shape.*--image_size"):
        graph.trace(model)
    trace = graph.trace(model, input_shape=(8, 8, 3))
    assert _groups(trace) == {(frozenset({"conv"}), 5)} and trace.normalizations == ("bn",)
    images = np.random.RandomState(0).normal(size=(2, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(trace.model(images), model(images), rtol=1e-5, atol=1e-5)


def test_a_subclassed_model_whose_call_is_not_keras_is_refused_with_the_way_out():
    model = _Subclassed(tensorflow_op=True)
    model(keras.ops.zeros((1, 8, 8, 3)))
    with pytest.raises(graph.UnsupportedLayerError, match="'mine'.*subclassed.*functional API"):
        graph.trace(model, input_shape=(8, 8, 3))


def test_a_base_model_without_input_size_inside_a_model_is_traced_at_the_models_size():
    """A keras.applications base built without input_shape, called on Input((32, 32, 3)), has None inside."""
    base = keras.applications.MobileNetV2(weights=None, include_top=False, alpha=0.35)
    assert base.inputs[0].shape[1:3] == (None, None)
    x = keras.Input((32, 32, 3))
    model = keras.Model(x, keras.layers.Dense(5)(keras.layers.GlobalAveragePooling2D()(base(x))))
    trace = graph.trace(model)
    assert trace.input_shapes == ((32, 32, 3),) and len(trace.groups) > 10
    assert costs.count(trace)["params"] == graph.kernel_weights(model)
    images = np.random.RandomState(0).normal(size=(2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(trace.model(images, training=False), model(images, training=False), rtol=1e-4,
                               atol=1e-4)


def test_a_model_with_open_input_sizes_is_traced_at_the_size_given():
    x = keras.Input((None, None, 3))
    y = keras.layers.Conv2D(6, 3, name="a")(keras.layers.Conv2D(4, 3, name="stem")(x))
    model = keras.Model(x, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(y)))
    with pytest.raises(graph.UnsupportedLayerError, match=r"shape \(None, None, 3\).*give the image size"):
        graph.trace(model)
    trace = graph.trace(model, input_shape=(12, 12, 3))
    assert trace.input_shapes == ((12, 12, 3),)
    assert {layer["name"]: layer["macs"] for layer in costs.count(trace)["layers"]}["a"] == 3 * 3 * 4 * 6 * 8 * 8


class _RenamingBlock(keras.layers.Layer):
    """A composite layer that renames itself as keras_hub's DepthwiseConvBlock does ("name_0"), so a rebuilt copy
    would be "name_0_0": its sublayers are named after the renamed name."""

    def __init__(self, filters, name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        self.filters = filters
        self.name = name = f"{name}_0"
        self.conv = keras.layers.Conv2D(filters, 3, padding="same", name=f"{name}_conv")
        self.bn = keras.layers.BatchNormalization(name=f"{name}_bn")
        self.reverse = keras.layers.Lambda(lambda t: t[..., ::-1], name=f"{name}_reverse")

    def call(self, x, training=None):
        return self.reverse(keras.ops.relu(self.bn(self.conv(x), training=training)))

    def get_config(self):
        return {**super().get_config(), "filters": self.filters}


def test_a_composite_layer_is_inlined_and_its_layers_keep_the_users_names():
    x = keras.Input((8, 8, 3))
    y = keras.layers.Conv2D(4, 3, padding="same", name="stem")(x)
    y = _RenamingBlock(6, name="block")(y)
    y = keras.layers.Conv2D(5, 1, name="after")(y)
    model = keras.Model(x, keras.layers.Dense(2, name="fc")(keras.layers.Flatten()(y)))
    with pytest.raises(graph.UnsupportedLayerError, match=r"'block_0_reverse' \(Lambda, at block_0/block_0_reverse\)"
                                                          r".*--unpruned_layers=block_0_reverse"):
        graph.trace(model)
    for unpruned in (["block_0_reverse"], ["block_0"]):  # the layer itself, or the composite holding it
        trace = graph.trace(model, unpruned_layers=unpruned)
        assert trace.group_names == ("after",) and trace.normalizations == ("block_0_bn",)
        assert {"block_0_conv", "block_0_bn"} <= set(trace.layers())
    assert _groups(graph.trace(model, unpruned_layers=["block_0_reverse"])) == {(frozenset({"after"}), 5)}


def test_a_composite_whose_blocks_return_none_is_inlined_block_by_block():
    """Keras refuses to record a block returning `(outputs, None)` as a node; each block is inlined instead, its
    layers named after it, and the constant the composite returns beside its output is not part of the graph."""
    model = PATTERNS["blocks_returning_none"]()
    trace = graph.trace(model)
    assert trace.group_names == ("hidden", "block_2_hidden")
    assert [trace.origin[name] for name in trace.group_names] == ["encoder/block_1/hidden", "encoder/block_2/hidden"]
    assert _groups(trace) == {(frozenset({"hidden"}), 6), (frozenset({"block_2_hidden"}), 5)}
    images = np.random.RandomState(0).normal(size=(2,) + model.input_shape[1:]).astype("float32")
    np.testing.assert_allclose(trace.model(images), model(images), rtol=1e-5, atol=1e-5)
