"""The phases' optimizers: whole cosine cycles per phase, the scores on the weights' schedule."""

import types

import keras
import pytest

from hsd_tf import optimizers
from hsd_tf.config import Config


def _rate(optimizer, step):
    """The learning rate the optimizer would apply at `step`."""
    optimizer.iterations.assign(step)
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


@pytest.mark.parametrize("epochs, cycle, cycles", [(8, 5, 2), (10, 5, 2), (3, 5, 1), (16, 5, 3)])
def test_a_phase_holds_whole_cosine_cycles_and_ends_annealed(epochs, cycle, cycles):
    config = Config(learning_rate=0.1, lr_cycle_epochs=cycle, lr_peak_decay=0.8)
    data = types.SimpleNamespace(steps_per_epoch=10)
    optimizer = optimizers.weight_optimizer(config, data, epochs)
    steps = epochs * 10
    assert _rate(optimizer, 0) == pytest.approx(0.1)
    assert _rate(optimizer, steps - 1) < 0.002  # the last step is at the bottom of a cycle
    restarts = [s for s in range(1, steps) if _rate(optimizer, s) > _rate(optimizer, s - 1)]
    assert len(restarts) == cycles - 1
    for k, step in enumerate(restarts, start=1):
        assert _rate(optimizer, step) == pytest.approx(0.1 * 0.8 ** k, rel=1e-3)


def test_scores_follow_the_weights_schedule_or_stay_constant():
    data = types.SimpleNamespace(steps_per_epoch=10)
    weights = optimizers.weight_optimizer(Config(learning_rate=0.1), data, 8)
    scores = optimizers.score_optimizer(Config(learning_rate=0.1, score_learning_rate=0.01), data, 8)
    for step in (0, 13, 39, 40, 79):
        assert _rate(scores, step) == pytest.approx(_rate(weights, step) / 10, rel=1e-5)
    constant = optimizers.score_optimizer(Config(score_learning_rate=0.01, score_schedule="constant"), data, 8)
    assert float(keras.ops.convert_to_numpy(constant.learning_rate)) == pytest.approx(0.01)
    sgd = optimizers.score_optimizer(Config(score_optimizer="sgd"), data, 8)
    assert isinstance(sgd, keras.optimizers.SGD) and sgd.nesterov and sgd.momentum == 0.9
