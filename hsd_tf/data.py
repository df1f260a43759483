"""Input pipelines: tfds datasets, digits, Fashion-MNIST, and image folders.

Every dataset yields (float32 image, int label) batches. Training batches are
shuffled, augmented and have a fixed size (drop_remainder) so that every step
splits evenly over replicas; evaluation pipelines are deterministic and keep
every example. Epoch e of training is a pure function of (seed, e): its
shuffle is seeded by both and its augmentation uses stateless random ops seeded
by (seed, e, example), so a run resumed at epoch e sees exactly the batches an
uninterrupted run would (`Data.train_from`). A validation split for the teacher
ladder of fine-tuning is held out of the *training* split (`val_fraction`),
never taken from the test split whose accuracy is reported.

Fashion-MNIST is read from its four official idx files (gzipped or not) when
they are in --data_dir, in Keras' download cache or where Debian's package
`dataset-fashion-mnist` puts them; otherwise `keras.datasets.fashion_mnist`
downloads them.
"""

import dataclasses
import functools
import gzip
import os
import socket
import urllib.parse
from typing import Callable, Optional, Tuple

import numpy as np
import tensorflow as tf

from hsd_tf import user_code

AUTOTUNE = tf.data.AUTOTUNE
TFDS_DATASETS = ("cifar10", "cifar100", "imagenet2012")
DATASETS = TFDS_DATASETS + ("digits", "fashion_mnist", "folder:PATH", "py:FILE.py")
IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")

# Per-channel statistics of the training images, in [0, 1] RGB.
CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
# keras.applications' "caffe" preprocessing (BGR, mean subtracted), so the
# Keras ImageNet ResNet50 weights can serve as the teacher.
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
DIGITS_TEST_EXAMPLES = 360
# The validation hold-out of digits and Fashion-MNIST is the same for every --seed.
SPLIT_SEED = 0
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
FASHION_MNIST_DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
# Mean and std of the 60,000 training images in [0, 1], zero-padded to 32x32 as the models see them.
FASHION_MNIST_STATS = (0.2190, 0.3318)


class DatasetError(ValueError):
    """A dataset that cannot be read or prepared; the message says what to do."""


@dataclasses.dataclass
class Data:
    """Batched pipelines and what the model needs to know about them.

    Attributes:
        name: Dataset name as given.
        train_examples_ds: Un-augmented training examples (use `train_from`).
        val: Held-out training examples, evaluation pipeline (None if
            val_fraction is 0).
        val_examples_ds: The examples of `val`, as `train_examples_ds` gives
            them (`augment` applies to them); None where `val` is.
        test: Test split, evaluation pipeline.
        test_examples_ds: The examples of `test`, as `val_examples_ds`.
        num_classes: Number of labels (0 for a dataset of other targets, `--dataset=py:`).
        input_shape: (height, width, channels); for a dataset of other inputs their shape, one per input
            for several.
        train_examples: Examples in `train` per epoch before batching.
        steps_per_epoch: Training batches per epoch.
        batch_size: Global training batch size.
        seed: Shuffle and augmentation seed.
        augment: `(inputs, targets[, sample weights], seed pair) -> the example`, stateless.
    """

    name: str
    train_examples_ds: tf.data.Dataset
    val: Optional[tf.data.Dataset]
    val_examples_ds: Optional[tf.data.Dataset]
    test: tf.data.Dataset
    test_examples_ds: tf.data.Dataset
    num_classes: int
    input_shape: tuple
    train_examples: int
    steps_per_epoch: int
    batch_size: int
    seed: int
    augment: Callable

    @property
    def target_spec(self):
        """The targets of one evaluation batch: `tf.TensorSpec`s in the model's output structure."""
        return self.test.element_spec[1]

    def train_from(self, first_epoch: int, epochs: int) -> tf.data.Dataset:
        """Training batches of epochs first_epoch .. epochs-1, steps_per_epoch each.

        Args:
            first_epoch: The epoch to start at (where a resumed run continues).
            epochs: One past the last epoch.

        Returns:
            A dataset whose epoch e depends only on (seed, e).
        """
        buffer = min(self.train_examples, 50_000)

        def epoch(e):
            # Python-int seeds: tf.data refuses tensor shuffle seeds under op determinism.
            epoch_seed = self.seed * 1_000_003 + e
            examples = self.train_examples_ds.shuffle(buffer, seed=epoch_seed, reshuffle_each_iteration=False)
            examples = examples.enumerate().map(
                lambda i, example: self.augment(*example, tf.stack([tf.constant(epoch_seed, tf.int64), i])),
                num_parallel_calls=AUTOTUNE, deterministic=True,
            )
            return examples.batch(self.batch_size, drop_remainder=True)

        dataset = epoch(first_epoch)
        for e in range(first_epoch + 1, max(epochs, first_epoch + 1)):
            dataset = dataset.concatenate(epoch(e))
        return dataset.prefetch(AUTOTUNE)


