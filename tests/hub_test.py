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


def _classifier(family):
    """A small keras_hub classifier of each family, its backbone reading `(None, None, 3)` images when it can."""
    m = keras_hub.models
    if family.startswith("resnet"):
        block, pre, stem = {"resnet_v1": ("bottleneck_block", False, [64]), "resnet_v2": ("basic_block", True, [64]),
                            "resnet_vd": ("bottleneck_block_vd", False, [16, 16, 64])}[family]
        backbone = m.ResNetBackbone(input_conv_filters=stem, input_conv_kernel_sizes=[3] * len(stem),
                                    stackwise_num_filters=[64, 64], stackwise_num_blocks=[1, 1],
                                    stackwise_num_strides=[1, 2], block_type=block, use_pre_activation=pre,
                                    image_shape=OPEN)
        return m.ResNetImageClassifier(backbone=backbone, num_classes=4)
    if family == "mobilenet":  # squeeze-and-excitation with keras.ops.mean, blocks as subclassed layers
        backbone = m.MobileNetBackbone(
            stackwise_expansion=[[40], [64]], stackwise_num_blocks=[1, 1], stackwise_num_filters=[[16], [24]],
            stackwise_kernel_size=[[3], [5]], stackwise_num_strides=[[2], [2]], stackwise_se_ratio=[[None], [0.25]],
            stackwise_activation=[["relu"], ["hard_swish"], ["hard_swish"]], stackwise_padding=[[1], [2]],
            output_num_filters=64, depthwise_filters=8, depthwise_stride=2, depthwise_residual=False,
            squeeze_and_excite=0.5, last_layer_filter=48, image_shape=OPEN)
        return m.MobileNetImageClassifier(backbone=backbone, num_classes=4)
    if family == "efficientnet_v2":  # fused blocks: subclassed layers of standard sublayers, inlined
        backbone = m.EfficientNetBackbone(
            width_coefficient=0.25, depth_coefficient=0.25, stackwise_kernel_sizes=[3] * 4,
            stackwise_num_repeats=[1, 2, 2, 2], stackwise_input_filters=[24, 24, 48, 64],
            stackwise_output_filters=[24, 48, 64, 128], stackwise_expansion_ratios=[1, 4, 4, 4],
            stackwise_squeeze_and_excite_ratios=[0, 0, 0, 0.25], stackwise_strides=[1, 2, 2, 2],
            stackwise_block_types=["fused"] * 3 + ["unfused"], stackwise_force_input_filters=[0] * 4,
            stackwise_nores_option=[False] * 4, input_shape=OPEN)
        return m.EfficientNetImageClassifier(backbone=backbone, num_classes=4)
    if family == "cspnet":  # keras.ops.split of the channel axis
        backbone = m.CSPNetBackbone(
            stem_filters=16, stem_kernel_size=3, stem_strides=1, stackwise_strides=2, stackwise_depth=[1, 1],
            stackwise_num_filters=[16, 24], image_shape=OPEN, down_growth=True, bottle_ratio=(0.5, 1.0),
            block_ratio=(1.0, 0.5), expand_ratio=(2.0, 1.0), block_type="dark_block", stage_type="csp",
            stem_padding="same")
        return m.CSPNetImageClassifier(backbone=backbone, num_classes=4)
    if family == "densenet":
        return m.DenseNetImageClassifier(
            backbone=m.DenseNetBackbone(stackwise_num_repeats=[2, 2], growth_rate=8, image_shape=OPEN), num_classes=4)
    if family == "xception":
        backbone = m.XceptionBackbone(stackwise_conv_filters=[[16, 32], [64, 64]], stackwise_pooling=[False, True],
                                      image_shape=OPEN)
        return m.XceptionImageClassifier(backbone=backbone, num_classes=4)
    if family == "hgnetv2":  # learnable affine blocks: scalar weights of their own, acting on each channel
        backbone = m.HGNetV2Backbone(
            embedding_size=16, stem_channels=[3, 8, 16], hidden_act="relu", use_learnable_affine_block=True,
            image_shape=OPEN, depths=[1], hidden_sizes=[32], stackwise_stage_filters=[[16, 8, 32, 1, 1, 3]],
            apply_downsample=[False], use_lightweight_conv_block=[True])
        return m.HGNetV2ImageClassifier(backbone=backbone, preprocessor=None, num_classes=4)
    if family == "vit":  # the MLP's hidden units are prunable; the residual stream passes LayerNorms
        backbone = m.ViTBackbone(image_shape=SHAPE, patch_size=(8, 8), num_layers=2, hidden_dim=16, num_heads=2,
                                 mlp_dim=32)
        return m.ViTImageClassifier(backbone=backbone, num_classes=4)
    if family == "deit":  # its encoder blocks return (outputs, None): each is inlined as a model of its own
        backbone = m.DeiTBackbone(image_shape=SHAPE, patch_size=8, num_layers=2, hidden_dim=16, num_heads=2,
                                  intermediate_dim=32)
        return m.DeiTImageClassifier(backbone=backbone, num_classes=4)
    raise ValueError(family)


