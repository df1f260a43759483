"""The built-in architectures as Keras models, --arch resolution, and the Keras ResNet50 import."""

import keras
import numpy as np
import pytest

from hsd_tf import architectures, costs, graph, teacher

from conftest import kernel_params


@pytest.mark.parametrize("name,shape,classes", [("vgg16", (32, 32, 3), 10), ("resnet50", (64, 64, 3), 7),
                                                ("mobilenet_v1", (32, 32, 3), 100)])
def test_dense_model_matches_the_accounting(name, shape, classes):
    model = architectures.get(name, shape, classes, width_multiplier=0.25)
    assert model.output_shape == (None, classes)
    assert kernel_params(model) == costs.profile(model)["params"]


def test_resnet_stage_outputs_share_one_mask_group_and_hints_are_block_outputs():
    trace = graph.trace(architectures.resnet50((32, 32, 3), 10, width_multiplier=0.125))
    stage = next(g for g in trace.groups if "conv3_block1_0_conv" in g.members)
    assert set(stage.members) == {"conv3_block1_0_conv", "conv3_block1_3_conv", "conv3_block2_3_conv",
                                  "conv3_block3_3_conv", "conv3_block4_3_conv"}
    assert trace.hint_layers == ("conv5_block1_out", "conv5_block2_out", "conv5_block3_out")


def test_vgg16_hints_are_its_last_three_conv_units():
    trace = graph.trace(architectures.vgg16(width_multiplier=0.125))
    assert trace.hint_layers == ("block5_conv1_relu", "block5_conv2_relu", "block5_conv3_relu")


def test_mobilenet_masks_pointwise_convs_and_depthwise_convs_follow_them():
    trace = graph.trace(architectures.mobilenet_v1(width_multiplier=0.125))
    assert all(g.startswith("conv_pw_") for g in trace.group_names)
    steps = trace.first_steps()
    pw_1 = trace.group_names.index("conv_pw_1")
    assert {c[0] for c in steps["conv_dw_2"].channels_out} == {pw_1}
    assert set(steps["conv_dw_1"].channels_out) == {None}  # the stem's channels are kept


def test_unknown_arch_and_bad_width_echo_the_value(tmp_path):
    with pytest.raises(ValueError, match="arch='vgg19'"):
        architectures.get("vgg19", (32, 32, 3), 10)
    with pytest.raises(ValueError, match="width_multiplier=0"):
        architectures.get("vgg16", (32, 32, 3), 10, width_multiplier=0)
    with pytest.raises(ValueError, match="no model 'ResNet9'"):
        architectures.get("keras.applications.ResNet9", (32, 32, 3), 10)
    with pytest.raises(ValueError, match="No saved model"):
        architectures.get(str(tmp_path / "missing.keras"), (32, 32, 3), 10)
    with pytest.raises(ValueError, match="width_multiplier=0.5"):
        architectures.get("keras.applications.MobileNetV2", (32, 32, 3), 10, width_multiplier=0.5)


def test_keras_applications_are_built_for_the_dataset_with_logits():
    model = architectures.get("keras.applications.MobileNetV2", (32, 32, 3), 7)
    assert model.input_shape == (None, 32, 32, 3) and model.output_shape == (None, 7)
    assert model.layers[-1].activation is keras.activations.linear
    with pytest.raises(ValueError, match="cannot be built for input shape"):
        architectures.get("keras.applications.Xception", (32, 32, 3), 7)


def test_a_saved_model_is_loaded_checked_and_its_final_activation_taken_off_for_training(tmp_path):
    """The cascade trains on logits: the final softmax comes off (and is reported, to be put back on the student)."""
    x = keras.Input((8, 8, 3))
    y = keras.layers.Conv2D(4, 3, name="c")(x)
    y = keras.layers.Dense(5, activation="softmax", name="out")(keras.layers.Flatten()(y))
    path = str(tmp_path / "mine.keras")
    saved = keras.Model(x, y)
    saved.save(path)
    loaded = architectures.get(path, (8, 8, 3), 5)
    model, activations = architectures.without_final_activations(loaded)
    assert activations == ["softmax"]
    images = np.random.RandomState(0).normal(size=(2, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(loaded(images), saved(images), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(keras.ops.softmax(model(images)), saved(images), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="5 outputs, the dataset 10 classes"):
        architectures.get(path, (8, 8, 3), 10)
    with pytest.raises(ValueError, match=r"inputs of shape \(8, 8, 3\)"):
        architectures.get(path, (32, 32, 3), 5)


@pytest.mark.parametrize("end, found", [
    (lambda y: keras.layers.Dense(3, activation="sigmoid")(y), ["sigmoid"]),
    (lambda y: keras.layers.Softmax()(keras.layers.Dense(3)(y)), ["softmax"]),
    (lambda y: keras.layers.Activation("softmax")(keras.layers.Dense(3)(y)), ["softmax"]),
    (lambda y: keras.layers.Softmax(axis=1)(keras.layers.Dense(3)(y)), [None]),  # not over the classes: kept
    (lambda y: [keras.layers.Dense(3, activation="softmax")(y), keras.layers.Dense(1)(y)], ["softmax", None]),
])
def test_each_outputs_final_activation_is_found_and_taken_off(end, found):
    x = keras.Input((4, 6))
    model = keras.Model(x, end(keras.layers.Dense(5)(x)))
    stripped, activations = architectures.without_final_activations(model)
    assert activations == found
    sample = np.random.RandomState(0).normal(size=(2, 4, 6)).astype("float32")
    for activation, original, logits in zip(activations, keras.tree.flatten(model(sample)),
                                            keras.tree.flatten(stripped(sample))):
        again = {"softmax": keras.ops.softmax, "sigmoid": keras.ops.sigmoid, None: lambda t: t}[activation](logits)
        np.testing.assert_allclose(again, original, rtol=1e-5, atol=1e-6)


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


@pytest.mark.parametrize("kind", ["functional", "sequential"])
def test_a_saved_models_input_shape_is_read_without_loading_it(tmp_path, monkeypatch, kind):
    """`--arch=PATH.keras`'s input shape comes from the file's config.json: the model is not loaded for it."""
    if kind == "functional":
        inputs = keras.Input((28, 20, 1))
        model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(inputs)))
    else:
        model = keras.Sequential([keras.Input((28, 20, 1)), keras.layers.Flatten(), keras.layers.Dense(3)])
    path = str(tmp_path / "m.keras")
    model.save(path)

    def refuse(_):
        raise AssertionError("loaded")

    monkeypatch.setattr(architectures, "load_saved", refuse)
    assert architectures.input_shape_of(path) == (28, 20, 1)
