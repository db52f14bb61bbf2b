"""Architecture rules from DESIGN.md that code review alone would miss."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN_FROM_LIBRARY = {"vr_thinker", "vlm_rm", "train", "eval", "bench", "demo"}


def _imported_top_levels(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_library_never_imports_applications():
    offenders = {}
    for path in (ROOT / "mmreward").rglob("*.py"):
        bad = _imported_top_levels(path) & FORBIDDEN_FROM_LIBRARY
        if bad:
            offenders[str(path.relative_to(ROOT))] = sorted(bad)
    assert offenders == {}


def test_apps_never_import_scripts():
    offenders = {}
    for package in ("vr_thinker", "vlm_rm"):
        for path in (ROOT / package).rglob("*.py"):
            bad = _imported_top_levels(path) & {"train", "eval", "bench", "demo"}
            if bad:
                offenders[str(path.relative_to(ROOT))] = sorted(bad)
    assert offenders == {}


def test_boundary_check_detects_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nfrom vr_thinker.env import VideoPairEnv\n")
    assert "vr_thinker" in _imported_top_levels(bad)


def test_no_machine_specific_paths():
    # Built from pieces so this file does not match itself.
    pattern = re.compile("(" + "|".join(["/wo" + "rk/", "/ro" + "ot/", "/ho" + "me/[a-z]+/"]) + ")")
    offenders = []
    for path in ROOT.rglob("*"):
        if any(part in {".venv", ".git", "runs", "__pycache__", ".notes"} for part in path.parts):
            continue
        if path.suffix in {".py", ".yaml", ".yml", ".md", ".toml", ".sh", ".json", ".jsonl", ".cfg"}:
            if pattern.search(path.read_text(errors="ignore")):
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


SCRIPT_PATH = re.compile(r"(train|eval|data|bench|demo)/[\w./-]*\.(py|sh)")


def _script_paths_in_code(path: Path) -> list[str]:
    """String constants of a module that are a script's path (what a subprocess call or a loader is given);
    prose that names a script (docstrings, messages) is allowed."""
    tree = ast.parse(path.read_text(), filename=str(path))
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    return [node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
            and SCRIPT_PATH.fullmatch(node.value.strip())]


def test_packages_never_run_scripts():
    """The packages work in a non-editable install: none runs or loads a script of the repository by its path
    (the demo does, from demo/, which is not a package)."""
    offenders = {}
    for package in ("mmreward", "vr_thinker", "vlm_rm"):
        for path in (ROOT / package).rglob("*.py"):
            found = _script_paths_in_code(path)
            if found:
                offenders[str(path.relative_to(ROOT))] = found
    assert offenders == {}


def test_script_path_check_detects_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text('"""Run `python train/reward.py`."""\nimport subprocess\n'
                   'subprocess.run(["python", "train/reward.py"])\nraise SystemExit("see train/reward.py")\n')
    assert _script_paths_in_code(bad) == ["train/reward.py"]
