"""The per-pair loss of the cascade (docs/method.md section 4).

For a view with logits z and its teacher view with logits t (detached):

    L = (1 - kd_weight) * CE(y, z)
        + kd_weight * T^2 * KL(softmax(t / T) || softmax(z / T))
        + hint_weight * sum over hint layers of MSE(F, F_teacher)

For a model of another task, CE is the model's own loss and the KL term the
distillation of every output (`hsd_tf.task`).

Every term is a mean over the examples of the global batch, so under
tf.distribute the per-replica value is divided by the replica count exactly
as Keras' own losses are.
"""

from typing import Dict, Sequence

import keras
import tensorflow as tf


def distillation_loss(logits, teacher_logits, temperature: float):
    """Per-example T^2 * KL(softmax(teacher / T) || softmax(student / T)).

    Args:
        logits: Student logits, (batch, classes).
        teacher_logits: Teacher logits, (batch, classes); no gradient flows.
        temperature: Softmax temperature T.

    Returns:
        (batch,) float32 losses.
    """
    teacher_logits = tf.stop_gradient(tf.cast(teacher_logits, tf.float32))
    logits = tf.cast(logits, tf.float32)
    teacher_log_probs = tf.nn.log_softmax(teacher_logits / temperature)
    log_probs = tf.nn.log_softmax(logits / temperature)
    kl = tf.reduce_sum(tf.exp(teacher_log_probs) * (teacher_log_probs - log_probs), axis=-1)
    return temperature**2 * kl


def hint_loss(features: Sequence, teacher_features: Sequence):
    """Per-example sum over hint layers of the mean squared feature difference."""
    total = 0.0
    for feature, teacher_feature in zip(features, teacher_features):
        diff = tf.cast(feature, tf.float32) - tf.stop_gradient(tf.cast(teacher_feature, tf.float32))
        total += tf.reduce_mean(tf.reshape(tf.square(diff), [tf.shape(diff)[0], -1]), axis=-1)
    return total


def replica_mean(per_example, global_batch_size):
    """Mean over the global batch of per-example values computed on one replica."""
    return tf.reduce_sum(per_example) / tf.cast(global_batch_size, tf.float32)


def pair_loss(
    labels,
    logits,
    teacher_logits,
    features: Sequence = (),
    teacher_features: Sequence = (),
    kd_weight: float = 0.4,
    temperature: float = 15.0,
    hint_weight: float = 0.0,
    global_batch_size=None,
    task=None,
    sample_weight=None,
) -> Dict[str, tf.Tensor]:
    """The loss of one view against its (detached) teacher.

    Args:
        labels: Integer class labels, (batch,); with `task`, the targets in the model's structure.
        logits: The view's logits; with `task`, one tensor per output (or the one tensor).
        teacher_logits: The teacher's logits, the same way.
        features: The view's hint features.
        teacher_features: The teacher's hint features, same shapes.
        kd_weight: lambda_KD; the weight of the model's own loss is 1 - lambda_KD.
        temperature: tau.
        hint_weight: lambda_H; 0 switches hints off.
        global_batch_size: Examples over all replicas; defaults to this
            replica's batch times the replica count.
        task: The model's `hsd_tf.task.Task` (its own loss and the distillation of every output); None: a
            classifier's cross-entropy and KD, as above.
        sample_weight: Per-example weights of the model's own loss (with `task`).

    Returns:
        {"loss", "ce", "kd", "hint"}: scalars, each a mean over the global batch
        divided out for this replica (sum over replicas = global mean). "ce" is
        the model's own loss (cross-entropy for a classifier).
    """
    first = keras.tree.flatten(logits)[0]
    if global_batch_size is None:
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        global_batch_size = tf.shape(first)[0] * replicas
    if task is None:
        ce = keras.losses.sparse_categorical_crossentropy(labels, tf.cast(logits, tf.float32), from_logits=True)
        terms = {
            "ce": replica_mean(ce, global_batch_size),
            "kd": replica_mean(distillation_loss(logits, teacher_logits, temperature), global_batch_size),
        }
    else:
        outputs, teacher_outputs = keras.tree.flatten(logits), keras.tree.flatten(teacher_logits)
        terms = {"ce": task.loss(labels, outputs, sample_weight),
                 "kd": task.distillation(outputs, teacher_outputs, temperature)}
    total = (1.0 - kd_weight) * terms["ce"] + kd_weight * terms["kd"]
    if hint_weight and features:
        terms["hint"] = replica_mean(hint_loss(features, teacher_features), global_batch_size)
        total += hint_weight * terms["hint"]
    else:
        terms["hint"] = tf.constant(0.0)
    terms["loss"] = total
    return terms
