"""Every model family that can be built offline, through the whole pipeline: pruned exactly, or refused in one line.

    python benchmarks/any_model.py                                  # every family (docs/any_model.md's table)
    python benchmarks/any_model.py --models=hub.mobilenet,app.ResNet50 --output=/tmp/table.md
    python benchmarks/any_model.py --models=beyond --output=/tmp/beyond.md  # "Beyond classifiers" only

The families: keras.applications (one model per family, weights=None), keras_hub's image classifiers
built from their constructors with random weights (when keras_hub is installed), tutorial-style models
(augmentation, Rescaling and Resizing layers inside, a keras.applications base with its own head, a base
built without an input size), and models beyond image classifiers (`--models=beyond` for only them, the table of
docs/any_model.md's "Beyond classifiers"): keras.io's segmentation U-Net, a U-Net with concatenated skips, a
denoising autoencoder, the Conv1D time-series classifier, the Embedding + Conv1D text classifier, the Conv3D CT
classifier, an image and a vector in, keras.io's siamese network, a class and a value out, keras_hub's DeepLabV3
and BASNet segmenters, RetinaNet detector, MobileNetV5 and Swin Transformer classifiers. Each is compiled with
its own loss and metrics (keras_hub's tasks with their `compile()` defaults) and pruned through its task
(`hsd_tf.task`), or refused in hsd_tf's one line; a model a refusal names a way out for (a layer to keep whole,
a loss to give) has a second row that takes it.

Per model, with random BatchNorm statistics and biases so that a masked channel would show if it
leaked: the mask groups; the stages (spatial sizes at which kernels larger than 1x1 run, the stem
aside) where some layer's output channels are in a group; params of the dense model against the sum of its conv and dense kernels; params
and MACs of a student keeping 50% of the prunable filters (L1-initialised masks, the command line's
per-layer floor: at least 2 filters and 4% of each layer); one cascade training step
(student at prune ratio 0.5 and the full top view, SGD, batch 8); the student's slim model against its
masked view on the same images, max |masked - slim| / max |masked logit| (for several outputs, the largest over
the outputs of that ratio, each against its own largest value); then the slim student, its final activations put
back as a run exports it, to float32 and int8 TFLite, each run with LiteRT in a child process on the images: a
classifier's float file must agree with Keras (top-1 on at least 99% of them), any other's every output be within
1e-3 of Keras' relative to its largest value; the int8 file's figures are reported. Beyond classifiers, the slim
student is also saved as `.keras` and loaded back. A model that is refused gets the one line hsd_tf gives.
"""

import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

flags.DEFINE_list("models", [], "Models of the zoo to run (default: all), e.g. app.ResNet50,hub.mobilenet; beyond: "
                  "every model beyond image classifiers.")
flags.DEFINE_integer("batch_size", 8, "Images in the cascade step, the comparison and the export checks.")
flags.DEFINE_string("output", None, "Also write the markdown table here.")
FLAGS = flags.FLAGS

APPLICATIONS = {  # one model per keras.applications family; inputs below 32x32 are refused, Keras' minimum where larger
    "ConvNeXtTiny": 32, "DenseNet121": 32, "EfficientNetB0": 32, "EfficientNetV2B0": 32, "InceptionResNetV2": 75,
    "InceptionV3": 75, "MobileNet": 32, "MobileNetV2": 32, "MobileNetV3Small": 32, "NASNetMobile": 32,
    "ResNet50": 32, "ResNet50V2": 32, "VGG16": 32, "Xception": 71,
}


def zoo() -> dict:
    """Name -> (what it is, builder returning (model, input shape))."""
    import keras  # pylint: disable=import-outside-toplevel

    from hsd_tf import architectures  # pylint: disable=import-outside-toplevel

    models = {f"app.{name}": (f"keras.applications.{name}, weights=None",
                              lambda name=name, side=side: (architectures.get(
                                  f"keras.applications.{name}", (side, side, 3), 10), (side, side, 3)))
              for name, side in APPLICATIONS.items()}
    models.update(tutorial_models(keras))
    try:
        import keras_hub  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    except ImportError:
        print("keras_hub is not installed: its classifiers are left out", flush=True)
    else:
        models.update(hub_models())
    models.update(beyond_models(keras))
    return models


