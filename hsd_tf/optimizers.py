"""The optimizers of the cascade's phases: the weights' SGD with cosine restarts, and the scores' own."""

import math

import keras

from hsd_tf.config import Config


def weight_optimizer(config: Config, data, epochs: int) -> keras.optimizers.Optimizer:
    """SGD with Nesterov momentum; cosine restarts with decaying peaks, a whole number of cycles per phase.

    The cycles are about lr_cycle_epochs long, stretched or shrunk so that
    `epochs` holds a whole number of them: a phase then ends at the bottom of a
    cycle, with annealed weights, rather than part-way down one at a high
    learning rate (8 epochs of 5-epoch cycles would stop 60% into the second).

    Args:
        config: The run's settings (learning_rate, lr_cycle_epochs, lr_peak_decay, momentum, weight_decay).
        data: The run's `Data` (steps per epoch).
        epochs: Epochs of the phase this optimizer trains.
    """
    return keras.optimizers.SGD(_cosine_cycles(config.learning_rate, config, data, epochs), momentum=config.momentum,
                                nesterov=True, weight_decay=config.weight_decay)


def _cosine_cycles(peak: float, config: Config, data, epochs: int):
    """Cosine restarts from `peak`, peaks decaying by lr_peak_decay, a whole number of cycles in `epochs`."""
    cycles = max(1, round(epochs / config.lr_cycle_epochs))
    return keras.optimizers.schedules.CosineDecayRestarts(
        peak, first_decay_steps=max(1, math.ceil(epochs * data.steps_per_epoch / cycles)),
        t_mul=1.0, m_mul=config.lr_peak_decay,
    )


def score_optimizer(config: Config, data, epochs: int) -> keras.optimizers.Optimizer:
    """The scores' own optimizer, without weight decay (docs/method.md section 2), on the weights' schedule.

    With score_schedule "cosine" the score learning rate follows the weights'
    cosine cycles, peaking at score_learning_rate. A constant one ("constant")
    kept switching filters at the end of the joint phase, when the weights'
    learning rate is near zero and nothing can adapt to the new mask: the
    student then left the phase at chance accuracy (docs/mask_stability.md).
    sgd is the paper's CIFAR choice, "the weights' optimizer": Nesterov SGD
    with the weights' momentum.

    Args:
        config: The run's settings.
        data: The run's `Data` (steps per epoch).
        epochs: Epochs of the phase.
    """
    rate = (_cosine_cycles(config.score_learning_rate, config, data, epochs) if config.score_schedule == "cosine"
            else config.score_learning_rate)
    if config.score_optimizer == "sgd":
        return keras.optimizers.SGD(rate, momentum=config.momentum, nesterov=True)
    if config.score_optimizer == "adam":
        return keras.optimizers.Adam(rate)
    return keras.optimizers.RMSprop(rate)
