"""Keeps native (C++) log lines off stderr, where they would bury the tool's own one-line messages."""

import contextlib
import os
import sys


@contextlib.contextmanager
def native_stderr_silenced():
    """Sends what native code writes to stderr to /dev/null meanwhile.

    Some TensorFlow builds log through absl before TF_CPP_MIN_LOG_LEVEL is read
    ("oneDNN custom operations are on", twice, on the 2-core CI machine), and
    the TFLite converter prints its settings ("fully_quantize: 0, ...") from
    C++, so the variable alone does not keep stderr clean. Python-level errors
    raised inside are reported after stderr is restored.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
