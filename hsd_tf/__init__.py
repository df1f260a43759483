"""hsd_tf: filter pruning of CNNs with hierarchical self-distillation (Keras 3 / TensorFlow).

The public API, loaded on first use so that `import hsd_tf` stays light:

    prune, PruneResult             hsd_tf.pruning   the whole pipeline on a trained model and your data
    trace, UnsupportedLayerError   hsd_tf.graph     mask groups and program of any Keras model
    Cascade                        hsd_tf.cascade   the student and its assistants as masked views
    slim_view, slim_model,         hsd_tf.slimming  physically smaller Keras models
    l1_pruned
    export_model, verify,          hsd_tf.export    SavedModel and TFLite files, verified with LiteRT
    ExportError
    train_and_evaluate             hsd_tf.training  the command line's run, from a Config
    Config                         hsd_tf.config    every setting of a run
"""

import importlib

__version__ = "0.1.0"

_SOURCES = {
    "prune": "pruning", "PruneResult": "pruning",
    "trace": "graph", "UnsupportedLayerError": "graph",
    "Cascade": "cascade",
    "slim_view": "slimming", "slim_model": "slimming", "l1_pruned": "slimming",
    "export_model": "export", "verify": "export", "ExportError": "export",
    "train_and_evaluate": "training",
    "Config": "config",
}
__all__ = sorted(_SOURCES)


def __getattr__(name):
    if name not in _SOURCES:
        raise AttributeError(f"module 'hsd_tf' has no attribute {name!r}")
    return getattr(importlib.import_module(f"hsd_tf.{_SOURCES[name]}"), name)


def __dir__():
    return sorted(set(globals()) | set(__all__))
