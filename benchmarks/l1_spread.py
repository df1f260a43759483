"""How much the L1 ranking can tell a teacher's filters apart, layer by layer.

    python benchmarks/l1_spread.py --teachers=runs/equal_macs/fashion_mnist/teacher/teacher/teacher.weights.h5

`--method=l1` keeps the filters of largest layer-normalised L1 norm (each layer's norms divided by their mean)
greedily within the budget, so how many each layer keeps turns on how far its norms spread around that mean.
For each teacher (VGG16 at --width_multiplier, built here) this prints, per conv, the largest normalised norm
over the median one: near 1, the layer's filters are nearly alike to L1, and which layers the ranking starves
turns on differences of a few percent. Issue 30's study reads it beside the channels each method kept
(docs/teaching_assistants.md, "Second round").
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

flags.DEFINE_list("teachers", [], "Teachers' .weights.h5 files (VGG16 of the study's shape).")
flags.DEFINE_float("width_multiplier", 0.125, "The teachers' width multiplier.")
flags.DEFINE_integer("num_classes", 10, "The teachers' classes.")
FLAGS = flags.FLAGS


def spread(kernels) -> list:
    """Per kernel (output filters on the last axis): the largest layer-normalised L1 norm over the median one."""
    from hsd_tf import masks  # pylint: disable=import-outside-toplevel

    ratios = []
    for kernel in kernels:
        scores = masks.l1_scores(kernel)
        ratios.append(float(np.max(scores) / np.median(scores)))
    return ratios


def main(argv):
    del argv
    import keras  # pylint: disable=import-outside-toplevel

    from hsd_tf import architectures  # pylint: disable=import-outside-toplevel

    for path in FLAGS.teachers:
        model = architectures.get("vgg16", (32, 32, 3), FLAGS.num_classes, width_multiplier=FLAGS.width_multiplier)
        model.load_weights(path)
        convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
        ratios = spread(keras.ops.convert_to_numpy(layer.kernel) for layer in convs)
        print(path)
        print("  largest / median normalised L1 norm: " + ", ".join(
            f"{layer.name.replace('block', 'b').replace('_conv', '.')} {ratio:.2f}"
            for layer, ratio in zip(convs, ratios)))


if __name__ == "__main__":
    app.run(main)