def validate_name(name: str) -> None:
    """Raises DatasetError for a name that is none of `DATASETS`."""
    if name in TFDS_DATASETS or name in ("digits", "fashion_mnist"):
        return
    if name.startswith(("folder:", "py:")) and len(name.split(":", 1)[1]) > 0:
        return
    raise DatasetError(f"Unknown dataset; expected one of {', '.join(DATASETS)}. Received: dataset={name!r}")


def native_image_size(name: str) -> Optional[int]:
    """Side of a dataset's images as the models see them; None for folders."""
    if name == "imagenet2012":
        return 224
    if name.startswith("folder:"):
        return None
    return 32


NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "imagenet2012": 1000, "digits": 10, "fashion_mnist": 10}


def describe(name: str, image_size: Optional[int] = None, model_shape=None) -> Tuple[Tuple[int, int, int], int]:
    """(input_shape, num_classes) of a dataset without reading its images.

    Args:
        name: The dataset.
        image_size: `--image_size`, for folders whose model leaves the size open.
        model_shape: The model's input shape without the batch axis, if known:
            a folder's images are read at its height, width and channels (a
            28x28x1 model gets grey 28x28 images); sizes it leaves open are
            `image_size` (default 32).
    """
    validate_name(name)
    if name.startswith("folder:"):
        root = os.path.join(name[len("folder:"):], "train")
        classes = [d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))] if os.path.isdir(root) else []
        return folder_shape(image_size, model_shape), len(classes)
    size = native_image_size(name)
    return (size, size, 3), NUM_CLASSES[name]


def folder_shape(image_size: Optional[int], model_shape=None) -> Tuple[int, int, int]:
    """The shape a folder's images are read at: the model's own where it fixes it, else `image_size` (32), RGB."""
    model_shape = tuple(model_shape) if model_shape is not None and len(model_shape) == 3 else (None, None, None)
    side = image_size or 32
    return (model_shape[0] or side, model_shape[1] or side, model_shape[2] or 3)


def load(
    name: str,
    batch_size: int,
    data_dir: Optional[str] = None,
    val_fraction: float = 0.1,
    image_size: Optional[int] = None,
    seed: int = 0,
    eval_batch_size: Optional[int] = None,
    max_train_examples: int = 0,
    preprocessing: str = "auto",
    augment: str = "auto",
    model_shape=None,
) -> Data:
    """Builds the train, validation and test pipelines of a dataset.

    Args:
        name: "cifar10", "cifar100", "imagenet2012", "digits", "fashion_mnist"
            or "folder:PATH".
        batch_size: Global training batch size.
        data_dir: tfds data directory; for imagenet2012 it must hold the
            manual archives (or their `downloads/manual` folder); for
            fashion_mnist, the folder of its four idx files.
        val_fraction: Fraction of the training split held out for validation.
        image_size: Side of the square images for `folder:` datasets whose model leaves the size open.
        seed: Shuffle and augmentation seed.
        eval_batch_size: Evaluation batch size (default: batch_size).
        max_train_examples: Keep only the first this many training examples
            (after the validation hold-out); 0 keeps all.
        preprocessing: How pixel values reach the model (`PREPROCESSINGS`):
            "auto" is the dataset's own normalisation (per-channel statistics on
            CIFAR and Fashion-MNIST, [-1, 1] on digits and folders, Keras' caffe
            on ImageNet); the others are the conventions models are trained with.
        augment: "auto" (the dataset's own: flips and crops, no flips on digits),
            "flip_crop", "flip", "crop" or "none". (A run with a given teacher
            turns "auto" into what the teacher is indifferent to.)
        model_shape: The model's input shape: a folder's images are read at its
            size and channels (`describe`).

    Returns:
        A `Data`.

    Raises:
        DatasetError: The dataset is unknown, unreadable or not downloadable.
    """
    validate_name(name)
    eval_batch_size = eval_batch_size or batch_size
    if name == "digits":
        splits, num_classes, size = _digits(val_fraction)
    elif name == "fashion_mnist":
        splits, num_classes, size = _fashion_mnist(data_dir, val_fraction)
    elif name.startswith("folder:"):
        shape = folder_shape(image_size, model_shape)
        splits, num_classes, size = _folder(name[len("folder:"):], val_fraction, shape, seed)
    else:
        splits, num_classes, size = _tfds(name, data_dir, val_fraction)
    shape = size if isinstance(size, tuple) else (size, size, 3)
    (train, train_examples), val, test = splits
    if 0 < max_train_examples < train_examples:
        train, train_examples = train.take(max_train_examples), max_train_examples
    train_fn, eval_fn = _preprocessors(name, shape, preprocessing, augment)

    def evaluation(ds):
        return ds.map(eval_fn, num_parallel_calls=AUTOTUNE, deterministic=True).batch(eval_batch_size).prefetch(AUTOTUNE)

    if train_examples < batch_size:
        raise DatasetError(
            f"batch_size is larger than the {train_examples} training examples of {name}. "
            f"Received: batch_size={batch_size}"
        )
    return Data(
        name=name,
        train_examples_ds=train,
        val=evaluation(val[0]) if val is not None else None,
        val_examples_ds=val[0] if val is not None else None,
        test=evaluation(test[0]),
        test_examples_ds=test[0],
        num_classes=num_classes,
        input_shape=shape,
        train_examples=train_examples,
        steps_per_epoch=train_examples // batch_size,
        batch_size=batch_size,
        seed=seed,
        augment=train_fn,
    )


