"""The pair loss against hand-computed values."""

import math

import numpy as np
import pytest
import tensorflow as tf

from hsd_tf import losses


def test_distillation_loss_known_values():
    student = tf.constant([[0.0, 0.0]])
    # softmax([ln 3, 0]) = [0.75, 0.25] against uniform.
    expected_kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    teacher = tf.constant([[math.log(3.0), 0.0]])
    assert losses.distillation_loss(student, teacher, 1.0).numpy()[0] == pytest.approx(expected_kl, rel=1e-5)
    # With T=2 the teacher logits are doubled to give the same soft targets; T^2 scales.
    teacher_t2 = tf.constant([[2 * math.log(3.0), 0.0]])
    assert losses.distillation_loss(student, teacher_t2, 2.0).numpy()[0] == pytest.approx(4 * expected_kl, rel=1e-5)
    assert losses.distillation_loss(teacher, teacher, 15.0).numpy()[0] == pytest.approx(0.0, abs=1e-6)


def test_pair_loss_combines_the_terms():
    labels = tf.constant([0, 1])
    logits = tf.constant([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    teacher = tf.constant([[1.0, 1.0, 0.0], [0.0, 3.0, 0.0]])
    feature = [tf.ones((2, 2, 2, 3))]
    teacher_feature = [tf.zeros((2, 2, 2, 3))]
    terms = losses.pair_loss(labels, logits, teacher, feature, teacher_feature,
                             kd_weight=0.4, temperature=15.0, hint_weight=0.001)
    log_p = logits.numpy() - np.log(np.exp(logits.numpy()).sum(-1, keepdims=True))
    ce = -np.mean([log_p[0, 0], log_p[1, 1]])
    kd = np.mean(losses.distillation_loss(logits, teacher, 15.0).numpy())
    assert terms["ce"].numpy() == pytest.approx(ce, rel=1e-5)
    assert terms["kd"].numpy() == pytest.approx(kd, rel=1e-5)
    assert terms["hint"].numpy() == pytest.approx(1.0)
    assert terms["loss"].numpy() == pytest.approx(0.6 * ce + 0.4 * kd + 0.001 * 1.0, rel=1e-5)


def test_hints_off():
    labels = tf.constant([0])
    logits = tf.constant([[1.0, 0.0]])
    terms = losses.pair_loss(labels, logits, logits, [tf.ones((1, 3))], [tf.zeros((1, 3))], hint_weight=0.0)
    assert terms["hint"].numpy() == 0.0
    assert terms["loss"].numpy() == pytest.approx(0.6 * terms["ce"].numpy(), rel=1e-6)


def test_teacher_outputs_receive_no_gradient():
    teacher = tf.Variable([[1.0, 2.0]])
    feature = tf.Variable([[1.0]])
    with tf.GradientTape(persistent=True) as tape:
        loss = losses.pair_loss(tf.constant([0]), tf.constant([[0.0, 0.0]]), teacher,
                                [tf.constant([[0.0]])], [feature], hint_weight=1.0)["loss"]
    assert tape.gradient(loss, teacher) is None
    assert tape.gradient(loss, feature) is None
