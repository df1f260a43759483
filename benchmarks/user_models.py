"""The models users bring that are not image classifiers, as keras.io's examples make them, compiled with their
own loss and metrics: benchmarks/beyond_classifiers.py trains them on real data, benchmarks/step_cost.py times
their cascade steps."""

import keras


def timeseries_model(shape, classes):
    """keras.io, "Timeseries classification from scratch": its `make_model`."""
    inputs = keras.layers.Input(shape)
    x = inputs
    for _ in range(3):
        x = keras.layers.ReLU()(keras.layers.BatchNormalization()(keras.layers.Conv1D(64, 3, padding="same")(x)))
    outputs = keras.layers.Dense(classes, activation="softmax")(keras.layers.GlobalAveragePooling1D()(x))
    model = keras.Model(inputs, outputs)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["sparse_categorical_accuracy"])
    return model


def regression_model(shape, train_x):
    """Spectra to a value: the inputs standardised inside the model, Conv1D units, a dense head, MSE, MAE."""
    inputs = keras.layers.Input(shape)
    normalize = keras.layers.Normalization(axis=None)
    normalize.adapt(train_x)
    x = normalize(inputs)
    for filters in (32, 64):
        x = keras.layers.ReLU()(keras.layers.BatchNormalization()(keras.layers.Conv1D(filters, 5, padding="same")(x)))
        x = keras.layers.MaxPooling1D()(x)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization()(keras.layers.Conv1D(64, 3, padding="same")(x)))
    x = keras.layers.Dense(64, activation="relu")(keras.layers.Flatten()(x))
    model = keras.Model(inputs, keras.layers.Dense(1)(x))
    model.compile(keras.optimizers.Adam(1e-3), "mse", metrics=["mae"])
    return model


def unet_model(shape, classes, width=0.5):
    """keras.io, "Image segmentation with a U-Net-like architecture": its `get_model`, every width times `width`."""
    layers = keras.layers
    scaled = lambda filters: int(filters * width)  # noqa: E731
    inputs = keras.Input(shape)
    x = layers.Activation("relu")(layers.BatchNormalization()(layers.Conv2D(scaled(32), 3, strides=2,
                                                                             padding="same")(inputs)))
    previous = x
    for filters in (64, 128, 256):
        x = layers.Activation("relu")(x)
        x = layers.BatchNormalization()(layers.SeparableConv2D(scaled(filters), 3, padding="same")(x))
        x = layers.Activation("relu")(x)
        x = layers.BatchNormalization()(layers.SeparableConv2D(scaled(filters), 3, padding="same")(x))
        x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
        residual = layers.Conv2D(scaled(filters), 1, strides=2, padding="same")(previous)
        x = previous = layers.add([x, residual])
    for filters in (256, 128, 64, 32):
        x = layers.Activation("relu")(x)
        x = layers.BatchNormalization()(layers.Conv2DTranspose(scaled(filters), 3, padding="same")(x))
        x = layers.Activation("relu")(x)
        x = layers.BatchNormalization()(layers.Conv2DTranspose(scaled(filters), 3, padding="same")(x))
        x = layers.UpSampling2D(2)(x)
        residual = layers.Conv2D(scaled(filters), 1, padding="same")(layers.UpSampling2D(2)(previous))
        x = previous = layers.add([x, residual])
    outputs = layers.Conv2D(classes, 3, activation="softmax", padding="same")(x)
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy",
                  metrics=[keras.metrics.MeanIoU(classes, sparse_y_pred=False, name="mean_iou"), "accuracy"])
    return model
