"""A run's folder kept safe: atomic checkpoints, per-epoch backups, readable errors, one run at a time, Ctrl-C."""

import contextlib
import fcntl
import json
import os
import shutil
import signal
import threading

import keras

LOCK_FILE = ".lock"


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss, a corrupt checkpoint); the message says why."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C: the message says where the run stopped and that re-running the same command resumes it."""


_interrupted = threading.Event()


@contextlib.contextmanager
def interrupts_noted():
    """Ctrl-C raises KeyboardInterrupt, as Python's own handler does, and is noted as well.

    Python drops an exception raised inside a finalizer (it prints "Exception
    ignored in ..."), so a Ctrl-C landing in one would be lost and the run would
    go on to the end; `StopOnInterrupt` raises it again at the next step. Only
    the main thread can set a signal handler; elsewhere Python's stays, and so
    does an ignored SIGINT (a background job of a shell script).
    """
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is signal.SIG_IGN):
        yield
        return

    def note_and_raise(signum, frame):
        _interrupted.set()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, note_and_raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _interrupted.clear()


class StopOnInterrupt(keras.callbacks.Callback):
    """Raises KeyboardInterrupt at the next step after a Ctrl-C that Python dropped (`interrupts_noted`)."""

    def _check(self, *args, **kwargs):
        if _interrupted.is_set():
            raise KeyboardInterrupt

    on_train_batch_end = on_test_batch_end = on_epoch_end = _check


@contextlib.contextmanager
def model_dir_lock(model_dir: str, refuse):
    """Holds `<model_dir>/.lock` while a run writes the folder, so that a second process cannot.

    The lock is the kernel's (`flock`): it goes when its holder ends, however
    it ends (a SIGKILL included), so a dead run never blocks the next one. The
    file stays, holding the last holder's process id.

    Args:
        model_dir: The run's folder (made if needed).
        refuse: Called with the holder's process id (a string, maybe empty)
            when another process holds the lock; it raises the caller's error.
    """
    os.makedirs(model_dir, exist_ok=True)
    with open(os.path.join(model_dir, LOCK_FILE), "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            refuse(f.read().strip())
            raise
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class EpochBackup(keras.callbacks.Callback):
    """Saves the whole training state at every epoch end, atomically, named by epoch.

    Keras' BackupAndRestore writes the weights and the epoch number into two
    files, one after the other: a SIGKILL between the two resumes the next
    epoch's weights at the previous epoch (seen in tests/resume_test.py). Here
    one file holds both: `epoch-<N>.weights.h5`, written to a temporary name
    and renamed, so it either exists complete or not at all.

    Args:
        directory: The phase's backup folder.
    """

    def __init__(self, directory: str):
        super().__init__()
        self.directory = directory

    @staticmethod
    def latest(directory: str):
        """(epochs done, path) of the newest complete backup, or (0, None)."""
        if not os.path.isdir(directory):
            return 0, None
        epochs = [int(name[len("epoch-"):-len(".weights.h5")]) for name in os.listdir(directory)
                  if name.startswith("epoch-") and name.endswith(".weights.h5") and ".tmp" not in name]
        if not epochs:
            return 0, None
        return max(epochs), os.path.join(directory, f"epoch-{max(epochs)}.weights.h5")

    def on_epoch_end(self, epoch, logs=None):
        save_weights(self.model, os.path.join(self.directory, f"epoch-{epoch + 1}.weights.h5"))
        for name in os.listdir(self.directory):
            if name.startswith("epoch-") and name != f"epoch-{epoch + 1}.weights.h5":
                os.remove(os.path.join(self.directory, name))


def discard_backup(out_dir, phase) -> None:
    """Removes a phase's backup once its end-of-phase checkpoint is safely written."""
    shutil.rmtree(os.path.join(out_dir, phase, "backup"), ignore_errors=True)


def load_weights(model, path) -> None:
    read_checkpoint(lambda: model.load_weights(path), path, "redo that phase")


def read_checkpoint(read, path, remedy):
    """Returns `read()`; an unreadable file becomes a TrainingError and is left in place."""
    try:
        return read()
    except (OSError, ValueError) as error:
        raise TrainingError(f"cannot read {path} ({error}); it was left untouched. "
                            f"Move it away to {remedy}.") from None


def save_weights(model: keras.Model, path: str) -> None:
    """Writes weights atomically, so a killed run never leaves half a checkpoint.

    Raises:
        TrainingError: The write failed (a full disk, a lost mount): the half-written
            file is removed, and the checkpoints written before stay as they were.
    """
    tmp = path.replace(".weights.h5", ".tmp.weights.h5")
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        model.save_weights(tmp)
        os.replace(tmp, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise TrainingError(
            f"cannot write the checkpoint {path} ({error.strerror or error}); the checkpoints written before it "
            "are untouched. Free space (or fix the folder) and re-run the same command: it resumes from the last "
            "one.") from None


def write_json(path: str, value) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=2)
    os.replace(tmp, path)