def from_datasets(train, validation, test=None, batch_size: int = 128, input_shape=None, num_classes: int = 0,
                  seed: int = 0, eval_batch_size: Optional[int] = None, input_keys=None, name: str = "custom") -> Data:
    """A `Data` over the user's own examples, for `hsd_tf.prune` and `--dataset=py:`.

    The examples are used as they are (no normalisation, no augmentation: the
    model was trained on them this way); each epoch reshuffles the training
    examples from the seed.

    Args:
        train: (inputs, targets) or (inputs, targets, sample weights) examples in the model's structure (one
            array, a list or a dict of inputs; a target per output, a list or a dict of them): a `tf.data.Dataset`,
            batched or not, or an (inputs, targets) pair of arrays.
        validation: Held-out examples, the same kinds; they drive the teacher ladder.
        test: Examples the results report on; default: `validation`.
        batch_size: Global training batch size.
        input_shape: The model's input shape without the batch axis (one per input for several); sizes it
            leaves open (None) are taken from the training examples, and None (a subclassed model) means any
            image (height, width, channels).
        num_classes: The model's classes, for a classifier; 0 otherwise.
        seed: Shuffle seed.
        eval_batch_size: Evaluation batch size (default: batch_size).
        input_keys: The model's input names in its order, for inputs given as a dict.
        name: The dataset's name in results and messages.

    Returns:
        A `Data` whose inputs are one tensor, or a tuple in the model's input order.

    Raises:
        DatasetError: Data of the wrong kind or shape, or fewer training examples than a batch.
    """
    shapes = input_shape if input_shape is not None and len(input_shape) and all(
        isinstance(d, (tuple, list)) for d in input_shape) else [input_shape if input_shape is not None else
                                                                 (None, None, None)]
    shapes = [tuple(shape) for shape in shapes]

    def examples(source, what):
        if isinstance(source, (tuple, list)) and len(source) == 2 and not isinstance(source, tf.data.Dataset):
            source = tf.data.Dataset.from_tensor_slices(tuple(_as_arrays(part) for part in source))
        if not isinstance(source, tf.data.Dataset):
            raise DatasetError(f"{what} must be a tf.data.Dataset of (inputs, targets) or an (inputs, targets) pair of "
                               f"arrays. Received: {what} of type {type(source).__name__}")
        spec = source.element_spec
        if not isinstance(spec, tuple) or len(spec) not in (2, 3):
            raise DatasetError(f"{what} must give (inputs, targets) or (inputs, targets, sample weights) examples. "
                               f"Received: {what} element_spec={spec}")
        inputs = _ordered(spec[0], input_keys, what)
        if len(inputs) != len(shapes):
            raise DatasetError(f"{what} gives {len(inputs)} input(s) per example; the model takes {len(shapes)}. "
                               f"Received: {what} element_spec={spec}")
        found = [tuple(x.shape) for x in inputs]
        if all(_fits(shape[1:], expected) for shape, expected in zip(found, shapes)):
            source = source.unbatch()
        elif not all(_fits(shape, expected) for shape, expected in zip(found, shapes)):
            what_reads = "images" if len(shapes) == 1 and len(shapes[0]) == 3 else "inputs"
            rank = len(found[0])
            if rank not in (len(shapes[0]), len(shapes[0]) + 1):
                raise DatasetError(f"{what}'s {what_reads} have {rank} axes; the model reads {len(shapes[0])} per "
                                   f"example. Received: {what} element_spec={spec}")
            examples = [shape[1:] if rank == len(shapes[0]) + 1 else shape for shape in found]
            raise DatasetError(f"{what}'s {what_reads} have shape {', '.join(map(str, examples))}; the model reads "
                               f"{', '.join(map(str, shapes))} per example. Received: {what} element_spec={spec}")
        return source.map(functools.partial(_standard_example, input_keys=input_keys))

    train_ds = examples(train, "train").cache()
    found = [tuple(x.shape) for x in _ordered(train_ds.element_spec[0], None, "train")]
    resolved = []
    for given, seen in zip(shapes, found):
        shape = tuple(d if d is not None else f for d, f in zip(given, seen))
        if len(seen) != len(given) or None in shape or any(d != f for d, f in zip(shape, seen) if f is not None):
            raise DatasetError(f"train's inputs have shape {seen}; the model reads {given}: give inputs of one fixed "
                               f"size that fits it. Received: train element_spec={train_ds.element_spec}")
        resolved.append(shape)
    train_examples = int(train_ds.reduce(0, lambda count, *_: count + 1))
    if train_examples < batch_size:
        raise DatasetError(f"batch_size is larger than the {train_examples} training examples. "
                           f"Received: batch_size={batch_size}")

    def evaluation(examples_ds):
        return examples_ds.batch(eval_batch_size or batch_size).cache().prefetch(AUTOTUNE)

    val_examples = examples(validation, "validation")
    test_examples = examples(test, "test") if test is not None else val_examples
    val = evaluation(val_examples)
    return Data(
        name=name, train_examples_ds=train_ds, val=val, val_examples_ds=val_examples,
        test=evaluation(test_examples) if test is not None else val, test_examples_ds=test_examples,
        num_classes=num_classes, input_shape=resolved[0] if len(resolved) == 1 else tuple(resolved),
        train_examples=train_examples, steps_per_epoch=train_examples // batch_size, batch_size=batch_size,
        seed=seed, augment=lambda *example: example[:-1],
    )


