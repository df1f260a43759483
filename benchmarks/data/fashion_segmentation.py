"""Fashion-MNIST as a segmentation task, for `--dataset=py:`: a label per pixel, background or the garment's class.

    python main.py --dataset=py:benchmarks/data/fashion_segmentation.py --arch=unet.keras --teacher=unet.keras ...

Every image is zero-padded from 28x28 to 32x32 (a U-Net halves it four times) and scaled to [0, 1]; a pixel
brighter than `GARMENT` is the garment's (its class + 1, so 1..10), any other is background (0): 11 classes.
The first 6,000 official training images train, the next 1,000 validate, the first 2,000 official test images
test (the sizes of benchmarks/own_images.py's grey case). Needs the idx files (Debian's dataset-fashion-mnist,
or ~/.keras/datasets/fashion-mnist).
"""

import os
import sys

import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from hsd_tf import data  # noqa: E402  pylint: disable=wrong-import-position

GARMENT = 0.1
CLASSES = 11
SPLITS = {"train": slice(0, 6000), "val": slice(6000, 7000), "test": slice(0, 2000)}


def arrays(split: str):
    """(images (N, 32, 32, 1) float32 in [0, 1], labels (N, 32, 32) int32) of one split."""
    train_images, train_labels, test_images, test_labels = data.fashion_mnist_arrays()
    images, labels = (test_images, test_labels) if split == "test" else (train_images, train_labels)
    images = np.pad(images[SPLITS[split]], ((0, 0), (2, 2), (2, 2))).astype(np.float32) / 255.0
    garment = images > GARMENT
    return images[..., None], np.where(garment, labels[SPLITS[split], None, None] + 1, 0).astype(np.int32)


def datasets():
    return tuple(tf.data.Dataset.from_tensor_slices(arrays(split)) for split in ("train", "val", "test"))