def tutorial_models(keras) -> dict:
    """Models made the way the Keras guides make them."""
    layers = keras.layers

    def from_scratch():  # keras.io "Image classification from scratch": augmentation and Rescaling inside
        inputs = keras.Input((32, 32, 3))
        x = layers.RandomRotation(0.1)(layers.RandomFlip("horizontal")(inputs))
        x = layers.Rescaling(1.0 / 255)(x)
        x = layers.Activation("relu")(layers.BatchNormalization()(layers.Conv2D(32, 3, strides=2, padding="same")(x)))
        previous = x
        for size in (64, 128):
            x = layers.Activation("relu")(x)
            x = layers.BatchNormalization()(layers.SeparableConv2D(size, 3, padding="same")(x))
            x = layers.Activation("relu")(x)
            x = layers.BatchNormalization()(layers.SeparableConv2D(size, 3, padding="same")(x))
            x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
            residual = layers.Conv2D(size, 1, strides=2, padding="same")(previous)
            x = previous = layers.add([x, residual])
        x = layers.Activation("relu")(layers.BatchNormalization()(layers.SeparableConv2D(256, 3, padding="same")(x)))
        x = layers.Dropout(0.25)(layers.GlobalAveragePooling2D()(x))
        return keras.Model(inputs, layers.Dense(10, activation="softmax")(x)), (32, 32, 3)

    def transfer():  # keras.io "Transfer learning": a base with its own head, preprocess_input as ops
        base = keras.applications.MobileNetV2(weights=None, include_top=False, input_shape=(32, 32, 3), alpha=0.35)
        inputs = keras.Input((32, 32, 3))
        x = keras.applications.mobilenet_v2.preprocess_input(layers.RandomFlip("horizontal")(inputs))
        x = layers.Dropout(0.2)(layers.GlobalAveragePooling2D()(base(x, training=False)))
        return keras.Model(inputs, layers.Dense(10)(x)), (32, 32, 3)

    def open_sized_base():  # a base built without an input size, called on a sized input: None inside
        base = keras.applications.ResNet50V2(weights=None, include_top=False)
        inputs = keras.Input((32, 32, 3))
        return keras.Model(inputs, layers.Dense(10)(layers.GlobalAveragePooling2D()(base(inputs)))), (32, 32, 3)

    def resizing():  # a Resizing layer inside: Keras' own export ran BatchNorm on batch statistics
        model = keras.Sequential([keras.Input((48, 48, 3)), layers.Resizing(32, 32), layers.Rescaling(1.0 / 255),
                                  layers.Conv2D(16, 3, activation="relu"), layers.BatchNormalization(),
                                  layers.Conv2D(32, 3, activation="relu"), layers.BatchNormalization(),
                                  layers.MaxPooling2D(), layers.Conv2D(64, 3, activation="relu"),
                                  layers.GlobalAveragePooling2D(), layers.Dense(10)])
        return model, (48, 48, 3)

    def mnist():  # keras.io "Simple MNIST convnet": grey 28x28x1, a final softmax
        model = keras.Sequential([keras.Input((28, 28, 1)), layers.Conv2D(32, 3, activation="relu"),
                                  layers.MaxPooling2D(), layers.Conv2D(64, 3, activation="relu"),
                                  layers.MaxPooling2D(), layers.Flatten(), layers.Dropout(0.5),
                                  layers.Dense(10, activation="softmax")])
        return model, (28, 28, 1)

    return {
        "tutorial.from_scratch": ("augmentation, Rescaling, separable residual blocks, softmax", from_scratch),
        "tutorial.transfer": ("MobileNetV2 base + own head, preprocess_input ops, augmentation", transfer),
        "tutorial.open_sized_base": ("ResNet50V2 base built without input size, nested", open_sized_base),
        "tutorial.resizing": ("Sequential with Resizing and Rescaling inside", resizing),
        "tutorial.mnist": ("Sequential MNIST convnet, 28x28x1, softmax", mnist),
    }


