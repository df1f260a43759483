"""Choosing the tf.distribute strategy, and the batch/replica rule."""

import pytest
import tensorflow as tf

from hsd_tf import strategy
from hsd_tf.config import Config, ConfigError


def test_auto_is_one_device_without_gpus():
    assert strategy.make("auto").num_replicas_in_sync == 1
    assert isinstance(strategy.make("one_device"), tf.distribute.OneDeviceStrategy)


def test_mirrored_uses_every_logical_cpu():
    assert strategy.make("mirrored").num_replicas_in_sync == len(tf.config.list_logical_devices("CPU")) == 2


def test_unknown_strategy():
    with pytest.raises(ValueError, match="strategy='tpu'"):
        strategy.make("tpu")


def test_batch_must_divide_over_replicas():
    Config(batch_size=8).check_replicas(2)
    with pytest.raises(ConfigError, match="--batch_size: .* 2 replicas. Received: batch_size=7"):
        Config(batch_size=7).check_replicas(2)
