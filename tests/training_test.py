"""The run's choices made from the user's model: the preprocessing a given teacher was trained with."""

import os

import keras
import numpy as np
import tensorflow as tf

from hsd_tf import training
from hsd_tf.config import Config


def _folder(root):
    """Two classes told apart by brightness: dark (0..60) and bright (190..250) 8x8 RGB images."""
    rng = np.random.RandomState(0)
    for split, count in (("train", 24), ("val", 8), ("test", 8)):
        for label, (low, high) in enumerate(((0, 60), (190, 250))):
            os.makedirs(os.path.join(root, split, f"c{label}"), exist_ok=True)
            for i in range(count):
                pixels = rng.randint(low, high, (8, 8, 3)).astype(np.uint8)
                tf.io.write_file(os.path.join(root, split, f"c{label}", f"{i}.png"), tf.io.encode_png(pixels))


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
    chosen = training._preprocessing_for(config, model, data)  # pylint: disable=protected-access
    images = np.concatenate([batch.numpy() for batch, _ in chosen.test])
    assert 0 <= images.min() and images.max() > 150  # 0..255
    line = capsys.readouterr().out.strip()
    assert line.startswith("Preprocessing: raw, under which the teacher scores best on the validation split (auto ")
    assert "raw 1.0000" in line