def hub_models() -> dict:
    """keras_hub's image classifier families, small configurations, random weights, `(None, None, 3)` inputs."""
    import keras_hub  # pylint: disable=import-outside-toplevel

    m = keras_hub.models
    open_size = (None, None, 3)
    backbones = {
        "resnet_v1": (m.ResNetImageClassifier, lambda: m.ResNetBackbone(
            input_conv_filters=[64], input_conv_kernel_sizes=[7], stackwise_num_filters=[64, 64, 64],
            stackwise_num_blocks=[2, 2, 2], stackwise_num_strides=[1, 2, 2], block_type="bottleneck_block",
            image_shape=open_size)),
        "resnet_v2": (m.ResNetImageClassifier, lambda: m.ResNetBackbone(
            input_conv_filters=[64], input_conv_kernel_sizes=[7], stackwise_num_filters=[64, 64],
            stackwise_num_blocks=[2, 2], stackwise_num_strides=[1, 2], block_type="basic_block",
            use_pre_activation=True, image_shape=open_size)),
        "resnet_vd": (m.ResNetImageClassifier, lambda: m.ResNetBackbone(
            input_conv_filters=[32, 32, 64], input_conv_kernel_sizes=[3, 3, 3], stackwise_num_filters=[64, 64],
            stackwise_num_blocks=[2, 2], stackwise_num_strides=[1, 2], block_type="bottleneck_block_vd",
            image_shape=open_size)),
        "mobilenet": (m.MobileNetImageClassifier, lambda: m.MobileNetBackbone(
            stackwise_expansion=[[40, 56], [64, 144, 144]], stackwise_num_blocks=[2, 3],
            stackwise_num_filters=[[16, 16], [24, 24, 24]], stackwise_kernel_size=[[3, 3], [5, 5, 5]],
            stackwise_num_strides=[[2, 1], [2, 1, 1]], stackwise_se_ratio=[[None, None], [0.25, 0.25, 0.25]],
            stackwise_activation=[["relu", "relu"], ["hard_swish"] * 3, ["hard_swish"]],
            stackwise_padding=[[1, 1], [2, 2, 2]], output_num_filters=128, depthwise_filters=8,
            depthwise_stride=2, depthwise_residual=False, squeeze_and_excite=0.5, last_layer_filter=96,
            image_shape=open_size)),
        "efficientnet_v1": (m.EfficientNetImageClassifier, lambda: m.EfficientNetBackbone(
            width_coefficient=0.5, depth_coefficient=0.5, stackwise_kernel_sizes=[3, 3, 5, 3, 5, 5, 3],
            stackwise_num_repeats=[1, 2, 2, 3, 3, 4, 1], stackwise_input_filters=[32, 16, 24, 40, 80, 112, 192],
            stackwise_output_filters=[16, 24, 40, 80, 112, 192, 320], stackwise_expansion_ratios=[1, 6, 6, 6, 6, 6, 6],
            stackwise_strides=[1, 2, 2, 2, 1, 2, 1], stackwise_block_types=["v1"] * 7,
            stackwise_squeeze_and_excite_ratios=[0.25] * 7, min_depth=None, include_stem_padding=True,
            use_depth_divisor_as_min_depth=True, cap_round_filter_decrease=True, stem_conv_padding="valid",
            batch_norm_momentum=0.9, batch_norm_epsilon=1e-5, dropout=0, projection_activation=None,
            input_shape=open_size)),
        "efficientnet_v2": (m.EfficientNetImageClassifier, lambda: m.EfficientNetBackbone(
            width_coefficient=0.5, depth_coefficient=0.5, stackwise_kernel_sizes=[3] * 6,
            stackwise_num_repeats=[2, 4, 4, 6, 9, 15], stackwise_input_filters=[24, 24, 48, 64, 128, 160],
            stackwise_output_filters=[24, 48, 64, 128, 160, 256], stackwise_expansion_ratios=[1, 4, 4, 4, 6, 6],
            stackwise_squeeze_and_excite_ratios=[0, 0, 0, 0.25, 0.25, 0.25], stackwise_strides=[1, 2, 2, 2, 1, 2],
            stackwise_block_types=["fused"] * 3 + ["unfused"] * 3, stackwise_force_input_filters=[0] * 6,
            stackwise_nores_option=[False] * 6, input_shape=open_size)),
        "cspnet": (m.CSPNetImageClassifier, lambda: m.CSPNetBackbone(
            stem_filters=32, stem_kernel_size=3, stem_strides=1, stackwise_strides=2, stackwise_depth=[1, 2, 2],
            stackwise_num_filters=[16, 24, 48], image_shape=open_size, down_growth=True, bottle_ratio=(0.5, 1.0),
            block_ratio=(1.0, 0.5), expand_ratio=(2.0, 1.0), block_type="dark_block", stage_type="csp",
            stem_padding="same")),
        "densenet": (m.DenseNetImageClassifier, lambda: m.DenseNetBackbone(
            stackwise_num_repeats=[2, 4, 6, 4], compression_ratio=0.5, growth_rate=8, image_shape=open_size)),
        "vgg": (m.VGGImageClassifier, lambda: m.VGGBackbone(
            stackwise_num_repeats=[2, 2, 3], stackwise_num_filters=[16, 32, 64], image_shape=open_size)),  # 7x7 head
        "xception": (m.XceptionImageClassifier, lambda: m.XceptionBackbone(
            stackwise_conv_filters=[[32, 64], [128, 128], [256, 256]], stackwise_pooling=[False, True, False],
            image_shape=open_size)),
        "hgnetv2": (m.HGNetV2ImageClassifier, lambda: m.HGNetV2Backbone(
            embedding_size=32, stem_channels=[3, 16, 32], hidden_act="relu", use_learnable_affine_block=True,
            image_shape=open_size, depths=[1, 1], hidden_sizes=[64, 128],
            stackwise_stage_filters=[[32, 16, 64, 1, 1, 3], [64, 32, 128, 1, 1, 3]], apply_downsample=[False, True],
            use_lightweight_conv_block=[False, True])),
        "vit": (m.ViTImageClassifier, lambda: m.ViTBackbone(
            image_shape=(32, 32, 3), patch_size=(4, 4), num_layers=2, hidden_dim=48, num_heads=6, mlp_dim=96)),
        "deit": (m.DeiTImageClassifier, lambda: m.DeiTBackbone(
            image_shape=(32, 32, 3), patch_size=4, num_layers=2, hidden_dim=48, num_heads=6, intermediate_dim=96)),
        "mit": (m.MiTImageClassifier, lambda: m.MiTBackbone(
            layerwise_depths=[2, 2], image_shape=(32, 32, 3), hidden_dims=[8, 16], num_layers=2,
            layerwise_num_heads=[1, 2], layerwise_sr_ratios=[8, 4], max_drop_path_rate=0.1,
            layerwise_patch_sizes=[7, 3], layerwise_strides=[4, 2])),
    }
    sizes = {"vgg": 64, "hgnetv2": 64}  # VGG's head is a 7x7 conv; HGNetV2 needs 64 pixels to reach its last stage
    heads = {"vgg": {"pooling_hidden_dim": 128}}
    return {f"hub.{name}": (f"keras_hub {task.__name__}, random weights",
                            lambda task=task, backbone=backbone, side=sizes.get(name, 32), head=heads.get(name, {}): (
                                task(backbone=backbone(), num_classes=10, preprocessor=None, **head), (side, side, 3)))
            for name, (task, backbone) in backbones.items()}


