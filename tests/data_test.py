"""Input pipelines: digits, image folders, tfds (mocked), and fast failures."""

import os
import time

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from hsd_tf import data


def _first(ds):
    return next(iter(ds))


def test_digits_fixed_split_and_shapes():
    digits = data.load("digits", 64, val_fraction=0.1)
    images, labels = _first(digits.train_from(0, 1))
    assert images.shape == (64, 32, 32, 3) and images.dtype == tf.float32
    assert digits.num_classes == 10 and digits.input_shape == (32, 32, 3)
    assert digits.train_examples == 1797 - 360 - 144
    assert digits.steps_per_epoch == (1797 - 360 - 144) // 64
    assert sum(int(y.shape[0]) for _, y in digits.test) == 360
    assert sum(int(y.shape[0]) for _, y in digits.val) == 144
    # Evaluation is deterministic: the same test images in the same order every pass.
    first = np.concatenate([x.numpy() for x, _ in digits.test])
    again = np.concatenate([x.numpy() for x, _ in data.load("digits", 32).test])
    np.testing.assert_array_equal(first, again)
    assert abs(float(np.mean(first))) < 1.0


def test_an_epoch_depends_only_on_seed_and_epoch():
    """What a resumed run sees at epoch 2 is what an uninterrupted run sees there."""
    digits = data.load("digits", 256, val_fraction=0.1)
    steps = digits.steps_per_epoch

    def batches(ds, count):
        return [x.numpy() for x, _ in ds.take(count)]

    uninterrupted = batches(digits.train_from(0, 3), 3 * steps)
    resumed = batches(digits.train_from(2, 3), steps)
    for a, b in zip(uninterrupted[2 * steps:], resumed):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(uninterrupted[0], uninterrupted[steps])  # epochs differ
    other_seed = data.load("digits", 256, val_fraction=0.1, seed=1)
    assert not np.array_equal(batches(other_seed.train_from(2, 3), 1)[0], resumed[0])


def _write_folder(root, classes, per_class=3, size=(10, 14)):
    rng = np.random.RandomState(0)
    for split in ("train", "test"):
        for name in classes:
            folder = os.path.join(root, split, name)
            os.makedirs(folder, exist_ok=True)
            for i in range(per_class):
                pixels = rng.randint(0, 255, size + (3,), dtype=np.uint8)
                encoded = tf.io.encode_png(pixels) if i % 2 == 0 else tf.io.encode_jpeg(pixels)
                tf.io.write_file(os.path.join(folder, f"{i}.{'png' if i % 2 == 0 else 'jpg'}"), encoded)


def test_folder_dataset(tmp_path):
    _write_folder(str(tmp_path), ["cat", "dog", "eel"], per_class=4)
    folder = data.load(f"folder:{tmp_path}", 2, val_fraction=0.25, image_size=16)
    images, labels = _first(folder.train_from(0, 1))
    assert images.shape == (2, 16, 16, 3)
    assert folder.num_classes == 3
    assert folder.train_examples == 9
    test_labels = np.concatenate([y.numpy() for _, y in folder.test])
    assert sorted(test_labels.tolist()) == [0] * 4 + [1] * 4 + [2] * 4
    assert data.describe(f"folder:{tmp_path}", 16) == ((16, 16, 3), 3)


def test_folder_with_one_class_is_refused(tmp_path):
    _write_folder(str(tmp_path), ["only"])
    with pytest.raises(data.DatasetError, match="at least two class folders"):
        data.load(f"folder:{tmp_path}", 2)


def test_cifar10_pipeline_with_mocked_tfds(monkeypatch):
    # mock_data replaces downloading and reading; the reachability probe is ours.
    monkeypatch.setattr(data, "_reachable", lambda host, **_: True)
    with tfds.testing.mock_data(num_examples=20):
        cifar = data.load("cifar10", 4, val_fraction=0.1)
        images, labels = _first(cifar.train_from(0, 1))
        assert images.shape == (4, 32, 32, 3)
        assert cifar.num_classes == 10
        assert int(tf.reduce_max(labels)) < 10


def test_undownloadable_dataset_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_reachable", lambda host, **_: False)
    start = time.time()
    with pytest.raises(data.DatasetError, match="tfds build cifar10"):
        data.load("cifar10", 8, data_dir=str(tmp_path))
    assert time.time() - start < 30


def test_imagenet_needs_its_archives(tmp_path):
    with pytest.raises(data.DatasetError, match="ILSVRC2012_img_train.tar"):
        data.load("imagenet2012", 8, data_dir=str(tmp_path))


def test_unknown_dataset():
    with pytest.raises(data.DatasetError, match="dataset='mnist'"):
        data.load("mnist", 8)
