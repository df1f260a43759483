"""The pre-trained teacher: load one, import Keras' ImageNet ResNet50, or train one."""

import keras
import numpy as np

from hsd_tf import graph


def load(path: str, model: keras.Model) -> keras.Model:
    """Gives `model` the weights of a saved teacher.

    Args:
        path: A `.keras` model of the same structure (matched by layer name),
            or a `.weights.h5` file of a model built like `model`.
        model: The dense model of `--arch` (`architectures.get`).

    Returns:
        `model`, with the file's weights.
    """
    if path.endswith(".weights.h5"):
        model.load_weights(path)
        return model
    source = graph.layers_by_name(keras.saving.load_model(path, compile=False))
    for name, layer in graph.layers_by_name(model).items():
        if layer.weights:
            layer.set_weights(source[name].get_weights())
    return model


def from_keras_resnet50(model: keras.Model, source: keras.Model = None) -> keras.Model:
    """Gives our resnet50 the weights of the Keras applications ResNet50.

    Keras' convs carry biases; ours do not, since BatchNorm follows. A bias b
    before BN is the same as subtracting b from BN's moving mean, so the
    imported network computes the same function at inference.

    Args:
        model: `architectures.resnet50` at width 1.
        source: The Keras model; default downloads the ImageNet weights.

    Returns:
        `model`, with the source's weights.
    """
    if source is None:
        source = keras.applications.ResNet50(weights="imagenet", input_shape=model.inputs[0].shape[1:])
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kernel, bias = source.get_layer(layer.name).get_weights()
            layer.set_weights([kernel])
            bn_name = layer.name[: -len("_conv")] + "_bn"
            gamma, beta, mean, variance = source.get_layer(bn_name).get_weights()
            model.get_layer(bn_name).set_weights([gamma, beta, mean - bias, variance])
        elif isinstance(layer, keras.layers.Dense):
            layer.set_weights(source.get_layer(layer.name).get_weights())
    return model


def compiled_for_training(model: keras.Model, data, config) -> keras.Model:
    """Compiles a model for training from its current weights with cross-entropy.

    SGD with Nesterov momentum and weight decay, cosine learning rate from
    `config.teacher_learning_rate` to 0 over `config.teacher_epochs`.

    Args:
        model: The dense model (logits out).
        data: `hsd_tf.data.Data`.
        config: `hsd_tf.config.Config`.

    Returns:
        `model`, compiled.
    """
    schedule = keras.optimizers.schedules.CosineDecay(
        config.teacher_learning_rate, config.teacher_epochs * data.steps_per_epoch
    )
    model.compile(
        optimizer=keras.optimizers.SGD(
            schedule, momentum=config.momentum, nesterov=True, weight_decay=config.weight_decay
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="acc")],
    )
    return model


def accuracy(model: keras.Model, dataset) -> float:
    """Top-1 accuracy of a logits model over a dataset."""
    correct = total = 0
    for images, labels in dataset:
        predictions = np.argmax(model(images, training=False), axis=-1)
        correct += int(np.sum(predictions == labels.numpy()))
        total += len(predictions)
    return correct / total
