"""Settings are plain data: reading them loads neither TensorFlow nor Keras."""

import subprocess
import sys

import pickle

import pytest

from hsd_tf.config import Config, ConfigError
from testing import ROOT


def test_importing_the_settings_loads_no_tensorflow_or_keras():
    probe = ("import sys, hsd_tf.config; "
             "print(sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'keras', 'tf_keras'}))")
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("bad, flag", [
    (dict(export=["onnx"]), "export"),
    (dict(num_ta=2, ta_ratios=[0.7, 0.0]), "ta_ratios"),
    (dict(macs_budget=0.3, ta_ratios=[0.0], num_ta=1), "ta_ratios"),
    (dict(round_to=0), "round_to"),
    (dict(method="magnitude"), "method"),
    (dict(saliency="per_mac"), "saliency"),  # needs a MAC budget
    (dict(method="l1", num_ta=1, ta_ratios=[0.0]), "ta_ratios"),
    (dict(mode="compare", compare_methods=["hsd", "taylor"]), "compare_methods"),
    (dict(mode="compare", compare_methods=["l1", "l1"]), "compare_methods"),
    (dict(mode="compare", compare_methods=["scratch_on_hsd_mask", "hsd"]), "compare_methods"),  # hsd must run first
    (dict(distill_from="below"), "distill_from"),
    (dict(method="l1", distill_from="top"), "distill_from"),  # the cascade's alone
    (dict(method="scratch", finetune_from="teacher"), "finetune_from"),
    (dict(equal="flops"), "equal"),
    (dict(method="hsd", equal="compute"), "equal"),  # the baselines are given the cascade's compute
])
def test_settings_refuse_what_they_can_judge_alone(bad, flag):
    with pytest.raises(ConfigError, match="Received") as error:
        Config(**bad).validate()
    assert error.value.flag == flag


def test_a_run_with_unpruned_layers_can_be_run_again(tmp_path):
    """Layer names stay names when a run's stored identity is compared (they were once turned into floats)."""
    first = Config(model_dir=str(tmp_path), unpruned_layers=["conv_b", "odd"], ta_ratios=[0.3, 0.0])
    first.save()
    Config(model_dir=str(tmp_path), unpruned_layers=["conv_b", "odd"], ta_ratios=[0.3, 0]).check_model_dir()
    with pytest.raises(ConfigError, match="holds a run with unpruned_layers=\\['conv_b', 'odd'\\]"):
        Config(model_dir=str(tmp_path), unpruned_layers=["conv_b"], ta_ratios=[0.3, 0.0]).check_model_dir()


def test_the_settings_offer_the_preprocessing_and_augmentation_choices_of_the_data():
    from hsd_tf import config, data  # pylint: disable=import-outside-toplevel

    assert (config.PREPROCESSINGS, config.AUGMENTATIONS) == (data.PREPROCESSINGS, data.AUGMENTATIONS)


def test_the_settings_offer_the_saliencies_and_distillation_sources_of_the_cascade():
    from hsd_tf import cascade, config  # pylint: disable=import-outside-toplevel

    assert config.SALIENCIES == cascade.SALIENCIES
    assert config.DISTILL_SOURCES == cascade.DISTILL_SOURCES


def test_a_baseline_method_has_the_students_budget_alone():
    """l1 and scratch train one model: the student's prune ratio or MAC budget, whatever --num_ta says."""
    assert Config(method="l1", num_ta=2, prune_ratio=0.6).prune_ratios() == [0.6]
    assert Config(method="scratch", num_ta=2, macs_budget=0.25).macs_fractions() == [0.25]
    assert Config(method="hsd", num_ta=2, macs_budget=0.25).macs_fractions() == [0.25, 0.625, 1.0]
    assert Config(joint_epochs=3, frozen_epochs=2, finetune_epochs=4).epochs_after_teacher() == 9


def test_a_config_error_crosses_a_process_boundary_with_its_message():
    """A worker of a process pool sends its exception back pickled; the study's driver must get the one line."""
    error = pickle.loads(pickle.dumps(ConfigError("masks_from", "runs/x", "its results.json has no student")))
    assert isinstance(error, ConfigError) and error.flag == "masks_from"
    assert str(error) == "--masks_from: its results.json has no student. Received: masks_from='runs/x'"