def beyond_models(keras) -> dict:
    """Models that are not image classifiers: name -> (what, builder returning (model, input shape(s), options)).

    options: "targets": (rng, n) -> targets of n examples in the model's structure (default: class labels);
    "loss": given instead of the compiled one; "unpruned_layers": layers to keep whole.
    """
    import user_models  # pylint: disable=import-outside-toplevel  (benchmarks/)

    layers = keras.layers

    def labels(classes, shape=()):
        return lambda rng, n: rng.randint(0, classes, size=(n,) + shape).astype("int32")

    def unet_with_skips():  # the classic U-Net: two levels, concatenated skips, a sigmoid mask
        inputs = keras.Input((32, 32, 3))
        skips, x = [], inputs
        for filters in (16, 32):
            x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
            x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
            skips.append(x)
            x = layers.MaxPooling2D()(x)
        x = layers.Conv2D(64, 3, padding="same", activation="relu")(x)
        for filters, skip in zip((32, 16), reversed(skips)):
            x = layers.Concatenate()([layers.Conv2DTranspose(filters, 2, strides=2)(x), skip])
            x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        model = keras.Model(inputs, layers.Conv2D(1, 1, activation="sigmoid")(x))
        model.compile("adam", "binary_crossentropy", metrics=[keras.metrics.BinaryIoU(name="iou")])
        return model, (32, 32, 3), {"targets": lambda rng, n: rng.randint(0, 2, (n, 32, 32, 1)).astype("float32")}

    def autoencoder():  # keras.io "Convolutional autoencoder for image denoising"
        inputs = keras.Input((28, 28, 1))
        x = layers.MaxPooling2D(2, padding="same")(layers.Conv2D(32, 3, activation="relu", padding="same")(inputs))
        x = layers.MaxPooling2D(2, padding="same")(layers.Conv2D(32, 3, activation="relu", padding="same")(x))
        x = layers.Conv2DTranspose(32, 3, strides=2, activation="relu", padding="same")(x)
        x = layers.Conv2DTranspose(32, 3, strides=2, activation="relu", padding="same")(x)
        model = keras.Model(inputs, layers.Conv2D(1, 3, activation="sigmoid", padding="same")(x))
        model.compile("adam", "binary_crossentropy")
        return model, (28, 28, 1), {"targets": lambda rng, n: rng.uniform(size=(n, 28, 28, 1)).astype("float32")}

    def text():  # keras.io "Text classification from scratch" (the vectorizer outside the model: tokens in)
        inputs = keras.Input((500,), dtype="int64")
        x = layers.Dropout(0.5)(layers.Embedding(20000, 128)(inputs))
        x = layers.Conv1D(128, 7, padding="valid", activation="relu", strides=3)(x)
        x = layers.Conv1D(128, 7, padding="valid", activation="relu", strides=3)(x)
        x = layers.Dropout(0.5)(layers.Dense(128, activation="relu")(layers.GlobalMaxPooling1D()(x)))
        model = keras.Model(inputs, layers.Dense(1, activation="sigmoid", name="predictions")(x))
        model.compile("adam", "binary_crossentropy", metrics=["accuracy"])
        return model, (500,), {"targets": lambda rng, n: rng.randint(0, 2, (n, 1)).astype("float32")}

    def volumes():  # keras.io "3D image classification from CT scans", at 32x32x16
        inputs = keras.Input((32, 32, 16, 1))
        x = inputs
        for filters in (64, 64, 128, 256):
            x = layers.BatchNormalization()(layers.MaxPool3D(2, padding="same")(
                layers.Conv3D(filters, 3, activation="relu", padding="same")(x)))
        x = layers.Dropout(0.3)(layers.Dense(512, activation="relu")(layers.GlobalAveragePooling3D()(x)))
        model = keras.Model(inputs, layers.Dense(1, activation="sigmoid")(x))
        model.compile("adam", "binary_crossentropy", metrics=["acc"])
        return model, (32, 32, 16, 1), {"targets": lambda rng, n: rng.randint(0, 2, (n, 1)).astype("float32")}

    def image_and_vector():
        image, vector = keras.Input((32, 32, 3), name="image"), keras.Input((8,), name="vector")
        x = layers.Conv2D(16, 3, activation="relu")(image)
        x = layers.GlobalAveragePooling2D()(layers.Conv2D(32, 3, activation="relu")(x))
        x = layers.Dense(32, activation="relu")(layers.Concatenate()([x, vector]))
        model = keras.Model([image, vector], layers.Dense(10, activation="softmax")(x))
        model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
        return model, [(32, 32, 3), (8,)], {"targets": labels(10)}

    def siamese(unpruned=()):  # keras.io "Image similarity estimation using a Siamese Network with a contrastive loss"
        embedding = keras.Sequential([
            keras.Input((28, 28, 1)), layers.BatchNormalization(), layers.Conv2D(4, 5, activation="tanh"),
            layers.AveragePooling2D(2), layers.Conv2D(16, 5, activation="tanh"), layers.AveragePooling2D(2),
            layers.Flatten(), layers.BatchNormalization(), layers.Dense(10, activation="tanh")], name="tower")
        a, b = keras.Input((28, 28, 1)), keras.Input((28, 28, 1))

        def euclidean_distance(vects):
            x, y = vects
            return keras.ops.sqrt(keras.ops.maximum(keras.ops.sum(keras.ops.square(x - y), axis=1, keepdims=True),
                                                    keras.backend.epsilon()))

        distance = layers.Lambda(euclidean_distance, output_shape=(1,), name="distance")([embedding(a), embedding(b)])
        model = keras.Model([a, b], layers.Dense(1, activation="sigmoid")(layers.BatchNormalization()(distance)))

        def contrastive_loss(y_true, y_pred, margin=1.0):
            return keras.ops.mean((1 - y_true) * keras.ops.square(y_pred)
                                  + y_true * keras.ops.square(keras.ops.maximum(margin - y_pred, 0)))

        model.compile("rmsprop", contrastive_loss, metrics=["accuracy"])
        return model, [(28, 28, 1), (28, 28, 1)], {
            "targets": lambda rng, n: rng.randint(0, 2, (n, 1)).astype("float32"), "unpruned_layers": list(unpruned)}

    def class_and_value():
        inputs = keras.Input((32, 32, 3))
        x = layers.Conv2D(16, 3, activation="relu")(inputs)
        x = layers.GlobalAveragePooling2D()(layers.Conv2D(32, 3, activation="relu")(x))
        model = keras.Model(inputs, {"kind": layers.Dense(10, activation="softmax")(x), "size": layers.Dense(1)(x)})
        model.compile("adam", {"kind": "sparse_categorical_crossentropy", "size": "mse"},
                      loss_weights={"kind": 1.0, "size": 0.2}, metrics={"kind": ["accuracy"], "size": ["mae"]})
        return model, (32, 32, 3), {"targets": lambda rng, n: {"kind": labels(10)(rng, n),
                                                                "size": rng.normal(size=(n, 1)).astype("float32")}}

    models = {
        "beyond.unet_keras_io": ("keras.io's U-Net-like segmenter (3 classes per pixel, softmax), 64x64x3",
                                 lambda: (user_models.unet_model((64, 64, 3), 3, width=1.0), (64, 64, 3),
                                          {"targets": labels(3, (64, 64))})),
        "beyond.unet_skips": ("a U-Net with concatenated skips, a sigmoid mask, binary cross-entropy, BinaryIoU",
                              unet_with_skips),
        "beyond.autoencoder": ("keras.io's denoising autoencoder: Conv2DTranspose, a sigmoid image out",
                               autoencoder),
        "beyond.timeseries": ("keras.io's Conv1D time-series classifier (FordA's 500 steps)",
                              lambda: (user_models.timeseries_model((500, 1), 2), (500, 1), {"targets": labels(2)})),
        "beyond.text": ("keras.io's text classifier: int tokens, Embedding, strided Conv1D, a sigmoid", text),
        "beyond.conv3d": ("keras.io's CT-scan classifier: Conv3D, MaxPool3D, GlobalAveragePooling3D", volumes),
        "beyond.image_and_vector": ("two inputs: an image and a vector, joined after pooling", image_and_vector),
        "beyond.siamese": ("keras.io's siamese network: one tower on two images, a Lambda distance, contrastive loss",
                           siamese),
        "beyond.siamese_unpruned": ("the same, its Lambda kept whole (--unpruned_layers=distance, as its refusal says)",
                                    lambda: siamese(["distance"])),
        "beyond.class_and_value": ("two outputs (a dict): a class and a value, weighted losses", class_and_value),
    }
    try:
        import keras_hub  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    except ImportError:
        return models
    models.update(hub_beyond_models(keras))
    return models


