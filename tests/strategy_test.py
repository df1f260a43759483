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
    with pytest.raises(ValueError, match="strategy='gpus'"):
        strategy.make("gpus")


def test_a_single_process_is_the_chief():
    assert strategy.worker(strategy.make("mirrored")) == (True, "chief")
    assert strategy.worker(strategy.make("auto")) == (True, "chief")


@pytest.mark.parametrize("tf_config,reason", [
    (None, "TF_CONFIG environment variable, which is not set"),
    ('{"cluster": {"worker": ["127.0.0.1:1"]}}', "KeyError: 'task'"),
    ("worker0", "JSONDecodeError"),
])
def test_multi_worker_needs_a_valid_tf_config(monkeypatch, tf_config, reason):
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(ValueError, match=reason):
        strategy.make("multi_worker")


def test_batch_must_divide_over_replicas():
    Config(batch_size=8).check_replicas(2)
    with pytest.raises(ConfigError, match="--batch_size: .* 2 replicas. Received: batch_size=7"):
        Config(batch_size=7).check_replicas(2)
