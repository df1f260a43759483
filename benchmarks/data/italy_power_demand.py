"""UCR/UEA's ItalyPowerDemand, read offline from sktime's wheel (`benchmarks/ucr.py`), for `--dataset=py:`.

    python main.py --dataset=py:benchmarks/data/italy_power_demand.py --arch=mine.keras --teacher=mine.keras ...

The archive's test split; its training split less a seeded fifth, which is the validation split.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ucr  # noqa: E402  pylint: disable=wrong-import-position


def datasets():
    return ucr.splits("ItalyPowerDemand")