def hub_beyond_models(keras) -> dict:
    """keras_hub's segmenters, detector and newest classifiers, small, random weights, their `compile()` defaults."""
    import keras_hub  # pylint: disable=import-outside-toplevel

    m = keras_hub.models

    def resnet(block_type="basic_block", stacks=4, stem=64):
        return m.ResNetBackbone(input_conv_filters=[stem], input_conv_kernel_sizes=[3],
                                stackwise_num_filters=[64, 16, 16, 16][:stacks], stackwise_num_blocks=[1] * stacks,
                                stackwise_num_strides=[1, 2, 2, 2][:stacks], block_type=block_type)

    def compiled(model, shape, **options):
        model.compile()
        return model, shape, options

    def deeplab(unpruned=()):
        backbone = m.DeepLabV3Backbone(image_encoder=resnet(stacks=3), spatial_pyramid_pooling_key="P4",
                                       upsampling_size=4, dilation_rates=[2, 4], low_level_feature_key="P2",
                                       projection_filters=8, image_shape=(64, 64, 3))
        one_hot = lambda rng, n: np.eye(3, dtype="float32")[rng.randint(0, 3, (n, 64, 64))]  # noqa: E731
        kept = lambda model: [layer.name for layer in model._flatten_layers()  # noqa: E731  pylint: disable=protected-access
                              if type(layer).__name__ in unpruned]
        return compiled(m.DeepLabV3ImageSegmenter(backbone, num_classes=3, preprocessor=None), (64, 64, 3),
                        targets=one_hot, unpruned_layers=kept)

    def basnet(loss=None):
        backbone = m.BASNetBackbone(image_encoder=resnet("basic_block_vd", stacks=4, stem=8), num_classes=1,
                                    image_shape=(32, 32, 3), projection_filters=8)
        options = {"targets": lambda rng, n: rng.randint(0, 2, (n, 32, 32, 1)).astype("float32")}
        if loss:
            options["loss"] = loss
        return compiled(m.BASNetImageSegmenter(backbone, preprocessor=None), (32, 32, 3), **options)

    def retinanet():
        backbone = m.RetinaNetBackbone(image_encoder=resnet(stacks=4), min_level=3, max_level=5, use_p5=False,
                                       image_shape=(64, 64, 3))
        anchors = keras_hub.layers.AnchorGenerator("yxyx", min_level=3, max_level=5, num_scales=1,
                                                   aspect_ratios=[1.0], anchor_size=4)
        model = m.RetinaNetObjectDetector(backbone, num_classes=2, bounding_box_format="yxyx", anchor_generator=anchors,
                                          pre_logits_num_conv_layers=1, preprocessor=None)
        return compiled(model, (64, 64, 3), targets=lambda rng, n: {"boxes": np.zeros((n, 2, 4), "float32"),
                                                                     "labels": np.zeros((n, 2), "float32")})

    def mobilenet_v5():
        backbone = m.MobileNetV5Backbone(
            stackwise_block_types=[["er"], ["uir", "uir"]], stackwise_num_blocks=[1, 2],
            stackwise_num_filters=[[16], [24, 24]], stackwise_strides=[[2], [2, 1]],
            stackwise_act_layers=[["relu"], ["relu", "relu"]], stackwise_exp_ratios=[[2.0], [2.0, 2.0]],
            stackwise_se_ratios=[[0.0], [0.0, 0.0]], stackwise_dw_kernel_sizes=[[0], [3, 3]],
            stackwise_dw_start_kernel_sizes=[[0], [0, 0]], stackwise_dw_end_kernel_sizes=[[0], [0, 0]],
            stackwise_exp_kernel_sizes=[[3], [0, 0]], stackwise_pw_kernel_sizes=[[1], [0, 0]],
            stackwise_num_heads=[[0], [0, 0]], stackwise_key_dims=[[0], [0, 0]], stackwise_value_dims=[[0], [0, 0]],
            stackwise_kv_strides=[[0], [0, 0]], stackwise_use_cpe=[[False], [False, False]], stem_size=8,
            use_msfa=False, image_shape=(32, 32, 3))
        return compiled(m.MobileNetV5ImageClassifier(backbone, num_classes=10, head_hidden_size=32, preprocessor=None),
                        (32, 32, 3))

    def swin():
        backbone = m.SwinTransformerBackbone(image_shape=(32, 32, 3), embed_dim=16, depths=(1, 1), num_heads=(1, 2),
                                             window_size=4, patch_size=4)
        return compiled(m.SwinTransformerImageClassifier(backbone, num_classes=10, preprocessor=None), (32, 32, 3))

    return {
        "beyond.hub_deeplab_v3": ("keras_hub DeepLabV3ImageSegmenter, a small ResNet encoder", deeplab),
        "beyond.hub_deeplab_v3_unpruned": ("the same, its SpatialPyramidPooling kept whole (as its refusal says)",
                                           lambda: deeplab(["SpatialPyramidPooling"])),
        "beyond.hub_basnet": ("keras_hub BASNetImageSegmenter, a small ResNet encoder", basnet),
        "beyond.hub_basnet_loss": ("the same, loss= given: binary cross-entropy of its output (as its refusal says)",
                                   lambda: basnet("binary_crossentropy")),
        "beyond.hub_retinanet": ("keras_hub RetinaNetObjectDetector, a small ResNet backbone", retinanet),
        "beyond.hub_mobilenet_v5": ("keras_hub MobileNetV5ImageClassifier (its default RMS norm)", mobilenet_v5),
        "beyond.hub_swin": ("keras_hub SwinTransformerImageClassifier", swin),
    }


