"""Input pipelines: digits, image folders, tfds (mocked), and fast failures."""

import os
import re
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


def test_folder_of_mixed_sizes_and_grey_and_colour_images_is_read_as_rgb_of_one_size(tmp_path):
    rng = np.random.RandomState(0)
    for split in ("train", "test"):
        for label, name in enumerate(("a", "b")):
            folder = tmp_path / split / name
            folder.mkdir(parents=True)
            for i, (size, channels) in enumerate((((5, 7), 1), ((12, 9), 3), ((8, 8), 4))):  # grey, RGB, RGBA
                pixels = rng.randint(0, 255, size + (channels,), dtype=np.uint8)
                tf.io.write_file(str(folder / f"{i}.png"), tf.io.encode_png(pixels))
    folder = data.load(f"folder:{tmp_path}", 2, val_fraction=0.0, image_size=16)
    images = np.concatenate([x.numpy() for x, _ in folder.test])
    assert images.shape == (6, 16, 16, 3) and np.isfinite(images).all()


def _flat_folder(root, value, splits=("train", "test"), size=(6, 6)):
    """Two classes of 2 images whose every pixel is `value` (grey, so that every channel convention is checkable)."""
    for split in splits:
        for name in ("a", "b"):
            os.makedirs(os.path.join(root, split, name), exist_ok=True)
            for i in range(2):
                pixels = np.full(size + (3,), value, np.uint8)
                tf.io.write_file(os.path.join(root, split, name, f"{i}.png"), tf.io.encode_png(pixels))


@pytest.mark.parametrize("preprocessing, expected", [
    ("raw", [51.0] * 3), ("unit", [0.2] * 3), ("symmetric", [-0.6] * 3), ("tf", [-0.6] * 3),
    ("caffe", [51 - 103.939, 51 - 116.779, 51 - 123.68]),  # BGR order, ImageNet means off
    ("torch", [(0.2 - m) / s for m, s in zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]),
    ("auto", [-0.6] * 3),  # a folder's own: [-1, 1]
])
def test_every_preprocessing_convention_on_a_folder(preprocessing, expected, tmp_path):
    _flat_folder(str(tmp_path), 51)
    folder = data.load(f"folder:{tmp_path}", 2, val_fraction=0.0, preprocessing=preprocessing, augment="none")
    images = np.concatenate([x.numpy() for x, _ in folder.test])
    np.testing.assert_allclose(images[0, 3, 3], expected, rtol=1e-5, atol=1e-4)
    train = np.concatenate([x.numpy() for x, _ in folder.train_from(0, 1)])
    np.testing.assert_allclose(train[0, 3, 3], expected, rtol=1e-5, atol=1e-4)  # augment=none: the same values


def test_a_folder_is_read_at_the_models_size_and_channels_and_its_val_split_is_used(tmp_path):
    _flat_folder(str(tmp_path), 51, splits=("train", "test", "val"))
    os.remove(tmp_path / "val" / "b" / "1.png")
    folder = data.load(f"folder:{tmp_path}", 2, val_fraction=0.25, model_shape=(28, 20, 1), image_size=16)
    assert folder.input_shape == (28, 20, 1)
    assert next(iter(folder.test))[0].shape == (2, 28, 20, 1)
    assert folder.train_examples == 4 and sum(len(y) for _, y in folder.val) == 3  # val/ replaces the hold-out
    assert data.describe(f"folder:{tmp_path}", 16, (None, None, 1)) == ((16, 16, 1), 2)


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


