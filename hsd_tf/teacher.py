"""The pre-trained teacher: load one, import Keras' ImageNet ResNet50, or train one."""

import keras
import numpy as np

from hsd_tf import network


def load(path: str, architecture) -> keras.Model:
    """Loads a dense teacher of `architecture` from a .keras or .weights.h5 file.

    Args:
        path: A `.keras` model saved by this tool (or any model with the same
            layer names), or a `.weights.h5` file of `network.build_model`.
        architecture: The full-width `Architecture`.

    Returns:
        The dense model, built from `architecture`, with the file's weights.
    """
    model = network.build_model(architecture, name="teacher")
    if path.endswith(".weights.h5"):
        model.load_weights(path)
        return model
    source = keras.saving.load_model(path, compile=False)
    for layer in model.layers:
        if layer.weights:
            layer.set_weights(source.get_layer(layer.name).get_weights())
    return model


def from_keras_resnet50(architecture, source: keras.Model = None) -> keras.Model:
    """The Keras applications ResNet50 as a dense teacher of our resnet50.

    Keras' convs carry biases; ours do not, since BatchNorm follows. A bias b
    before BN is the same as subtracting b from BN's moving mean, so the
    imported network computes the same function at inference.

    Args:
        architecture: `architectures.resnet50` at width 1.
        source: The Keras model; default downloads the ImageNet weights.

    Returns:
        The dense model with the source's weights.
    """
    if source is None:
        source = keras.applications.ResNet50(weights="imagenet", input_shape=architecture.input_shape)
    model = network.build_model(architecture, name="teacher")
    for node in architecture.nodes:
        if node.op == "conv":
            kernel, bias = source.get_layer(node.name).get_weights()
            model.get_layer(node.name).set_weights([kernel])
            bn_name = network.layer_name(node, "bn")
            gamma, beta, mean, variance = source.get_layer(bn_name).get_weights()
            model.get_layer(bn_name).set_weights([gamma, beta, mean - bias, variance])
        elif node.op == "dense":
            model.get_layer(node.name).set_weights(source.get_layer(node.name).get_weights())
    return model


def compiled_for_training(architecture, data, config) -> keras.Model:
    """The dense teacher, compiled for training from scratch with cross-entropy.

    SGD with Nesterov momentum and weight decay, cosine learning rate from
    `config.teacher_learning_rate` to 0 over `config.teacher_epochs`.

    Args:
        architecture: The full-width `Architecture`.
        data: `hsd_tf.data.Data`.
        config: `hsd_tf.config.Config`.

    Returns:
        The compiled, untrained model.
    """
    model = network.build_model(architecture, name="teacher")
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
