"""The user's own Python code: a module by name, or a `.py` file, imported for `--custom_objects` and
`--dataset=py:`."""

import importlib
import importlib.util
import os
import sys


def import_module(name: str):
    """The module `name` (on the path, the current folder included) or the `.py` file at that path, imported.

    Raises:
        Whatever importing it raises (the caller says so in one line).
    """
    if name.endswith(".py"):
        spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(name))[0], name)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    if os.getcwd() not in sys.path:  # `python main.py` puts the script's folder on the path, not the cwd
        sys.path.insert(0, os.getcwd())
    return importlib.import_module(name)
