"""Architecture graphs, the dense builder, and the Keras ResNet50 import."""

import keras
import numpy as np
import pytest

from hsd_tf import architectures, costs, network, teacher
from hsd_tf.architectures import Architecture, Node

from conftest import TOPOLOGIES, kernel_params


@pytest.mark.parametrize("name,shape,classes", [("vgg16", (32, 32, 3), 10), ("resnet50", (64, 64, 3), 7),
                                                ("mobilenet_v1", (32, 32, 3), 100)])
def test_dense_model_matches_the_accounting(name, shape, classes):
    architecture = architectures.get(name, shape, classes, width_multiplier=0.25)
    model = network.build_model(architecture)
    assert model.output_shape == (None, classes)
    assert kernel_params(model) == costs.profile(architecture)["params"]


def test_any_widths_give_a_smaller_network_of_the_same_family():
    architecture = architectures.vgg16(width_multiplier=0.25)
    narrow = architecture.with_widths({g: 1 for g in architecture.group_names})
    model = network.build_model(narrow)
    assert model(np.zeros((2, 32, 32, 3), np.float32)).shape == (2, 10)
    assert kernel_params(model) == costs.profile(narrow)["params"]
    assert costs.profile(narrow)["macs"] < costs.profile(architecture)["macs"]


def test_resnet_stage_outputs_share_one_mask_group():
    architecture = architectures.resnet50()
    assert architecture.group_members("conv3_out") == (
        "conv3_block1_0_conv", "conv3_block1_3_conv", "conv3_block2_3_conv",
        "conv3_block3_3_conv", "conv3_block4_3_conv")
    assert architecture.channel_groups["conv3_block4_add"] == "conv3_out"
    assert architecture.hint_nodes == ("conv5_block1_add", "conv5_block2_add", "conv5_block3_add")


def test_mobilenet_masks_pointwise_convs_only():
    architecture = architectures.mobilenet_v1()
    assert all(g.startswith("conv_pw_") for g in architecture.group_names)
    assert architecture.channel_groups["conv_dw_2"] == "conv_pw_1"
    assert architecture.channel_groups["conv_dw_1"] is None


def test_an_add_of_different_groups_is_refused():
    nodes = (Node("input", "input"), Node("stem", "conv", ("input",), filters=2),
             Node("a", "conv", ("stem",), group="a"), Node("b", "conv", ("stem",), group="b"),
             Node("sum", "add", ("a", "b")))
    with pytest.raises(ValueError, match="different mask groups"):
        Architecture("bad", (8, 8, 3), 2, nodes, (("a", 2), ("b", 2)))


@pytest.mark.parametrize("topology", sorted(TOPOLOGIES))
def test_config_round_trip(topology):
    architecture = TOPOLOGIES[topology]()
    assert Architecture.from_config(architecture.get_config()) == architecture


def test_unknown_arch_and_bad_width_echo_the_value():
    with pytest.raises(ValueError, match="arch='vgg19'"):
        architectures.get("vgg19", (32, 32, 3), 10)
    with pytest.raises(ValueError, match="width_multiplier=0"):
        architectures.get("vgg16", (32, 32, 3), 10, width_multiplier=0)


def test_keras_applications_resnet50_imports_exactly():
    """Keras' biased convs fold into BatchNorm: same logits as the source model."""
    source = keras.applications.ResNet50(weights=None, input_shape=(32, 32, 3), classes=5,
                                         classifier_activation=None)
    rng = np.random.RandomState(0)
    for layer in source.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.1, beta.shape),
                               rng.normal(0, 0.1, mean.shape), rng.uniform(0.5, 1.5, var.shape)])
        elif isinstance(layer, keras.layers.Conv2D):
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel, rng.normal(0, 0.1, bias.shape)])
    ours = teacher.from_keras_resnet50(architectures.resnet50((32, 32, 3), 5), source)
    images = rng.normal(size=(2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(ours(images).numpy(), source(images).numpy(), rtol=1e-3, atol=1e-4)