FAMILIES = ["resnet_v1", "resnet_v2", "resnet_vd", "mobilenet", "efficientnet_v2", "cspnet", "densenet", "xception",
            "hgnetv2", "vit", "deit"]


@pytest.mark.parametrize("family", FAMILIES)
def test_a_keras_hub_classifier_prunes_exactly(family):
    model = randomize(_classifier(family))
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
    if family == "vit":  # one group per block: its MLP's hidden units
        assert [cascade.trace.origin[g.name].split("/")[-3:] for g in cascade.trace.groups] == [
            ["transformer_block_1", "mlp", "dense_1"], ["transformer_block_2", "mlp", "dense_1"]]
    if family == "deit":
        assert [cascade.trace.origin[g.name].split("/")[-3:] for g in cascade.trace.groups] == [
            ["transformer_block_1", "mlp", "dense"], ["transformer_block_2", "mlp", "dense"]]


def test_a_transformer_whose_sizes_are_read_at_run_time_is_refused_in_one_line():
    """MiT's MixFFN reshapes with the batch size read at run time: it cannot be recorded, stays whole, and its MACs
    cannot be counted at a fixed image size; said in one line before anything trains."""
    backbone = keras_hub.models.MiTBackbone(
        layerwise_depths=[1, 1], image_shape=SHAPE, hidden_dims=[8, 16], num_layers=2, layerwise_num_heads=[1, 2],
        layerwise_sr_ratios=[8, 4], max_drop_path_rate=0.0, layerwise_patch_sizes=[7, 3], layerwise_strides=[4, 2])
    model = keras_hub.models.MiTImageClassifier(backbone=backbone, num_classes=4)
    with pytest.raises(ValueError) as error:
        Cascade(model, [0.5, 0.0], input_shape=SHAPE)
    message = str(error.value)
    assert "\n" not in message and "'mix_ffn' (MixFFN" in message and "MACs cannot be counted" in message


ISSUE_HGNETV2 = dict(depths=[1, 1, 1], embedding_size=16, hidden_sizes=[32, 64, 128], stem_channels=[3, 8, 16],
                     hidden_act="relu", use_learnable_affine_block=False,
                     stackwise_stage_filters=[(16, 8, 32, 1, 1, 3), (32, 16, 64, 1, 1, 3), (64, 32, 128, 1, 1, 3)],
                     apply_downsample=[False, True, True], use_lightweight_conv_block=[False, False, False],
                     image_shape=SHAPE)


@pytest.mark.parametrize("family", ["hgnetv2_identity", "vit", "deit"])
def test_a_slim_keras_hub_student_saves_and_loads_as_keras(family, tmp_path):
    """HGNetV2 builds keras.layers.Identity(dtype=DTypePolicy(...)), which Keras writes no config for; ViT's and
    DeiT's embeddings write entries their constructors refuse. Their slim students save and load all the same, and
    compute what they did."""
    if family == "hgnetv2_identity":
        model = keras_hub.models.HGNetV2ImageClassifier(backbone=keras_hub.models.HGNetV2Backbone(**ISSUE_HGNETV2),
                                                         num_classes=10, preprocessor=None)
    else:
        model = _classifier(family)
    model = randomize(model)
    trace = graph.trace(model, input_shape=SHAPE)
    slimming.rehearse(trace, original=model)  # the check a run makes before training: no error
    rng = np.random.RandomState(1)
    slim = slimming.slim_model(trace, {g.name: rng.rand(g.width) < 0.5 for g in trace.groups}, name="student")
    path = str(tmp_path / "student.keras")
    slim.save(path)
    images = rng.normal(size=(2,) + SHAPE).astype("float32")
    np.testing.assert_allclose(keras.saving.load_model(path)(images), slim(images), rtol=1e-6, atol=1e-6)


def test_resnet_v2s_minus_infinity_padding_becomes_edge_padding_and_its_int8_file_runs(tmp_path):
    """keras_hub's pre-activation ResNet pads with -inf before a valid 3x3 max pool; LiteRT aborted on its int8 file.
    Edge padding gives every window the same maximum, and the int8 file runs."""
    from hsd_tf import export  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    model = randomize(_classifier("resnet_v2"))
    trace = graph.trace(model, input_shape=SHAPE)
    slim = slimming.slim_model(trace, {}, name="student")
    rng = np.random.RandomState(0)
    images = rng.normal(size=(16,) + SHAPE).astype("float32")
    np.testing.assert_allclose(slim(images), model(images), rtol=1e-5, atol=1e-5)
    ops = [type(op).__name__ for op in slim.operations]
    assert "Pad" in ops  # the replacement, a mirror of one row and column
    labels = np.argmax(model(images), -1)
    test = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)
    entries = export.export_and_verify(slim, str(tmp_path), ["tflite", "tflite_int8"], test, images)
    assert "error" not in entries["tflite"] and entries["tflite"]["agreement"] == 1.0
    assert "agreement" in entries["tflite_int8"], entries["tflite_int8"]
