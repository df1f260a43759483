"""UCR/UEA time-series data sets, read offline from the sktime wheel.

sktime's wheel ships a dozen small archive data sets (GunPoint, ItalyPowerDemand, BasicMotions, Tecator, ...)
as `.ts` files under `sktime/datasets/data/<Name>/`. A machine that can reach only a package registry can
therefore get real time series with `pip download`, without the archive's own web site. This module reads them
straight out of the wheel zip, so sktime and its dependencies are never installed or imported.

    x_train, y_train, x_test, y_test = load("GunPoint")   # x: (examples, length, dimensions) float32

Classification sets give int32 class indices, in the order the file's `@classLabel` header lists the labels
(`classes(name)` gives those labels); regression sets (`@targetLabel true`, e.g. Tecator) give float32 targets.
"""

import math
import os
import subprocess
import sys
import zipfile
from typing import Dict, List, Optional, Tuple

import numpy as np

# Pinned so that a cached wheel and a fresh download hold the same data.
SKTIME_VERSION = "1.2.0"
DEFAULT_CACHE_DIR = os.path.join("~", ".cache", "hsd_tf", "sktime")
_DATA_DIR = "sktime/datasets/data"


def wheel_path(cache_dir: Optional[str] = None) -> str:
    """The sktime wheel in `cache_dir`, downloaded there with pip when it is not there yet.

    Args:
        cache_dir: folder holding the wheel; `~/.cache/hsd_tf/sktime` by default.

    Returns:
        The path of the wheel file.

    Raises:
        RuntimeError: pip could not download the wheel.
    """
    cache_dir = os.path.expanduser(cache_dir or DEFAULT_CACHE_DIR)
    wheel = _cached_wheel(cache_dir)
    if wheel:
        return wheel
    os.makedirs(cache_dir, exist_ok=True)
    # --no-deps: only the data files are wanted, not sktime's scientific stack.
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
               f"sktime=={SKTIME_VERSION}", "-d", cache_dir]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    wheel = _cached_wheel(cache_dir)
    if result.returncode != 0 or not wheel:
        lines = (result.stderr or result.stdout).strip().splitlines()
        reason = lines[-1] if lines else f"exit status {result.returncode}"
        raise RuntimeError(f"could not download sktime=={SKTIME_VERSION} into {cache_dir}: {reason}")
    return wheel


def _cached_wheel(cache_dir: str) -> Optional[str]:
    prefix = f"sktime-{SKTIME_VERSION}-"
    if not os.path.isdir(cache_dir):
        return None
    names = sorted(n for n in os.listdir(cache_dir) if n.startswith(prefix) and n.endswith(".whl"))
    return os.path.join(cache_dir, names[0]) if names else None