def _fits(shape, expected) -> bool:
    """Whether an example (or a batch without its batch axis) of `shape` fits a model input of `expected` shape."""
    return len(shape) == len(expected) and all(a is None or b is None or a == b for a, b in zip(shape, expected))


def _as_arrays(part):
    """Arrays of one side of an (inputs, targets) pair, in its structure; floats as float32."""
    def array(value):
        value = np.asarray(value)
        return value.astype(np.float32) if np.issubdtype(value.dtype, np.floating) else value
    return tf.nest.map_structure(array, part) if isinstance(part, (dict, list, tuple)) else array(part)


def _ordered(inputs, input_keys, what) -> list:
    """The inputs of one example (or their specs) as a list in the model's order."""
    if isinstance(inputs, dict):
        if input_keys is None or set(inputs) != set(input_keys):
            raise DatasetError(f"{what} gives inputs named {sorted(inputs)}; the model's inputs are "
                               f"{list(input_keys or [])}. Received: {what} inputs {sorted(inputs)}")
        return [inputs[key] for key in input_keys]
    return list(inputs) if isinstance(inputs, (tuple, list)) else [inputs]


def _standard_example(inputs, targets, *weights, input_keys=None):
    """An example as the cascade reads it: inputs one tensor or a tuple in the model's order, floats as float32,
    integers as int32; one integer class label per example as a scalar (hsd_tf's own labels)."""
    def cast(value):
        if value.dtype.is_floating:
            return tf.cast(value, tf.float32)
        return tf.cast(value, tf.int32) if value.dtype.is_integer else value

    inputs = [cast(x) for x in _ordered(inputs, input_keys, "the data")]
    targets = tf.nest.map_structure(cast, targets)
    if isinstance(targets, tf.Tensor) and targets.dtype.is_integer and targets.shape.num_elements() == 1:
        targets = tf.reshape(targets, [])
    inputs = inputs[0] if len(inputs) == 1 else tuple(inputs)
    return (inputs, targets) + tuple(tf.cast(w, tf.float32) for w in weights)


