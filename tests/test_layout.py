"""Architecture rules from DESIGN.md that code review alone would miss."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN_FROM_LIBRARY = {"vr_thinker", "vlm_rm", "train", "eval", "bench"}


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
            bad = _imported_top_levels(path) & {"train", "eval", "bench"}
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