def randomize_statistics(model, seed=0):
    """Random BatchNorm statistics and conv/dense biases: a leaked masked channel then changes the logits."""
    import keras  # pylint: disable=import-outside-toplevel

    rng = np.random.RandomState(seed)
    for layer in model._flatten_layers(include_self=False):  # pylint: disable=protected-access
        if isinstance(layer, keras.layers.BatchNormalization):
            for attribute, positive in (("gamma", True), ("beta", False), ("moving_mean", False),
                                        ("moving_variance", True)):
                variable = getattr(layer, attribute, None)
                if variable is not None:
                    shape = tuple(variable.shape)
                    variable.assign(rng.uniform(0.5, 1.5, shape) if positive else rng.normal(0, 0.2, shape))
        elif getattr(layer, "use_bias", False) and getattr(layer, "bias", None) is not None:
            layer.bias.assign(rng.normal(0, 0.2, tuple(layer.bias.shape)))


def measure(name: str, what: str, build) -> dict:
    """One row of the table: the model pruned and checked through its task, or refused with hsd_tf's one line."""
    import keras  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from hsd_tf import architectures, costs, export, graph, slimming  # pylint: disable=import-outside-toplevel
    from hsd_tf import task as task_lib  # pylint: disable=import-outside-toplevel
    from hsd_tf.cascade import Cascade  # pylint: disable=import-outside-toplevel
    from hsd_tf.config import Config  # pylint: disable=import-outside-toplevel

    keras.utils.set_random_seed(0)
    built = build()
    model, shape, options = built if len(built) == 3 else (*built, {})
    shapes = [tuple(s) for s in shape] if isinstance(shape, list) else [tuple(shape)]
    row = {"model": name, "what": what, "input": ", ".join("x".join(map(str, s)) for s in shapes)}
    rng = np.random.RandomState(0)
    unpruned = options.get("unpruned_layers", ())
    if callable(unpruned):  # names of this build (Keras numbers the layers of a second build of a family)
        unpruned = unpruned(model)
    try:  # what hsd_tf.prune and the command line check before anything trains
        randomize_statistics(model)
        stripped, activations = architectures.without_final_activations(model)
        traced = graph.trace(stripped, unpruned, shapes)
        if not traced.groups:
            raise ValueError(traced.nothing_prunable())
        try:  # what a run checks before training: exact, and savable; the row's checks go on regardless
            slimming.rehearse(traced, original=model)
        except slimming.SlimmingError as error:
            row["refusal"] = ("hsd_tf cannot prune this model exactly: slimmed to random masks before training, "
                              f"{error}")
        inputs = graph.sample_inputs(traced, FLAGS.batch_size, rng)
        targets = options.get("targets", lambda r, n: r.randint(0, 10, size=n).astype("int32"))(rng, FLAGS.batch_size)
        dataset = tf.data.Dataset.from_tensor_slices((tuple(inputs) if len(inputs) > 1 else inputs[0], targets))
        dataset = dataset.batch(FLAGS.batch_size)
        task = task_lib.from_model(model, activations, dataset.element_spec[1], loss=options.get("loss"),
                                   shapes=[tuple(x.shape[1:]) for x in traced.model.outputs])
    except ValueError as error:
        return dict(row, refused=" ".join(str(error).split()))
    row["task"] = "; ".join(f"{o.kind}{' (' + o.activation + ')' if o.activation else ''}" for o in task.outputs)
    row["output"] = ", ".join("x".join(map(str, o.shape)) for o in task.outputs)
    row["primary"] = task.primary
    defaults = Config()  # the command line's per-layer floor
    cascade = Cascade(stripped, [0.5, 0.0], teacher=stripped, input_shape=shapes, task=task, unpruned_layers=unpruned,
                      min_layer_filters=defaults.min_layer_filters,
                      max_layer_prune_ratio=defaults.max_layer_prune_ratio)
    cascade.initialize_from(stripped)
    cascade.compile(optimizer=keras.optimizers.SGD(0.01), score_optimizer=keras.optimizers.SGD(0.01))
    batch = tuple(inputs) if len(inputs) > 1 else inputs[0]
    start = time.perf_counter()
    cascade.train_on_batch(batch, targets, return_dict=True)
    row["step_seconds"] = time.perf_counter() - start
    slim = slimming.slim_view(cascade, 0, frozen=False, name="student", inference=True)
    masked = keras.tree.flatten(cascade.view_forward(0, batch, training=False, frozen=False)[0])
    found = keras.tree.flatten(slim(graph.model_inputs(inputs), training=False))
    half = cascade.view_costs(frozen=False)[0]
    # A stage: a spatial size at which the model applies kernels larger than 1x1, the stem (kept whole by the
    # method) aside; it is pruned when some layer's output channels at that size are in a group.
    trace = cascade.trace
    stages = {w.output_size for w in trace.weighted
              if len(w.output_size) >= 1 and w.kernel > 1 and w.name not in trace.stems}
    pruned_stages = {w.output_size for w in trace.weighted if any(p is not None for p in w.outputs)} & stages
    row.update(stages=f"{len(pruned_stages)}/{len(stages)}" if stages else "-")
    row.update(groups=len(cascade.trace.groups), params=costs.count(cascade.trace)["params"],
               kernels=graph.kernel_weights(model), params_50=half["params"], macs=costs.count(cascade.trace)["macs"],
               macs_50=half["macs"], slim_params_counted=costs.profile(slim, unpruned)["params"],
               relative_error=max(float(np.abs(np.asarray(f) - np.asarray(m)).max() / np.abs(np.asarray(m)).max())
                                  for f, m in zip(found, masked)))
    deployed = slimming.with_final_activations(slim, activations, task.keys, task.structure)
    sample = inputs[0] if len(inputs) == 1 else inputs
    with tempfile.TemporaryDirectory() as directory:
        exported = export.export_and_verify(deployed, directory, ["tflite", "tflite_int8"], dataset, sample, task=task)
    float_file, int8 = exported["tflite"], exported["tflite_int8"]
    if task.is_classifier:
        row["tflite"] = float_file.get("error") or f"agrees {float_file['agreement']:.0%}"
        row["int8"] = int8.get("error") or f"agrees {int8['agreement']:.0%}"
    else:
        row["tflite"] = float_file.get("error") or f"outputs within {float_file['output_gap']:.1e}"
        row["int8"] = int8.get("error") or f"outputs within {int8['output_gap']:.1e}"
    if "runtime" in int8:
        row["int8"] = f"runs on LiteRT's built-in kernels (XNNPACK refuses it), {row['int8']}"
    elif "error" not in int8:
        row["int8"] = f"runs, {row['int8']}"
    why = slimming.keras_round_trip(deployed)
    own = why and slimming.keras_round_trip(model)
    row["keras_file"] = ("saves and loads" if why is None else f"fails{', as the model itself does' if own else ''}: "
                         f"{why}")
    return row


