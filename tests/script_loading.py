"""Load a script of the checkout (train/, eval/, data/, bench/, demo/) as a module: scripts are not a package."""

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_script(relative: str | Path) -> ModuleType:
    """The script at `relative` (to the repository root, or absolute) imported under a name of its own."""
    path = ROOT / relative
    name = "script_" + "_".join(path.relative_to(ROOT).with_suffix("").parts)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses of the script look their module up while it executes
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)  # no half-run script left behind for the next load
        raise
    return module
