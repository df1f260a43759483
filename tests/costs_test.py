"""Params and MACs as the paper counts them (method.md section 6)."""

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
