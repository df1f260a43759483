"""hsd_tf: filter pruning of CNNs with hierarchical self-distillation (Keras 3 / TensorFlow)."""

from hsd_tf.pruning import PruneResult, prune

__version__ = "0.1.0"
