"""benchmarks/ucr.py's .ts parser, on tiny files in a fake sktime wheel, so nothing is downloaded."""

import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import ucr  # noqa: E402  pylint: disable=wrong-import-position

UNIVARIATE_TRAIN = """# A comment, with a ? that is no value
% another comment style
@problemName Toy
@timeStamps false
@missing true
@univariate true
@equalLength true
@seriesLength 4
@classLabel true b a
@data
1,2,3,4:a
5,?,7,8:b

0.5,-1.5,2e1,3:a
"""

UNIVARIATE_TEST = """@problemName Toy
@classLabel true b a
@univariate true
@data
9,9,9,9:b
"""

MULTIVARIATE = """@problemName Multi
@univariate false
@dimensions 2
@equalLength true
@seriesLength 3
@classLabel true Standing Running
@data
1,2,3:4,5,6:Running
7,8,9:10,11,12:Standing
"""

REGRESSION = """@problemname Reg
@timestamps false
@univariate true
@equallength true
@targetlabel true
@data
1,2:0.25
3,4:12.5
"""

UNEQUAL = """@problemName Ragged
@classLabel true 1 2
@data
1,2,3:1
1,2:2
"""


def _wheel(tmp_path, files):
    """A zip named like the pinned sktime wheel, holding `files` ({name: (train text, test text)})."""
    path = tmp_path / f"sktime-{ucr.SKTIME_VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for name, (train, test) in files.items():
            wheel.writestr(f"sktime/datasets/data/{name}/{name}_TRAIN.ts", train)
            wheel.writestr(f"sktime/datasets/data/{name}/{name}_TEST.ts", test)
    return str(tmp_path)


def test_univariate_classification_with_missing_value(tmp_path):
    cache = _wheel(tmp_path, {"Toy": (UNIVARIATE_TRAIN, UNIVARIATE_TEST)})
    x_train, y_train, x_test, y_test = ucr.load("Toy", cache)
    assert x_train.shape == (3, 4, 1) and x_train.dtype == np.float32
    assert x_test.shape == (1, 4, 1)
    np.testing.assert_array_equal(x_train[0, :, 0], [1, 2, 3, 4])
    np.testing.assert_array_equal(x_train[2, :, 0], [0.5, -1.5, 20, 3])
    assert np.isnan(x_train[1, 1, 0]) and np.isnan(x_train).sum() == 1
    # Indices follow the header's order ("b a"), not sorted order.
    assert ucr.classes("Toy", cache) == ["b", "a"]
    assert y_train.dtype == np.int32
    np.testing.assert_array_equal(y_train, [1, 0, 1])
    np.testing.assert_array_equal(y_test, [0])


def test_multivariate_is_time_by_channels(tmp_path):
    cache = _wheel(tmp_path, {"Multi": (MULTIVARIATE, MULTIVARIATE)})
    x_train, y_train, _, _ = ucr.load("Multi", cache)
    assert x_train.shape == (2, 3, 2)
    np.testing.assert_array_equal(x_train[0], [[1, 4], [2, 5], [3, 6]])
    np.testing.assert_array_equal(y_train, [1, 0])


def test_regression_targets_are_float(tmp_path):
    cache = _wheel(tmp_path, {"Reg": (REGRESSION, REGRESSION)})
    x_train, y_train, _, _ = ucr.load("Reg", cache)
    assert x_train.shape == (2, 2, 1)
    assert y_train.dtype == np.float32
    np.testing.assert_array_equal(y_train, [0.25, 12.5])
    assert ucr.classes("Reg", cache) is None


@pytest.mark.parametrize("train, message", [
    (UNEQUAL, "differ in length"),
    (UNEQUAL.replace("@data", "@equalLength false\n@data"), "unequal-length"),
    (UNIVARIATE_TRAIN.replace("@seriesLength 4", "@seriesLength 5"), "@serieslength says 5"),
    (UNIVARIATE_TRAIN.replace("1,2,3,4:a", "1,2,3,4:c"), "not in the @classLabel header"),
    (REGRESSION.replace("@targetlabel true", ""), "nothing to predict"),
])
def test_malformed_files_raise_one_line(tmp_path, train, message):
    cache = _wheel(tmp_path, {"Bad": (train, train)})
    with pytest.raises(ValueError, match=message) as error:
        ucr.load("Bad", cache)
    assert "\n" not in str(error.value)


def test_unknown_name_lists_the_data_sets(tmp_path):
    cache = _wheel(tmp_path, {"Toy": (UNIVARIATE_TRAIN, UNIVARIATE_TEST)})
    with pytest.raises(ValueError, match="no data set 'Nope'; it has Toy"):
        ucr.load("Nope", cache)


def test_cached_wheel_is_not_downloaded_again(tmp_path, monkeypatch):
    cache = _wheel(tmp_path, {"Toy": (UNIVARIATE_TRAIN, UNIVARIATE_TEST)})
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("pip ran although the wheel is cached"))
    assert ucr.wheel_path(cache) == os.path.join(cache, f"sktime-{ucr.SKTIME_VERSION}-py3-none-any.whl")


def test_failed_download_raises_one_line(tmp_path, monkeypatch):
    calls = []

    def fake_run(command, **kwargs):
        calls.append(command)
        return subprocess.CompletedProcess(command, 1, "", "Collecting sktime\nERROR: No matching distribution\n")

    monkeypatch.setattr(subprocess, "run", fake_run)
    with pytest.raises(RuntimeError, match="could not download sktime==.*: ERROR: No matching distribution$"):
        ucr.wheel_path(str(tmp_path / "empty"))
    assert calls[0][:4] == [sys.executable, "-m", "pip", "download"]
    assert f"sktime=={ucr.SKTIME_VERSION}" in calls[0]