def load_module(dataset: str, batch_size: int, input_shape, input_keys, seed: int = 0) -> Data:
    """`--dataset=py:FILE.py` (or `py:module`): the `Data` of the module's `datasets()`, which returns
    (train, validation, test) `tf.data.Dataset`s of (inputs, targets) in the model's structure.

    Raises:
        DatasetError: The module cannot be imported, has no `datasets()`, or it returns something else (one line).
    """
    received = f"Received: dataset={dataset!r}"
    source = dataset[len("py:"):]
    try:
        module = user_code.import_module(source)
    except Exception as error:  # pylint: disable=broad-except  (the user's code: one line)
        raise DatasetError(f"--dataset: {source} cannot be imported ({type(error).__name__}: "
                           f"{' '.join(str(error).split())[:200]}). {received}") from None
    if not callable(getattr(module, "datasets", None)):
        raise DatasetError(f"--dataset: {source} defines no function datasets() returning (train, validation, test) "
                           f"tf.data.Datasets of (inputs, targets). {received}")
    try:
        splits = module.datasets()
    except Exception as error:  # pylint: disable=broad-except
        raise DatasetError(f"--dataset: {source}'s datasets() failed ({type(error).__name__}: "
                           f"{' '.join(str(error).split())[:200]}). {received}") from None
    if not isinstance(splits, (tuple, list)) or len(splits) != 3 or not all(
            isinstance(split, tf.data.Dataset) for split in splits):
        found = (f"a {type(splits).__name__} of {len(splits)}" if isinstance(splits, (tuple, list))
                 else type(splits).__name__)
        raise DatasetError(f"--dataset: {source}'s datasets() must return (train, validation, test), three "
                           f"tf.data.Datasets of (inputs, targets); it returned {found}. {received}")
    try:
        return from_datasets(*splits, batch_size=batch_size, input_shape=input_shape, seed=seed,
                             input_keys=input_keys, name=dataset)
    except DatasetError as error:
        raise DatasetError(f"--dataset: {error}") from None


# --------------------------------------------------------------------- digits


def _digits(val_fraction):
    """scikit-learn's 1,797 8x8 digits: a fixed split of 360 test images."""
    from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[..., None]
    labels = digits.target.astype(np.int32)
    order = np.random.RandomState(SPLIT_SEED).permutation(len(labels))
    test_idx, train_idx = order[:DIGITS_TEST_EXAMPLES], order[DIGITS_TEST_EXAMPLES:]
    return _held_out_splits(images, labels, train_idx, test_idx, val_fraction), 10, 32


def _held_out_splits(images, labels, train_idx, test_idx, val_fraction):
    """(train, val or None, test) datasets with their sizes; val is the first val_fraction of train_idx."""
    n_val = int(round(len(train_idx) * val_fraction))
    val_idx, train_idx = train_idx[:n_val], train_idx[n_val:]

    def split(idx):
        return tf.data.Dataset.from_tensor_slices((images[idx], labels[idx])), len(idx)

    return split(train_idx), split(val_idx) if n_val else None, split(test_idx)


# -------------------------------------------------------------- fashion_mnist


def _fashion_mnist(data_dir, val_fraction):
    """Zalando's 60,000 + 10,000 grey 28x28 images; the test split is the official one."""
    train_images, train_labels, test_images, test_labels = fashion_mnist_arrays(data_dir)
    images = np.concatenate([train_images, test_images])[..., None]
    labels = np.concatenate([train_labels, test_labels]).astype(np.int32)
    train_idx = np.random.RandomState(SPLIT_SEED).permutation(len(train_labels))
    test_idx = np.arange(len(train_labels), len(labels))
    return _held_out_splits(images, labels, train_idx, test_idx, val_fraction), 10, 32


def fashion_mnist_arrays(data_dir: Optional[str] = None):
    """(train images, train labels, test images, test labels): uint8 (N, 28, 28) and (N,), from the idx files (in
    `data_dir`, Keras' cache or Debian's folder), else downloaded by Keras.

    Raises:
        DatasetError: The files are nowhere and cannot be downloaded.
    """
    folder = fashion_mnist_folder(data_dir)
    if folder is not None:
        return tuple(_read_idx(folder, FASHION_MNIST_FILES[key])
                     for key in ("train_images", "train_labels", "test_images", "test_labels"))
    import keras  # pylint: disable=import-outside-toplevel

    if not _reachable("storage.googleapis.com"):
        raise DatasetError(
            f"fashion_mnist: its idx files ({', '.join(f + '.gz' for f in FASHION_MNIST_FILES.values())}) "
            f"are not in data_dir, ~/.keras/datasets/fashion-mnist or {FASHION_MNIST_DEBIAN_DIR}, and "
            f"there is no internet to download them. Copy them into a folder and pass --data_dir=FOLDER "
            f"(Debian: apt-get install dataset-fashion-mnist). Received: data_dir={data_dir!r}"
        )
    (train_images, train_labels), (test_images, test_labels) = keras.datasets.fashion_mnist.load_data()
    return train_images, train_labels, test_images, test_labels


def fashion_mnist_folder(data_dir: Optional[str]) -> Optional[str]:
    """The first folder holding all four Fashion-MNIST idx files, or None."""
    keras_home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    candidates = [data_dir, os.path.join(data_dir, "fashion-mnist")] if data_dir else []
    candidates += [os.path.join(keras_home, "datasets", "fashion-mnist"), FASHION_MNIST_DEBIAN_DIR]
    for folder in candidates:
        if all(_idx_path(folder, name) for name in FASHION_MNIST_FILES.values()):
            return folder
    return None