def _write_idx(path, array, compress=True):
    """An unsigned-byte idx file (the MNIST format), as Zalando ships Fashion-MNIST."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    if compress:
        import gzip  # pylint: disable=import-outside-toplevel

        raw = gzip.compress(raw)
    with open(path + (".gz" if compress else ""), "wb") as f:
        f.write(raw)


def _fake_fashion_mnist(folder, train=50, test=20, compress=True):
    rng = np.random.RandomState(0)
    arrays = {
        "train-images-idx3-ubyte": rng.randint(0, 256, (train, 28, 28)),
        "train-labels-idx1-ubyte": rng.randint(0, 10, train),
        "t10k-images-idx3-ubyte": rng.randint(0, 256, (test, 28, 28)),
        "t10k-labels-idx1-ubyte": np.arange(test) % 10,
    }
    os.makedirs(folder, exist_ok=True)
    for name, array in arrays.items():
        _write_idx(os.path.join(folder, name), array, compress)
    return arrays


@pytest.fixture
def no_fashion_mnist_elsewhere(tmp_path, monkeypatch):
    """Neither Keras' cache, Debian's folder nor the internet has Fashion-MNIST."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setattr(data, "FASHION_MNIST_DEBIAN_DIR", str(tmp_path / "no_debian"))
    monkeypatch.setattr(data, "_reachable", lambda host, **_: False)


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_from_its_idx_files(tmp_path, no_fashion_mnist_elsewhere, compress):
    arrays = _fake_fashion_mnist(str(tmp_path / "fm"), compress=compress)
    fashion = data.load("fashion_mnist", 8, data_dir=str(tmp_path / "fm"), val_fraction=0.1)
    assert fashion.num_classes == 10 and fashion.input_shape == (32, 32, 3)
    assert fashion.train_examples == 45 and sum(int(y.shape[0]) for _, y in fashion.val) == 5
    test_images = np.concatenate([x.numpy() for x, _ in fashion.test])
    test_labels = np.concatenate([y.numpy() for _, y in fashion.test])
    np.testing.assert_array_equal(test_labels, arrays["t10k-labels-idx1-ubyte"])  # the official test split, in order
    mean, std = data.FASHION_MNIST_STATS
    # Zero-padded from 28 to 32 pixels (not resized), grey copied to three channels, then normalised.
    expected = np.pad(arrays["t10k-images-idx3-ubyte"][3] / 255.0, 2)
    np.testing.assert_allclose(test_images[3, :, :, 1], (expected - mean) / std, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(test_images[3, :, :, 0], test_images[3, :, :, 2])
    images, _ = _first(fashion.train_from(0, 1))
    assert images.shape == (8, 32, 32, 3)


def test_fashion_mnist_without_its_files_fails_fast_and_says_how_to_provide_them(
        tmp_path, no_fashion_mnist_elsewhere):
    start = time.time()
    with pytest.raises(data.DatasetError, match=r"--data_dir=FOLDER.*dataset-fashion-mnist.*data_dir="):
        data.load("fashion_mnist", 8, data_dir=str(tmp_path / "empty"))
    assert time.time() - start < 30


def test_fashion_mnist_truncated_file_is_named(tmp_path, no_fashion_mnist_elsewhere):
    _fake_fashion_mnist(str(tmp_path))
    path = os.path.join(str(tmp_path), "train-labels-idx1-ubyte.gz")
    with open(path, "rb") as f:
        raw = f.read()
    with open(path, "wb") as f:
        f.write(raw[: len(raw) // 2])
    with pytest.raises(data.DatasetError, match="cannot read .*train-labels-idx1-ubyte.gz"):
        data.load("fashion_mnist", 8, data_dir=str(tmp_path))


def test_max_train_examples_keeps_the_first_examples_of_the_training_split():
    full = data.load("digits", 32, val_fraction=0.1)
    subset = data.load("digits", 32, val_fraction=0.1, max_train_examples=100)
    assert subset.train_examples == 100 and subset.steps_per_epoch == 3
    firsts = [x.numpy() for x, _ in full.train_examples_ds.take(100)]
    np.testing.assert_array_equal(np.stack(firsts), np.stack([x.numpy() for x, _ in subset.train_examples_ds]))
    assert sum(int(y.shape[0]) for _, y in subset.test) == 360  # evaluation is untouched


PY_DATASETS = """
import numpy as np
import tensorflow as tf

def datasets():
    rng = np.random.RandomState(0)
    def split(n):
        inputs = {"tokens": rng.randint(0, 9, size=(n, 7)), "signal": rng.normal(size=(n, 7, 2))}
        targets = {"kind": rng.randint(0, 3, size=(n, 1)), "value": rng.normal(size=(n, 7, 1))}
        return tf.data.Dataset.from_tensor_slices((inputs, targets)).batch(4)
    return split(40), split(12), split(12)
"""


def test_a_py_module_gives_any_inputs_and_targets_in_the_models_structure(tmp_path):
    """`--dataset=py:FILE.py`: dicts of inputs by the model's names (its order), targets as given, batched or not."""
    path = tmp_path / "mine.py"
    path.write_text(PY_DATASETS)
    loaded = data.load_module(f"py:{path}", 8, [(7, 2), (7,)], ["signal", "tokens"])
    inputs, targets = next(iter(loaded.train_from(0, 1)))
    assert [x.dtype for x in inputs] == [tf.float32, tf.int32] and [x.shape for x in inputs] == [(8, 7, 2), (8, 7)]
    assert set(targets) == {"kind", "value"} and targets["kind"].dtype == tf.int32 and targets["kind"].shape == (8, 1)
    assert loaded.input_shape == ((7, 2), (7,)) and loaded.train_examples == 40 and loaded.steps_per_epoch == 5
    assert loaded.target_spec["value"].shape.as_list() == [None, 7, 1]


@pytest.mark.parametrize("body, message", [
    ("def data():\n    return None\n", "defines no function datasets()"),
    ("def datasets():\n    return [1, 2, 3]\n", "it returned a list of 3"),
    ("def datasets():\n    raise KeyError('no such column')\n", "datasets() failed (KeyError"),
    ("import no_such_module_here\n", "cannot be imported (ModuleNotFoundError"),
])
def test_a_py_module_that_gives_no_datasets_is_one_line_naming_it(body, message, tmp_path):
    path = tmp_path / "mine.py"
    path.write_text(body)
    with pytest.raises(data.DatasetError, match=re.escape(message)) as error:
        data.load_module(f"py:{path}", 8, [(7, 2)], ["signal"])
    assert "\n" not in str(error.value) and f"Received: dataset='py:{path}'" in str(error.value)


def test_a_py_module_whose_inputs_do_not_fit_the_model_is_named(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text(PY_DATASETS)
    with pytest.raises(data.DatasetError, match=r"the model's inputs are \['a', 'b'\]"):
        data.load_module(f"py:{path}", 8, [(7, 2), (7,)], ["a", "b"])
    with pytest.raises(data.DatasetError, match=r"have shape \(7, 2\), \(7,\); the model reads \(9, 2\), \(7,\)"):
        data.load_module(f"py:{path}", 8, [(9, 2), (7,)], ["signal", "tokens"])
