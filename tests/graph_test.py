"""The tracer: mask groups of any functional or Sequential Keras model, one test per topology pattern."""

import keras
import numpy as np
import pytest

from hsd_tf import architectures, costs, graph, slimming

from conftest import PATTERNS, kernel_params


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


def test_an_unsupported_layer_is_named_with_its_type():
    x = _input()
    y = keras.layers.Conv2D(4, 3, name="stem")(x)
    y = keras.layers.Lambda(lambda t: t * 2.0, name="doubler")(y)
    with pytest.raises(graph.UnsupportedLayerError, match=r"'doubler' \(Lambda\)"):
        graph.trace(keras.Model(x, y))


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


def test_a_subclassed_model_is_refused_with_the_way_out():
    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__(name="mine")
            self.conv = keras.layers.Conv2D(4, 3)

        def call(self, inputs):
            return self.conv(inputs)

    model = Subclassed()
    model(keras.ops.zeros((1, 8, 8, 3)))
    with pytest.raises(graph.UnsupportedLayerError, match="'mine'.*subclassed.*functional API"):
        graph.trace(model)
