"""The tf.distribute strategy of a run.

Everything the cascade keeps is created in the strategy's scope. Losses are
means over the global batch (`hsd_tf.losses`) and BatchNorm is synchronized
(`hsd_tf.architectures.conv_unit`, `hsd_tf.cascade.clone_layer`), so N replicas train like one device on the
same global batch (tests/distribute_test.py).

`make` must run before any other TensorFlow op of the process:
MultiWorkerMirroredStrategy and the TPU system configure the runtime and
refuse once it has started.
"""

import json
import os

import tensorflow as tf

STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker", "tpu")


def make(name: str) -> tf.distribute.Strategy:
    """Builds a strategy by name.

    Args:
        name: "auto" (mirrored over every GPU when there are several, else
            TensorFlow's default single-device placement), "one_device" (the
            first GPU, else the CPU), "mirrored" (every GPU, or every logical
            CPU when there is none), "multi_worker" (every worker of the
            cluster in the `TF_CONFIG` environment variable, each with all
            its GPUs) or "tpu" (the TPU named by `TPU_NAME`, or the local one
            on a TPU VM).

    Returns:
        The strategy.

    Raises:
        ValueError: Unknown name, no usable `TF_CONFIG`, or no TPU (the
            message is the reason, for `ConfigError`).
    """
    if name not in STRATEGIES:
        raise ValueError(f"Unknown strategy; expected one of {STRATEGIES}. Received: strategy={name!r}")
    if name == "multi_worker":
        _check_tf_config()
        return _MultiWorkerMirroredStrategy()
    if name == "tpu":
        return _tpu()
    gpus = tf.config.list_logical_devices("GPU")
    if name == "mirrored" or (name == "auto" and len(gpus) > 1):
        devices = gpus or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy((gpus or tf.config.list_logical_devices("CPU"))[0].name)
    # TensorFlow's default placement: no distribution machinery on the hot path.
    return tf.distribute.get_strategy()


def worker(distribution: tf.distribute.Strategy):
    """(is_chief, name) of this process in the strategy's cluster.

    The chief is the task "chief", else worker 0; a single process is its own
    chief. Only the chief writes the model_dir; the others write into a
    private folder named `name` (see `hsd_tf.training`).
    """
    resolver = distribution.cluster_resolver
    task_type = getattr(resolver, "task_type", None)
    if not task_type or isinstance(resolver, tf.distribute.cluster_resolver.TPUClusterResolver):
        return True, "chief"
    task_id = int(resolver.task_id or 0)
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    is_chief = task_type == "chief" or (task_type == "worker" and task_id == 0 and not has_chief)
    return is_chief, f"{task_type}-{task_id}"


class _MultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """MultiWorkerMirroredStrategy with the `reduce` that Keras 3's `fit` expects.

    Under this strategy `fit` fails in two places (keras-team/keras#20585):
    it reduces a whole (images, labels) batch in one call, which the
    collective strategy cannot take ("Attempt to convert a value
    (PerReplica ...) to a Tensor"), and it reduces every scalar log along
    axis 0, which a scalar does not have. Here nested values are reduced leaf
    by leaf, and scalars over the replicas only, as MirroredStrategy does.
    """

    def reduce(self, reduce_op, value, axis):
        parent = super()

        def reduce_leaf(leaf):
            rank = self.experimental_local_results(leaf)[0].shape.rank
            return parent.reduce(reduce_op, leaf, None if rank == 0 else axis)

        return tf.nest.map_structure(reduce_leaf, value)


def _check_tf_config() -> None:
    text = os.environ.get("TF_CONFIG")
    if not text:
        raise ValueError("multi_worker reads the cluster from the TF_CONFIG environment variable, which is not set")
    try:
        tf_config = json.loads(text)
        task, cluster = tf_config["task"], tf_config["cluster"]
        task["type"], int(task["index"]), dict(cluster)
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"TF_CONFIG must be JSON with 'cluster' and 'task': {{'type', 'index'}} "
                         f"({type(error).__name__}: {error}); it is {text!r}") from None


def _tpu() -> tf.distribute.Strategy:
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"no TPU found ({reason}); set TPU_NAME or run on a TPU VM") from None
    return tf.distribute.TPUStrategy(resolver)
