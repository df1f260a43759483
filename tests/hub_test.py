"""keras_hub's image classifiers, built from their constructors with random weights: pruned exactly or refused in
one line, never silently wrong. Skipped where keras_hub is not installed (CI installs it: .ci/run)."""

import keras
import numpy as np
import pytest

from hsd_tf import costs, graph, slimming
from hsd_tf.cascade import Cascade

from testing import randomize

keras_hub = pytest.importorskip("keras_hub")

SHAPE = (32, 32, 3)
OPEN = (None, None, 3)


def _backbone(family):
    m = keras_hub.models
    if family == "resnet_v1":
        return m.ResNetImageClassifier, m.ResNetBackbone(
            input_conv_filters=[64], input_conv_kernel_sizes=[7], stackwise_num_filters=[64, 64],
            stackwise_num_blocks=[1, 1], stackwise_num_strides=[1, 2], block_type="bottleneck_block",
            image_shape=OPEN)
    if family == "resnet_vd":
        return m.ResNetImageClassifier, m.ResNetBackbone(
            input_conv_filters=[16, 16, 64], input_conv_kernel_sizes=[3, 3, 3], stackwise_num_filters=[64, 64],
            stackwise_num_blocks=[1, 1], stackwise_num_strides=[1, 2], block_type="bottleneck_block_vd",
            image_shape=OPEN)
    if family == "efficientnet_v2":  # fused blocks: subclassed layers of standard sublayers, inlined
        return m.EfficientNetImageClassifier, m.EfficientNetBackbone(
            width_coefficient=0.25, depth_coefficient=0.25, stackwise_kernel_sizes=[3] * 4,
            stackwise_num_repeats=[1, 2, 2, 2], stackwise_input_filters=[24, 24, 48, 64],
            stackwise_output_filters=[24, 48, 64, 128], stackwise_expansion_ratios=[1, 4, 4, 4],
            stackwise_squeeze_and_excite_ratios=[0, 0, 0, 0.25], stackwise_strides=[1, 2, 2, 2],
            stackwise_block_types=["fused"] * 3 + ["unfused"], stackwise_force_input_filters=[0] * 4,
            stackwise_nores_option=[False] * 4, input_shape=OPEN)
    if family == "densenet":
        return m.DenseNetImageClassifier, m.DenseNetBackbone(stackwise_num_repeats=[2, 2], growth_rate=8,
                                                             image_shape=OPEN)
    if family == "xception":
        return m.XceptionImageClassifier, m.XceptionBackbone(
            stackwise_conv_filters=[[16, 32], [64, 64]], stackwise_pooling=[False, True], image_shape=OPEN)
    raise ValueError(family)


@pytest.mark.parametrize("family", ["resnet_v1", "resnet_vd", "efficientnet_v2", "densenet", "xception"])
def test_a_keras_hub_classifier_with_open_input_sizes_prunes_exactly(family):
    task, backbone = _backbone(family)
    model = randomize(task(backbone=backbone, num_classes=4))
    rng = np.random.RandomState(0)
    images = rng.normal(size=(4,) + SHAPE).astype("float32")
    labels = rng.randint(0, 4, size=4).astype("int32")
    cascade = Cascade(model, [0.5, 0.0], teacher=model, input_shape=SHAPE)
    cascade.initialize_from(model)
    cascade.compile(optimizer=keras.optimizers.SGD(0.01), score_optimizer=keras.optimizers.SGD(1.0))
    cascade.train_on_batch(images, labels)
    slim = slimming.slim_view(cascade, 0, frozen=False)
    masked = cascade.view_forward(0, images, training=False, frozen=False)[0].numpy()
    assert np.abs(slim(images, training=False).numpy() - masked).max() <= 1e-5 * np.abs(masked).max()
    dense = costs.count(cascade.trace)
    assert dense["params"] == graph.kernel_weights(model)  # every kernel of the model, inside its blocks too
    assert costs.profile(slim)["params"] == cascade.view_costs(frozen=False)[0]["params"] < dense["params"]


def test_a_keras_hub_layer_the_tracer_cannot_follow_is_named_in_one_line():
    """MobileNet's squeeze-and-excitation takes a mean over the spatial axes with keras.ops (issue 19)."""
    backbone = keras_hub.models.MobileNetBackbone(
        stackwise_expansion=[[40], [64]], stackwise_num_blocks=[1, 1], stackwise_num_filters=[[16], [24]],
        stackwise_kernel_size=[[3], [5]], stackwise_num_strides=[[2], [2]], stackwise_se_ratio=[[None], [0.25]],
        stackwise_activation=[["relu"], ["hard_swish"], ["hard_swish"]], stackwise_padding=[[1], [2]],
        output_num_filters=64, depthwise_filters=8, depthwise_stride=2, depthwise_residual=False,
        squeeze_and_excite=0.5, last_layer_filter=48, image_shape=OPEN)
    model = keras_hub.models.MobileNetImageClassifier(backbone=backbone, num_classes=4)
    with pytest.raises(graph.UnsupportedLayerError) as error:
        graph.trace(model, input_shape=SHAPE)
    message = str(error.value)
    assert "\n" not in message and "(Mean, at mobile_net_backbone/" in message and "--unpruned_layers=" in message
