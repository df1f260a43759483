"""Every model family that can be built offline, through the whole pipeline: pruned exactly, or refused in one line.

    python benchmarks/any_model.py                                  # every family (docs/any_model.md's table)
    python benchmarks/any_model.py --models=hub.mobilenet,app.ResNet50 --output=/tmp/table.md

The families: keras.applications (one model per family, weights=None), keras_hub's image classifiers
built from their constructors with random weights (when keras_hub is installed), tutorial-style models
(augmentation, Rescaling and Resizing layers inside, a keras.applications base with its own head, a base
built without an input size), and models outside the method (two inputs, a segmentation map, an
autoencoder, a Conv1D model), which must be refused.

Per model, with random BatchNorm statistics and biases so that a masked channel would show if it
leaked: the mask groups; the stages (spatial sizes at which kernels larger than 1x1 run, the stem
aside) where some layer's output channels are in a group; params of the dense model against the sum of its conv and dense kernels; params
and MACs of a student keeping 50% of the prunable filters (L1-initialised masks, the command line's
per-layer floor: at least 2 filters and 4% of each layer); one cascade training step
(student at prune ratio 0.5 and the full top view, SGD, batch 8); the student's slim model against its
masked view on the same images, max |masked - slim| / max |masked logit|; then the slim student exported
to float32 and int8 TFLite, each run with LiteRT in a child process on the images: the float file must
agree with Keras (top-1 on at least 99% of them), the int8 file's agreement is reported. A model that is
refused gets the one line hsd_tf gives.
"""

import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

flags.DEFINE_list("models", [], "Models of the zoo to run (default: all), e.g. app.ResNet50,hub.mobilenet.")
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
    models.update(outside_models(keras))
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


def outside_models(keras) -> dict:
    """Models hsd_tf does not prune (one image in, class logits out is the method): each must be refused."""
    layers = keras.layers

    def conv(filters):
        return layers.Conv2D(filters, 3, padding="same", activation="relu")

    def two_inputs():
        images, extra = keras.Input((32, 32, 3)), keras.Input((4,))
        x = layers.GlobalAveragePooling2D()(conv(16)(conv(8)(images)))
        return keras.Model([images, extra], layers.Dense(10)(layers.Concatenate()([x, extra]))), (32, 32, 3)

    def segmentation():
        images = keras.Input((32, 32, 3))
        x = layers.UpSampling2D()(layers.MaxPooling2D()(conv(16)(conv(8)(images))))
        return keras.Model(images, layers.Conv2D(11, 1)(x)), (32, 32, 3)

    def autoencoder():
        images = keras.Input((32, 32, 3))
        x = layers.Conv2DTranspose(8, 3, strides=2, padding="same")(conv(16)(layers.MaxPooling2D()(conv(8)(images))))
        return keras.Model(images, layers.Conv2D(3, 3, padding="same")(x)), (32, 32, 3)

    def sequence():
        signal = keras.Input((64, 3))
        x = layers.Conv1D(16, 3, activation="relu")(layers.Conv1D(8, 3, activation="relu")(signal))
        return keras.Model(signal, layers.Dense(10)(layers.GlobalAveragePooling1D()(x))), (64, 3)

    return {"outside.two_inputs": ("an image and a vector in", two_inputs),
            "outside.segmentation": ("a map of 11 classes per pixel out", segmentation),
            "outside.autoencoder": ("an image out", autoencoder),
            "outside.conv1d": ("a Conv1D model of sequences", sequence)}


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
    """One row of the table: the model pruned and checked, or refused with hsd_tf's one line."""
    import keras  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from hsd_tf import architectures, costs, export, graph, slimming  # pylint: disable=import-outside-toplevel
    from hsd_tf.cascade import Cascade  # pylint: disable=import-outside-toplevel
    from hsd_tf.config import Config  # pylint: disable=import-outside-toplevel

    keras.utils.set_random_seed(0)
    model, shape = build()
    row = {"model": name, "what": what, "input": "x".join(map(str, shape))}
    try:  # what hsd_tf.prune and the command line check before anything trains
        model = architectures.without_softmax(model)
        architectures.check_classifier(model)
        traced = graph.trace(model, input_shape=shape)
        architectures.check_classifier(traced.model)
        if not traced.groups:
            raise ValueError(traced.nothing_prunable())
    except ValueError as error:
        return dict(row, refused=str(error))
    randomize_statistics(model)
    rng = np.random.RandomState(0)
    images = rng.normal(size=(FLAGS.batch_size,) + shape).astype("float32")
    labels = rng.randint(0, 10, size=FLAGS.batch_size).astype("int32")
    defaults = Config()  # the command line's per-layer floor
    cascade = Cascade(model, [0.5, 0.0], teacher=model, input_shape=shape, min_layer_filters=defaults.min_layer_filters,
                      max_layer_prune_ratio=defaults.max_layer_prune_ratio)
    cascade.initialize_from(model)
    cascade.compile(optimizer=keras.optimizers.SGD(0.01), score_optimizer=keras.optimizers.SGD(0.01))
    start = time.perf_counter()
    cascade.train_on_batch(images, labels, return_dict=True)
    row["step_seconds"] = time.perf_counter() - start
    slim = slimming.slim_view(cascade, 0, frozen=False, name="student", inference=True)
    masked = cascade.view_forward(0, images, training=False, frozen=False)[0].numpy()
    half = cascade.view_costs(frozen=False)[0]
    # A stage: a spatial size at which the model applies kernels larger than 1x1, the stem (kept whole by the
    # method) aside; it is pruned when some layer's output channels at that size are in a group.
    trace = cascade.trace
    stages = {w.output_size for w in trace.weighted
              if len(w.output_size) == 2 and w.kernel > 1 and w.name not in trace.stems}
    pruned_stages = {w.output_size for w in trace.weighted if any(p is not None for p in w.outputs)} & stages
    row.update(stages=f"{len(pruned_stages)}/{len(stages)}" if stages else "-")
    row.update(groups=len(cascade.trace.groups), params=costs.count(cascade.trace)["params"],
               kernels=graph.kernel_weights(model), params_50=half["params"], macs=costs.count(cascade.trace)["macs"],
               macs_50=half["macs"], slim_params_counted=costs.profile(slim)["params"],
               relative_error=float(np.abs(slim(images, training=False).numpy() - masked).max()
                                    / np.abs(masked).max()))
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(FLAGS.batch_size)
    with tempfile.TemporaryDirectory() as directory:
        exported = export.export_and_verify(slim, directory, ["tflite", "tflite_int8"], dataset, images)
    row["tflite"] = exported["tflite"].get("error") or f"agrees {exported['tflite']['agreement']:.0%}"
    int8 = exported["tflite_int8"]
    runs = "runs on LiteRT's built-in kernels (XNNPACK refuses it)" if "runtime" in int8 else "runs"
    row["int8"] = f"{runs}, agrees {int8['agreement']:.0%}" if "agreement" in int8 else int8["error"]
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


def main(argv):
    del argv
    models = zoo()
    names = FLAGS.models or list(models)
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
        print(f"{name} ({time.perf_counter() - start:.0f} s): {row}", flush=True)
        rows.append(row)
    text = table(rows)
    print(text)
    if FLAGS.output:
        with open(FLAGS.output, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    app.run(main)
