"""Helpers the tests share: the repository root, running main.py, tiny settings, random weights, a cascade."""

import os
import subprocess
import sys

import keras
import numpy as np

from hsd_tf.cascade import Cascade

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--dataset=digits", "--arch=vgg16", "--width_multiplier=0.0625", "--num_ta=1", "--prune_ratio=0.5",
        "--batch_size=128", "--teacher_epochs=2", "--teacher_learning_rate=0.05", "--joint_epochs=1",
        "--frozen_epochs=1", "--finetune_epochs=1", "--verbose=0"]


def run_main(*args, timeout=600):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TF_CONFIG", None)
    return subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, env=env)


def randomize(model, seed=0):
    """Random weights and BatchNorm statistics, so no test passes by symmetry."""
    rng = np.random.RandomState(seed)
    leaves = [layer for layer in model._flatten_layers(include_self=False)  # pylint: disable=protected-access
              if not list(layer._flatten_layers(include_self=False, recursive=False))]  # pylint: disable=protected-access
    for layer in leaves:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([
                rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.3, beta.shape),
                rng.normal(0, 0.3, mean.shape), rng.uniform(0.5, 1.5, var.shape),
            ])
        elif layer.weights:
            layer.set_weights([rng.normal(0, 0.5, w.shape).astype("float32") for w in layer.get_weights()])
    return model


def make_cascade(model, ratios, hint_weight=0.0, score_lr=1.0, seed=0):
    teacher = randomize(model, seed)
    cascade = Cascade(model, ratios, teacher=teacher, hint_weight=hint_weight)
    cascade.initialize_from(teacher)
    # Plain SGD with lr 1 on the scores: the score update is minus the gradient.
    cascade.compile(optimizer=keras.optimizers.SGD(0.01), score_optimizer=keras.optimizers.SGD(score_lr))
    return cascade, teacher


def beyond_setup(build, examples=24, seed=0):
    """A compiled model of another task (`conftest.BEYOND`), random weights, its data and its task.

    Returns:
        (the user's model, the model with its final activations taken off, `hsd_tf.data.Data`, `hsd_tf.task.Task`).
    """
    from hsd_tf import architectures, data as data_lib, task as task_lib  # pylint: disable=import-outside-toplevel

    model, make = build()
    model = randomize(model, seed)
    rng = np.random.RandomState(seed)
    shapes = [tuple(x.shape[1:]) for x in model.inputs]
    data = data_lib.from_datasets(make(rng, examples), make(rng, examples // 2), batch_size=8,
                                  input_shape=shapes if len(shapes) > 1 else shapes[0],
                                  input_keys=[x.name for x in model.inputs])
    stripped, activations = architectures.without_final_activations(model)
    task = task_lib.from_model(model, activations, data.target_spec)
    return model, stripped, data, task