def load(name: str, cache_dir: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The train and test splits of one equal-length data set.

    Args:
        name: the data set's folder name in the wheel, e.g. "GunPoint" (case-sensitive).
        cache_dir: where the sktime wheel is cached; see `wheel_path`.

    Returns:
        `(x_train, y_train, x_test, y_test)`. Each x is float32 of shape (examples, length, dimensions), with
        NaN where the file has '?'. Each y is int32 class indices for classification, float32 for regression.

    Raises:
        ValueError: the wheel has no such data set, or its files are malformed, unequal-length or time-stamped.
    """
    train, test = (_read_split(name, split, cache_dir) for split in ("TRAIN", "TEST"))
    if train["classes"] != test["classes"]:
        raise ValueError(f"{name}: the TRAIN and TEST files list different class labels")
    if train["x"].shape[1:] != test["x"].shape[1:]:
        raise ValueError(f"{name}: TRAIN series are {train['x'].shape[1:]}, TEST series {test['x'].shape[1:]}")
    return train["x"], train["y"], test["x"], test["y"]


def classes(name: str, cache_dir: Optional[str] = None) -> Optional[List[str]]:
    """The class labels of a classification data set, in the order of its indices; None for regression.

    Args:
        name: the data set's folder name in the wheel, e.g. "GunPoint".
        cache_dir: where the sktime wheel is cached; see `wheel_path`.

    Returns:
        The labels as the `@classLabel` header lists them, or None when the set is a regression set.
    """
    header, _ = _split_header(_read_lines(name, "TRAIN", cache_dir), f"{name}_TRAIN.ts")
    return _class_labels(header, f"{name}_TRAIN.ts")


def _read_split(name: str, split: str, cache_dir: Optional[str]) -> Dict:
    where = f"{name}_{split}.ts"
    header, data = _split_header(_read_lines(name, split, cache_dir), where)
    if header.get("timestamps", "false").lower() == "true":
        raise ValueError(f"{where}: time-stamped series are not supported")
    if header.get("equallength", "true").lower() == "false":
        raise ValueError(f"{where}: unequal-length series are not supported")
    labels = _class_labels(header, where)
    if labels is None and header.get("targetlabel", "false").lower() != "true":
        raise ValueError(f"{where}: neither @classLabel nor @targetLabel is true, so there is nothing to predict")

    series, targets = [], []
    for number, line in data:
        *dims, target = line.split(":")
        if not dims:
            raise ValueError(f"{where}, line {number}: no ':' between the series and its label")
        series.append([[_value(v, where, number) for v in dim.split(",")] for dim in dims])
        targets.append((number, target.strip()))

    shapes = {(len(s), len(d)) for s in series for d in s}
    if len(shapes) != 1:
        # Headers may leave @equalLength out (ArrowHead's do), so the data themselves must be checked.
        raise ValueError(f"{where}: series differ in length or number of dimensions "
                         f"({len(shapes)} different (dimensions, length) pairs)")
    (dimensions, length), = shapes
    _check_header_number(header, "dimensions", dimensions, where)
    _check_header_number(header, "serieslength", length, where)

    # Files store each dimension as one row; Conv1D wants time first, channels last.
    x = np.ascontiguousarray(np.asarray(series, np.float32).transpose(0, 2, 1))
    if labels is None:
        y = np.asarray([_value(t, where, number) for number, t in targets], np.float32)
    else:
        index = {label: i for i, label in enumerate(labels)}
        unknown = sorted({t for _, t in targets} - set(index))
        if unknown:
            raise ValueError(f"{where}: labels {unknown} are not in the @classLabel header {labels}")
        y = np.asarray([index[t] for _, t in targets], np.int32)
    return {"x": x, "y": y, "classes": labels}


def _read_lines(name: str, split: str, cache_dir: Optional[str]) -> List[str]:
    member = f"{_DATA_DIR}/{name}/{name}_{split}.ts"
    with zipfile.ZipFile(wheel_path(cache_dir)) as wheel:
        try:
            raw = wheel.read(member)
        except KeyError:
            available = sorted({n.split("/")[3] for n in wheel.namelist()
                                if n.startswith(_DATA_DIR + "/") and n.endswith(f"_{split}.ts")})
            raise ValueError(f"the sktime wheel has no data set {name!r}; it has {', '.join(available)}") from None
    # Some files' comments hold non-ASCII characters (ACSF1, PLAID), so ASCII would not do.
    return raw.decode("utf-8").splitlines()


def _split_header(lines: List[str], where: str) -> Tuple[Dict[str, str], List[Tuple[int, str]]]:
    """Header keys, lower-cased, to the rest of their line; and the numbered data lines after @data."""
    header, data, in_data = {}, [], False
    for number, line in enumerate(lines, 1):
        line = line.strip()
        # '#' and '%' both start comments in the archive's files (UnitTest uses '%').
        if not line or line[0] in "#%":
            continue
        if in_data:
            data.append((number, line))
        elif line[0] == "@":
            key, _, value = line[1:].partition(" ")
            key = key.lower()
            if key == "data":
                in_data = True
            else:
                # The first wins: UnitTest names two problems.
                header.setdefault(key, value.strip())
        else:
            raise ValueError(f"{where}, line {number}: data before the @data line")
    if not data:
        raise ValueError(f"{where}: no @data section, or an empty one")
    return header, data


def _class_labels(header: Dict[str, str], where: str) -> Optional[List[str]]:
    flag, *labels = header.get("classlabel", "false").split()
    if flag.lower() != "true":
        return None
    if not labels:
        raise ValueError(f"{where}: @classLabel true lists no labels")
    return labels


def _check_header_number(header: Dict[str, str], key: str, actual: int, where: str) -> None:
    if key in header and int(header[key]) != actual:
        raise ValueError(f"{where}: @{key} says {header[key]}, the data have {actual}")


def _value(text: str, where: str, number: int) -> float:
    text = text.strip()
    if text == "?":
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{where}, line {number}: {text!r} is not a number") from None


def splits(name: str, val_fraction: float = 0.2, seed: int = 0, cache_dir: Optional[str] = None):
    """(train, validation, test) `tf.data.Dataset`s of (series, target) examples, unbatched: the archive's test
    split, and its training split less `val_fraction` of it (a seeded, stratified hold-out for classification sets),
    which is the validation split. What a `datasets()` of `--dataset=py:` returns."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    x_train, y_train, x_test, y_test = load(name, cache_dir)
    rng = np.random.RandomState(seed)
    if classes(name, cache_dir) is None:
        order = rng.permutation(len(y_train))
        held = order[:int(round(val_fraction * len(order)))]
    else:  # the same fraction of every class, so a small set keeps each class in both parts
        held = np.concatenate([rng.permutation(np.flatnonzero(y_train == label))[
            :int(round(val_fraction * np.sum(y_train == label)))] for label in np.unique(y_train)])
    kept = np.setdiff1d(np.arange(len(y_train)), held)
    targets = (lambda y: y) if y_train.dtype == np.int32 else (lambda y: y[:, None])  # a regression target: (1,)

    def dataset(x, y):
        return tf.data.Dataset.from_tensor_slices((x, targets(y)))

    return dataset(x_train[kept], y_train[kept]), dataset(x_train[held], y_train[held]), dataset(x_test, y_test)
