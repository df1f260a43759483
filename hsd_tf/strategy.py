"""The tf.distribute strategy of a run.

Everything the cascade keeps is created in the strategy's scope. Losses are
means over the global batch (`hsd_tf.losses`) and BatchNorm is synchronized
(`hsd_tf.network.make_layer`), so N replicas train like one device on the
same global batch (tests/distribute_test.py).
"""

import tensorflow as tf

STRATEGIES = ("auto", "one_device", "mirrored")


def make(name: str) -> tf.distribute.Strategy:
    """Builds a strategy by name.

    Args:
        name: "auto" (mirrored over every GPU when there are several, else
            TensorFlow's default single-device placement), "one_device" (the first GPU, else the CPU) or
            "mirrored" (every GPU, or every logical CPU when there is none).

    Returns:
        The strategy.
    """
    if name not in STRATEGIES:
        raise ValueError(f"Unknown strategy; expected one of {STRATEGIES}. Received: strategy={name!r}")
    gpus = tf.config.list_logical_devices("GPU")
    if name == "mirrored" or (name == "auto" and len(gpus) > 1):
        devices = gpus or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy((gpus or tf.config.list_logical_devices("CPU"))[0].name)
    # TensorFlow's default placement: no distribution machinery on the hot path.
    return tf.distribute.get_strategy()
