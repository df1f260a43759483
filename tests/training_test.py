"""The run's choices made from the user's model: the preprocessing and augmentation a given teacher was trained with."""

import os

import keras
import numpy as np
import tensorflow as tf

from hsd_tf import training
from hsd_tf.config import Config


def _folder(root, mirrored_classes=False):
    """Two classes of 8x8 RGB images: dark (0..60) and bright (190..250), or bright on the left and on the right."""
    rng = np.random.RandomState(0)
    for split, count in (("train", 24), ("val", 8), ("test", 8)):
        for label, (low, high) in enumerate(((0, 60), (190, 250))):
            os.makedirs(os.path.join(root, split, f"c{label}"), exist_ok=True)
            for i in range(count):
                pixels = rng.randint(low, high, (8, 8, 3)).astype(np.uint8)
                if mirrored_classes:
                    pixels = rng.randint(0, 60, (8, 8, 3)).astype(np.uint8)
                    pixels[:, :4] += 150
                    pixels = pixels[:, ::-1] if label else pixels
                tf.io.write_file(os.path.join(root, split, f"c{label}", f"{i}.png"),
                                 tf.io.encode_png(np.ascontiguousarray(pixels)))


def test_a_given_teacher_gets_the_preprocessing_it_was_trained_with(tmp_path, capsys):
    """A model that rescales inside (Keras guides' `Rescaling(1/255)`) is fed 0..255, whatever else scores lower."""
    _folder(str(tmp_path))
    x = keras.Input((8, 8, 3))
    y = keras.layers.Conv2D(4, 3, name="stem")(keras.layers.Rescaling(1.0 / 255)(x))
    y = keras.layers.Conv2D(4, 3, name="body")(y)
    model = keras.Model(x, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(y)))
    # Hand-set weights: the logit of "bright" grows with the mean pixel in [0, 1], with its boundary at 0.5.
    model.get_layer("stem").set_weights([np.full((3, 3, 3, 4), 1 / 27, np.float32), np.zeros(4, np.float32)])
    model.get_layer("body").set_weights([np.full((3, 3, 4, 4), 1 / 36, np.float32), np.zeros(4, np.float32)])
    model.layers[-1].set_weights([np.array([[-1.0, 1.0]] * 4, np.float32), np.array([2.0, -2.0], np.float32)])
    config = Config(dataset=f"folder:{tmp_path}", arch="unused", teacher="given", batch_size=8, verbose=1)
    data = training.load_data(config, (8, 8, 3))
    chosen = training._chosen_for_teacher(config, model, data)  # pylint: disable=protected-access
    images = np.concatenate([batch.numpy() for batch, _ in chosen.test])
    assert 0 <= images.min() and images.max() > 150  # 0..255
    preprocessing, augmentation = capsys.readouterr().out.strip().splitlines()
    assert preprocessing.startswith("Preprocessing: raw, under which the teacher scores best on the validation "
                                    "split (auto ")
    assert "raw 1.0000" in preprocessing
    # Brightness does not change under a mirror: this teacher could have been trained on flips.
    assert augmentation.startswith("Augmentation: flip_crop: the teacher's validation accuracy is 1.0000, 1.0000 on "
                                   "mirrored images")


def test_a_teacher_that_tells_mirrored_images_apart_gets_no_flips(tmp_path, capsys):
    """Classes that are mirror images of each other (as "b" and "d"): training on flips would swap their labels."""
    _folder(str(tmp_path), mirrored_classes=True)
    x = keras.Input((8, 8, 3))
    side = keras.layers.Conv2D(1, 8, name="side")(x)  # one 8x8 filter: left half less right half
    model = keras.Model(x, keras.layers.Dense(2, name="logits")(keras.layers.Flatten()(side)))
    left_less_right = np.concatenate([-np.ones((8, 4, 3, 1)), np.ones((8, 4, 3, 1))], axis=1).astype(np.float32)
    model.get_layer("side").set_weights([left_less_right, np.zeros(1, np.float32)])
    model.get_layer("logits").set_weights([np.array([[-1.0, 1.0]], np.float32), np.zeros(2, np.float32)])
    config = Config(dataset=f"folder:{tmp_path}", arch="unused", teacher="given", batch_size=8, verbose=1,
                    preprocessing="symmetric")
    chosen = training._chosen_for_teacher(config, model, training.load_data(config, (8, 8, 3)))  # pylint: disable=protected-access
    assert capsys.readouterr().out.strip() == (
        "Augmentation: crop: the teacher's validation accuracy is 1.0000, 0.0000 on mirrored images, 1.0000 on "
        "shifted crops; --augment=NAME chooses one.")
    labels = set()
    for example in chosen.train_examples_ds:
        for seed in range(3):  # shifted by at most a pixel, never mirrored: the bright half stays on its side
            image, label = chosen.augment(*example, tf.constant([seed, 0], tf.int64))
            left, right = image.numpy()[:, :3].mean(), image.numpy()[:, 5:].mean()
            assert (left < right) == bool(label.numpy())
            labels.add(int(label.numpy()))
    assert labels == {0, 1}


def test_a_teacher_that_was_not_trained_on_shifts_gets_no_crops(tmp_path, capsys):
    """A teacher that reads one edge of the image: a shifted crop puts padding there and it misreads the image."""
    _folder(str(tmp_path))
    x = keras.Input((8, 8, 3))
    edge = keras.layers.Conv2D(1, 8, name="edge")(x)  # one 8x8 filter that sees only the leftmost column
    model = keras.Model(x, keras.layers.Dense(2, name="logits")(keras.layers.Flatten()(edge)))
    leftmost = np.zeros((8, 8, 3, 1), np.float32)
    leftmost[:, 0] = 1.0
    model.get_layer("edge").set_weights([leftmost, np.zeros(1, np.float32)])
    model.get_layer("logits").set_weights([np.array([[-1.0, 1.0]], np.float32), np.zeros(2, np.float32)])
    config = Config(dataset=f"folder:{tmp_path}", arch="unused", teacher="given", batch_size=8, verbose=1,
                    preprocessing="symmetric")
    chosen = training._chosen_for_teacher(config, model, training.load_data(config, (8, 8, 3)))  # pylint: disable=protected-access
    printed = capsys.readouterr().out.strip()
    # Bright images whose left column became black padding (-1) read as dark; mirrored ones keep a bright edge.
    assert printed.startswith("Augmentation: flip: the teacher's validation accuracy is 1.0000, 1.0000 on mirrored "
                              "images, 0.")
    assert printed.endswith(" on shifted crops; --augment=NAME chooses one.")
    assert float(printed.split(", ")[-1].split()[0]) < 1.0 - training.SHIFT_TOLERANCE
    mirrored = 0
    for image, label in chosen.train_examples_ds:
        expected = image.numpy() * 2.0 - 1.0
        for seed in range(3):  # the image or its mirror, never shifted
            augmented = chosen.augment(image, label, tf.constant([seed, 0], tf.int64))[0].numpy()
            is_mirror = np.allclose(augmented, expected[:, ::-1])
            assert is_mirror or np.allclose(augmented, expected)
            mirrored += is_mirror
    assert mirrored > 0