def table(rows) -> str:
    lines = ["| model | what | input | outcome | groups | stages pruned | params dense (= kernels?) | params 50% "
             "(of dense) | MACs dense | MACs 50% | max\\|masked − slim\\| / max\\|logit\\| | float32 TFLite | "
             "int8 TFLite |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "refused" in r:
            lines.append(f"| {r['model']} | {r['what']} | {r['input']} | refused: {r['refused']} "
                         "| | | | | | | | | |")
            continue
        same = "yes" if r["params"] == r["kernels"] else f"no: {r['kernels']:,}"
        lines.append(f"| {r['model']} | {r['what']} | {r['input']} | pruned | {r['groups']} | {r['stages']} | "
                     f"{r['params']:,} ({same}) | {r['params_50']:,} ({r['params_50'] / r['params']:.2f}) | {r['macs']:,} | {r['macs_50']:,} | {r['relative_error']:.1e} | "
                     f"{r['tflite']} | {r['int8']} |")
    return "\n".join(lines)


def beyond_table(rows) -> str:
    """The "Beyond classifiers" table: the task each model is pruned through, its costs, exactness and files."""
    lines = ["| model | what | input → output | task (kind per output; primary metric) | outcome | groups | "
             "params dense → 50% of filters | MACs dense → 50% | max\\|masked − slim\\| / max\\|output\\| | "
             "float32 TFLite | int8 TFLite | student .keras | time (s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "refused" in r:
            lines.append(f"| {r['model']} | {r['what']} | {r['input']} | | refused: {r['refused']} | | | | | | | | "
                         f"{r['seconds']:.0f} |")
            continue
        outcome = f"refused before training: {r['refusal']}" if "refusal" in r else "pruned"
        lines.append(f"| {r['model']} | {r['what']} | {r['input']} → {r['output']} | {r['task']}; {r['primary']} | "
                     f"{outcome} | {r['groups']} | {r['params']:,} → {r['params_50']:,} ({r['params_50'] / r['params']:.2f}) | "
                     f"{r['macs']:,} → {r['macs_50']:,} | {r['relative_error']:.1e} | {r['tflite']} | {r['int8']} | "
                     f"{r['keras_file']} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def main(argv):
    del argv
    models = zoo()
    names = FLAGS.models or list(models)
    if names == ["beyond"]:
        names = [name for name in models if name.startswith("beyond.")]
    unknown = sorted(set(names) - set(models))
    if unknown:
        raise app.UsageError(f"--models: not in the zoo; expected some of {sorted(models)}. Received: {unknown}")
    rows = []
    for name in names:
        start = time.perf_counter()
        try:
            row = measure(name, *models[name])
        except Exception as error:  # pylint: disable=broad-except  (a crash is a finding: it goes in the table)
            row = {"model": name, "what": models[name][0], "input": "", "refused": f"CRASH {error!r}"[:400]}
        if "refused" not in row:
            assert row["slim_params_counted"] == row["params_50"], row  # the slim model is what the count says
        row["seconds"] = time.perf_counter() - start
        print(f"{name} ({row['seconds']:.0f} s): {row}", flush=True)
        rows.append(row)
    classifiers = [row for row in rows if not row["model"].startswith("beyond.")]
    beyond = [row for row in rows if row["model"].startswith("beyond.")]
    text = "\n\n".join(part for part in (table(classifiers) if classifiers else "",
                                          beyond_table(beyond) if beyond else "") if part)
    print(text)
    if FLAGS.output:
        with open(FLAGS.output, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    app.run(main)
