"""Params and MACs as the paper counts them (method.md section 6)."""

import keras
import pytest

from hsd_tf import architectures, costs, graph

from conftest import tiny_chain, tiny_depthwise


def test_vgg16_cifar_matches_the_paper():
    report = costs.profile(architectures.vgg16((32, 32, 3), 10))
    assert report["params"] == 14_977_728
    assert report["macs"] == 313_463_808
    assert report["params"] == pytest.approx(14.98e6, rel=0.005)
    assert report["macs"] == pytest.approx(313e6, rel=0.005)


def test_resnet50_imagenet_matches_the_paper():
    report = costs.profile(architectures.resnet50((224, 224, 3), 1000))
    assert report["params"] == pytest.approx(25.5e6, rel=0.005)
    assert report["macs"] == pytest.approx(3.86e9, rel=0.005)


def test_removed_filters_also_remove_next_layer_inputs():
    architecture = tiny_chain()  # stem 4 -> conv_a 6 -> pool -> conv_b 5 -> flatten (4*4*5) -> fc1 8
    full = {layer["name"]: layer for layer in costs.profile(architecture)["layers"]}
    assert full["conv_a"]["params"] == 3 * 3 * 4 * 6
    assert full["conv_a"]["macs"] == 3 * 3 * 4 * 6 * 8 * 8
    assert full["conv_b"]["params"] == 3 * 3 * 6 * 5
    assert full["fc1"]["params"] == 4 * 4 * 5 * 8
    trace = graph.trace(architecture)
    kept = {"conv_a": [True, False, True, False, False, False], "conv_b": [False, False, False, True, False]}
    slim = {layer["name"]: layer for layer in costs.count(trace, kept)["layers"]}
    assert slim["conv_a"]["params"] == 3 * 3 * 4 * 2
    assert slim["conv_b"]["params"] == 3 * 3 * 2 * 1
    assert slim["conv_b"]["macs"] == 3 * 3 * 2 * 1 * 4 * 4
    assert slim["fc1"]["params"] == 4 * 4 * 1 * 8


def test_depthwise_counts_one_kernel_per_channel():
    layers = {layer["name"]: layer for layer in costs.profile(tiny_depthwise())["layers"]}
    assert layers["dw_1"]["params"] == 3 * 3 * 4
    assert layers["dw_2"]["params"] == 3 * 3 * 6
    assert layers["dw_2"]["output_size"] == [4, 4, 6]


def test_table_has_totals():
    table = costs.format_table(costs.profile(architectures.vgg16()))
    assert "14,977,728" in table and "313,463,808" in table and "MACs 313.46M" in table


class _ScaledConv(keras.layers.Layer):
    """A layer holding a weight of its own around a conv sublayer: no graph to inline, so it is kept whole."""

    def __init__(self, filters, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.conv = keras.layers.Conv2D(filters, 3, padding="same", name=f"{self.name}_conv")

    def build(self, input_shape):
        self.conv.build(input_shape)
        self.scale = self.add_weight(shape=(), initializer="ones", name="scale")

    def call(self, x):
        return self.conv(x) * self.scale

    def get_config(self):
        return {**super().get_config(), "filters": self.filters}


def test_a_layer_kept_whole_counts_every_kernel_inside_it():
    """The dense count is the sum of the model's kernels, unpruned layers included (kernels only: no bias)."""
    x = keras.Input((8, 8, 3))
    y = keras.layers.Conv2D(4, 3, padding="same", name="stem")(x)
    y = keras.layers.Conv2D(6, 3, padding="same", name="a")(y)
    y = _ScaledConv(5, name="opaque")(y)
    y = keras.layers.Conv2D(7, 1, name="b")(y)
    model = keras.Model(x, keras.layers.Dense(3, name="fc")(keras.layers.GlobalAveragePooling2D()(y)))
    with pytest.raises(graph.UnsupportedLayerError, match="'opaque' \\(_ScaledConv\\)"):
        graph.trace(model)
    trace = graph.trace(model, unpruned_layers=["opaque"])
    assert trace.group_names == ("b",)
    dense = costs.count(trace)
    opaque = 3 * 3 * 6 * 5
    assert dense["params"] == graph.kernel_weights(model) == 3 * 3 * 3 * 4 + 3 * 3 * 4 * 6 + opaque + 5 * 7 + 7 * 3
    assert dense["macs"] == (3 * 3 * 3 * 4 + 3 * 3 * 4 * 6 + opaque + 5 * 7) * 64 + 7 * 3
    half = costs.count(trace, {"b": [True, False] * 3 + [True]})
    assert half["params"] == dense["params"] - 3 * 5 - 3 * 3 and half["macs"] == dense["macs"] - 3 * 5 * 64 - 3 * 3
    assert costs.MacModel(trace).dense == dense["macs"]


@pytest.mark.parametrize("build", [
    lambda: architectures.resnet50((32, 32, 3), 10, width_multiplier=0.25),
    lambda: keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), classes=10),
    lambda: keras.applications.EfficientNetB0(weights=None, input_shape=(32, 32, 3), classes=10),
    lambda: keras.applications.ConvNeXtTiny(weights=None, input_shape=(32, 32, 3), classes=10),
], ids=["resnet50", "MobileNetV2", "EfficientNetB0", "ConvNeXtTiny"])
def test_the_dense_count_is_the_sum_of_the_models_kernels(build):
    model = build()
    assert costs.profile(model)["params"] == graph.kernel_weights(model)


@pytest.mark.parametrize("build", [tiny_chain, tiny_depthwise, "resnet50"])
def test_a_channels_cost_is_what_removing_it_alone_saves(build):
    """`channel_costs` (the ranking of --saliency=per_mac) is the dense MACs minus the MACs without that channel,
    a shared residual channel counted in every layer it feeds or leaves."""
    model = architectures.get(build, (32, 32, 3), 10, width_multiplier=0.125) if isinstance(build, str) else build()
    trace = graph.trace(model)
    mac_model = costs.MacModel(trace)
    dense = costs.count(trace)["macs"]
    for group, widths_costs in zip(trace.groups, mac_model.channel_costs()):
        assert len(widths_costs) == group.width
        without_first = {group.name: [c != 0 for c in range(group.width)]}
        assert widths_costs[0] == dense - costs.count(trace, without_first)["macs"]