def _idx_path(folder: str, name: str) -> Optional[str]:
    for path in (os.path.join(folder, name + ".gz"), os.path.join(folder, name)):
        if os.path.isfile(path):
            return path
    return None


def _read_idx(folder: str, name: str) -> np.ndarray:
    """An unsigned-byte idx array (the MNIST file format), gzipped or not."""
    path = _idx_path(folder, name)
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
        magic = int.from_bytes(raw[:4], "big")
        if magic >> 8 != 0x08 or not 1 <= magic & 0xFF <= 4:
            raise ValueError(f"magic number {magic:#x} is not that of an unsigned-byte idx file")
        dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(magic & 0xFF)]
        return np.frombuffer(raw, np.uint8, offset=4 + 4 * len(dims)).reshape(dims)
    except (OSError, ValueError, EOFError) as error:
        raise DatasetError(f"fashion_mnist: cannot read {path} ({error}); replace it with the official file.") from None


# ----------------------------------------------------------------------- tfds


def _tfds(name, data_dir, val_fraction):
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    percent = int(round(val_fraction * 100))
    if abs(percent - val_fraction * 100) > 1e-6:
        raise DatasetError(
            f"val_fraction must be a whole percentage for tfds datasets. Received: val_fraction={val_fraction}"
        )
    builder = tfds.builder(name, data_dir=data_dir)
    _prepare(builder, name, data_dir)
    test_split = "validation" if name == "imagenet2012" else "test"
    read = {"as_supervised": True, "shuffle_files": False}
    train_split = f"train[:{100 - percent}%]" if percent else "train"
    train = builder.as_dataset(split=train_split, **read)
    val = builder.as_dataset(split=f"train[{100 - percent}%:]", **read) if percent else None
    test = builder.as_dataset(split=test_split, **read)
    num_classes = builder.info.features["label"].num_classes
    size = native_image_size(name)
    val = (val, int(val.cardinality())) if val is not None else None
    return ((train, int(train.cardinality())), val, (test, int(test.cardinality()))), num_classes, size


def _prepare(builder, name, data_dir):
    """Prepares a tfds dataset, failing fast when it cannot be obtained."""
    if builder.is_prepared():
        return
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    if name == "imagenet2012":
        manual_dir = _imagenet_manual_dir(data_dir)
        config = tfds.download.DownloadConfig(manual_dir=manual_dir)
    else:
        hosts = sorted({urllib.parse.urlparse(url).hostname for url in (builder.url_infos or {})})
        for host in hosts:
            if not _reachable(host):
                raise DatasetError(
                    f"dataset {name} is not in data_dir={builder.data_dir!r} and {host} cannot be reached to "
                    f"download it. On a machine with internet run `tfds build {name} --data_dir=DIR`, copy DIR "
                    f"here and pass --data_dir=DIR."
                )
        config = None
    builder.download_and_prepare(download_config=config)


def _imagenet_manual_dir(data_dir):
    archives = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")
    if not data_dir:
        raise DatasetError(
            "imagenet2012 needs --data_dir: a folder with ILSVRC2012_img_train.tar and "
            "ILSVRC2012_img_val.tar (from https://image-net.org). Received: data_dir=None"
        )
    for candidate in (data_dir, os.path.join(data_dir, "downloads", "manual")):
        if all(os.path.exists(os.path.join(candidate, a)) for a in archives):
            return candidate
    raise DatasetError(
        f"imagenet2012 archives {', '.join(archives)} not found in data_dir or data_dir/downloads/manual. "
        f"Received: data_dir={data_dir!r}"
    )


def _reachable(host: str, port: int = 443, timeout: float = 5.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------- folder


# The first bytes of each image format tf.io.decode_image reads.
IMAGE_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM")


def folder_files(path: str):
    """Checks a folder dataset and lists it: (class names, {split: (file paths, labels)}), splits train, test
    and, when the folder is there, val.

    Every file with an image extension is opened and its first bytes checked
    against PNG, JPEG, GIF and BMP signatures, so a file that is not an image
    fails here, before any training, rather than in the middle of an epoch.
    Sizes and colour modes may differ (images are resized and read as RGB).

    Raises:
        DatasetError: Missing split folders, fewer than two classes, classes that
            differ between splits, a class without images, or unreadable files.
    """
    received = f"Received: dataset='folder:{path}'"
    classes = {}
    present = ("train", "test") + (("val",) if os.path.isdir(os.path.join(path, "val")) else ())
    for split in present:
        root = os.path.join(path, split)
        if not os.path.isdir(root):
            raise DatasetError(f"folder dataset needs {root}/<class>/<images>. {received}")
        names = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
        if len(names) < 2:
            raise DatasetError(f"folder dataset needs at least two class folders in {root}, found {len(names)}. "
                               f"{received}")
        classes[split] = names
    for split in present[1:]:
        if classes["train"] != classes[split]:
            raise DatasetError(f"train and {split} class folders differ: {classes['train']} vs {classes[split]}. "
                               f"{received}")
    splits, unreadable = {}, []
    for split in present:
        paths, labels = [], []
        for label, name in enumerate(classes["train"]):
            folder = os.path.join(path, split, name)
            images = [os.path.join(folder, f) for f in sorted(os.listdir(folder)) if f.lower().endswith(IMAGE_EXTENSIONS)]
            if not images:
                raise DatasetError(f"class folder {folder} holds no images ({', '.join(IMAGE_EXTENSIONS)}). {received}")
            for image in images:
                with open(image, "rb") as f:
                    if not f.read(8).startswith(IMAGE_SIGNATURES):
                        unreadable.append(image)
            paths += images
            labels += [label] * len(images)
        splits[split] = (np.array(paths), np.array(labels, np.int32))
    if unreadable:
        raise DatasetError(f"{unreadable[0]} is not a PNG, JPEG, GIF or BMP image ({len(unreadable)} such file"
                           f"{'s' if len(unreadable) > 1 else ''} in all); remove or replace them. {received}")
    return classes["train"], splits


def _folder(path, val_fraction, shape, seed):
    """PATH/train/<class>/*, PATH/test/<class>/* and, when there is one, PATH/val/<class>/* (the validation split;
    else `val_fraction` of train), read at `shape` (height, width, channels) in [0, 1]."""
    class_names, splits = folder_files(path)
    height, width, channels = shape

    def decode(file, label):
        image = tf.io.decode_image(tf.io.read_file(file), channels=channels, expand_animations=False)
        image = tf.image.resize(tf.cast(image, tf.float32) / 255.0, (height, width))
        return image, label

    def split(paths, labels):
        ds = tf.data.Dataset.from_tensor_slices((paths, labels)).map(decode, num_parallel_calls=AUTOTUNE)
        return ds, len(paths)

    train_paths, train_labels = splits["train"]
    if "val" in splits:
        val, train = split(*splits["val"]), split(train_paths, train_labels)
    else:
        order = np.random.RandomState(seed).permutation(len(train_paths))
        n_val = int(round(len(order) * val_fraction))
        val = split(train_paths[order[:n_val]], train_labels[order[:n_val]]) if n_val else None
        train = split(train_paths[order[n_val:]], train_labels[order[n_val:]])
    test = split(*splits["test"])
    return (train, val, test), len(class_names), shape


# -------------------------------------------------------------- preprocessing


PREPROCESSINGS = ("auto", "raw", "unit", "symmetric", "caffe", "torch", "tf")
AUGMENTATIONS = ("auto", "flip_crop", "flip", "crop", "none")
TORCH_MEAN, TORCH_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def convention(preprocessing: str, channels: int) -> Callable:
    """Maps an image in [0, 1] (RGB, or grey) to what a model trained with `preprocessing` expects.

    raw: 0..255 (for models that rescale inside, a `Rescaling(1/255)` layer);
    unit: [0, 1]; symmetric and tf: [-1, 1] (keras.applications' "tf");
    caffe: BGR 0..255 less the ImageNet means (keras.applications' "caffe");
    torch: [0, 1] less the ImageNet means, over their standard deviations.
    A grey image takes the means of the three channels' statistics.
    """
    def per_channel(values):
        values = tf.constant(values, tf.float32)
        return values if channels == 3 else tf.fill([channels], tf.reduce_mean(values))

    if preprocessing == "raw":
        return lambda image: image * 255.0
    if preprocessing == "unit":
        return tf.identity
    if preprocessing in ("symmetric", "tf"):
        return lambda image: image * 2.0 - 1.0
    if preprocessing == "caffe":
        mean = per_channel(CAFFE_BGR_MEAN[::-1])
        bgr = (lambda image: tf.reverse(image, axis=[-1])) if channels == 3 else tf.identity
        return lambda image: bgr(image * 255.0 - mean)
    if preprocessing == "torch":
        mean, std = per_channel(TORCH_MEAN), per_channel(TORCH_STD)
        return lambda image: (image - mean) / std
    raise ValueError(f"Unknown preprocessing; expected one of {', '.join(PREPROCESSINGS)}. "
                     f"Received: preprocessing={preprocessing!r}")


def flips(name: str) -> bool:
    """Whether the dataset's own augmentation ("auto") mirrors images: all but digits, which are not symmetric."""
    return name != "digits"


def _preprocessors(name, shape, preprocessing="auto", augment="auto"):
    """(train_fn, eval_fn) mapping (image, label) to the model's float32 images.

    Every dataset first gives images in [0, 1] at the model's shape; then
    training images are augmented (`augment`) and both are normalised, with the
    dataset's own statistics ("auto") or a named convention (`convention`).
    """
    height, width, channels = shape
    if name == "imagenet2012":
        to_unit = lambda image: tf.cast(image, tf.float32) / 255.0  # noqa: E731
        normalize = _caffe_unit if preprocessing == "auto" else convention(preprocessing, channels)
        train = _imagenet_train(normalize, flip=augment in ("flip_crop", "flip") or (augment == "auto" and flips(name)),
                                crop=augment in ("auto", "flip_crop", "crop"))
        return train, lambda image, label: (normalize(_imagenet_center(to_unit(image))), label)
    if name in CIFAR_STATS:
        mean, std = CIFAR_STATS[name]
        to_unit = lambda image: tf.cast(image, tf.float32) / 255.0  # noqa: E731
        pad = 4
    elif name == "digits":
        mean, std = (0.5,) * 3, (0.5,) * 3
        to_unit = _digits_to_rgb32
        pad = 2
    elif name == "fashion_mnist":
        mean, std = (FASHION_MNIST_STATS[0],) * 3, (FASHION_MNIST_STATS[1],) * 3
        to_unit = _fashion_to_rgb32
        pad = 2
    else:  # folder: images already decoded to [0, 1] at the model's shape
        mean, std = (0.5,) * channels, (0.5,) * channels
        to_unit = tf.identity
        pad = max(1, min(height, width) // 8)
    flip = flips(name)
    if augment != "auto":
        flip, pad = augment in ("flip_crop", "flip"), pad if augment in ("flip_crop", "crop") else 0
    if preprocessing == "auto":
        mean, std = tf.constant(mean, tf.float32), tf.constant(std, tf.float32)
        normalize = lambda image: (image - mean) / std  # noqa: E731
    else:
        normalize = convention(preprocessing, channels)

    def eval_fn(image, label):
        return normalize(to_unit(image)), label

    def train_fn(image, label, seed):
        image = to_unit(image)
        if flip:
            image = tf.image.stateless_random_flip_left_right(image, seed)
        if pad:
            image = tf.image.resize_with_crop_or_pad(image, height + 2 * pad, width + 2 * pad)
            image = tf.image.stateless_random_crop(image, (height, width, channels), seed + 1)
        return normalize(image), label

    return train_fn, eval_fn


def _digits_to_rgb32(image):
    image = tf.image.resize(image, (32, 32), method="bilinear")
    return tf.tile(image, (1, 1, 3))


def _fashion_to_rgb32(image):
    """28x28 grey bytes to 32x32x3 in [0, 1], zero-padded rather than resized so no pixel is blurred."""
    image = tf.image.pad_to_bounding_box(tf.cast(image, tf.float32) / 255.0, 2, 2, 32, 32)
    return tf.tile(image, (1, 1, 3))


def _caffe_unit(image):
    """keras.applications' "caffe" preprocessing of an image in [0, 1]: BGR 0..255 less the ImageNet means."""
    return tf.reverse(image * 255.0, axis=[-1]) - tf.constant(CAFFE_BGR_MEAN)


def _imagenet_train(normalize, flip=True, crop=True):
    """Random-resized crops (or, without `crop`, the evaluation's centre crop) and flips, at 224x224."""
    def train_fn(image, label, seed):
        if crop:
            bbox = tf.constant([0.0, 0.0, 1.0, 1.0], shape=(1, 1, 4))
            begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
                tf.shape(image), bbox, seed, min_object_covered=0.1, aspect_ratio_range=(3 / 4, 4 / 3),
                area_range=(0.08, 1.0), max_attempts=10, use_image_if_no_bounding_boxes=True,
            )
            image = tf.image.resize(tf.slice(image, begin, crop_size), (224, 224)) / 255.0
        else:
            image = _imagenet_center(tf.cast(image, tf.float32) / 255.0)
        if flip:
            image = tf.image.stateless_random_flip_left_right(image, seed + 1)
        return normalize(image), label

    return train_fn


def _imagenet_center(image):
    """The evaluation view: the short side resized to 256, the centre 224x224."""
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = 256.0 / tf.reduce_min(shape)
    image = tf.image.resize(image, tf.cast(tf.round(shape * scale), tf.int32))
    return tf.image.resize_with_crop_or_pad(image, 224, 224)
