"""Stage output directories: `manifest.json`, completeness marker and checksums.

Every stage script writes its outputs into one directory. While it runs the directory holds an
`INCOMPLETE` marker; `finalize_run_dir` removes it and writes `manifest.json` (stage, inputs, git
commit, metrics, sha256 of every weight file). The next stage calls `read_manifest`, which refuses a
directory that is incomplete or whose weight files no longer match their checksums.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from pathlib import Path
from typing import Any

from mmreward.errors import MmrewardError

MANIFEST_NAME = "manifest.json"
INCOMPLETE_MARKER = "INCOMPLETE"
# Files whose integrity matters when a later stage loads the directory.
CHECKSUM_SUFFIXES = (".safetensors", ".json", ".yaml", ".zip")


class RunDirError(MmrewardError, RuntimeError):
    """A stage output directory that cannot be used (incomplete, edited or missing its manifest)."""


def git_commit(repo_dir: Path | None = None) -> str | None:
    """The current git commit of the code, or None outside a git checkout."""
    cwd = repo_dir or Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def check_run_dir(out_dir: str | Path, stage: str, flag: str = "--output_dir") -> None:
    """Refuse an output folder that holds something other than a run of `stage` (which a rerun resumes):
    another stage's run, or files that are no stage's output. `flag` names the option in the message."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise RunDirError(f"{flag} {out}: is a file, not a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return
    found = None
    if (out / MANIFEST_NAME).is_file():
        try:
            found = json.loads((out / MANIFEST_NAME).read_text()).get("stage")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            found = "unreadable manifest"
    elif (out / INCOMPLETE_MARKER).is_file():
        marker = (out / INCOMPLETE_MARKER).read_text(errors="replace")
        found = marker.split("stage ", 1)[1].strip() if "stage " in marker else stage  # older markers: no stage
    if found is None:  # neither a manifest nor a marker, or a manifest that names no stage (e.g. a data folder)
        raise RunDirError(f"{flag} {out}: the folder holds files that are not a stage's output; choose another one")
    if found != stage:
        raise RunDirError(f"{flag} {out}: the folder holds a {found!r} run, not a {stage!r} one; choose another one")


def start_run_dir(out_dir: str | Path, stage: str | None = None) -> Path:
    """Create `out_dir` (if needed) and mark it incomplete (naming `stage`) until `finalize_run_dir` is called."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    named = f" stage {stage}" if stage else ""
    (out / INCOMPLETE_MARKER).write_text(f"started {time.strftime('%Y-%m-%dT%H:%M:%S')}{named}\n")
    stale = out / MANIFEST_NAME
    if stale.exists():
        stale.unlink()
    return out


def _checksums(out: Path) -> dict[str, str]:
    sums = {}
    for path in sorted(out.rglob("*")):
        rel = path.relative_to(out).as_posix()
        if not path.is_file() or rel == MANIFEST_NAME or rel.startswith("checkpoints/"):
            continue
        if path.suffix in CHECKSUM_SUFFIXES:
            sums[rel] = sha256_file(path)
    return sums


def finalize_run_dir(
    out_dir: str | Path,
    stage: str,
    inputs: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write `manifest.json` (with checksums of the directory's files) and drop the incomplete marker."""
    out = Path(out_dir)
    manifest = {
        "stage": stage,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "git_commit": git_commit(),
        "inputs": inputs or {},
        "metrics": metrics or {},
        "checksums": _checksums(out),
        **(extra or {}),
    }
    (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    marker = out / INCOMPLETE_MARKER
    if marker.exists():
        marker.unlink()
    return manifest


def read_manifest(run_dir: str | Path, expect_stage: str | tuple[str, ...] | None = None,
                  verify: bool = True) -> dict[str, Any]:
    """Load a finished stage's manifest; raise `RunDirError` naming the problem otherwise."""
    run = Path(run_dir)
    if not run.is_dir():
        raise RunDirError(f"{run}: not a directory (expected a stage output directory)")
    if (run / INCOMPLETE_MARKER).exists():
        raise RunDirError(
            f"{run}: the stage that wrote this directory did not finish (found {INCOMPLETE_MARKER}); "
            "rerun or resume it before using its output"
        )
    path = run / MANIFEST_NAME
    if not path.exists():
        raise RunDirError(f"{path}: missing; {run} is not a finished stage output directory")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise RunDirError(f"{path}: not valid JSON ({err})") from err
    if expect_stage is not None:
        allowed = (expect_stage,) if isinstance(expect_stage, str) else expect_stage
        if manifest.get("stage") not in allowed:
            raise RunDirError(f"{path}: stage is {manifest.get('stage')!r}, expected one of {allowed}")
    if verify:
        for rel, expected in manifest.get("checksums", {}).items():
            file = run / rel
            if not file.exists():
                raise RunDirError(f"{file}: listed in the manifest but missing (truncated copy?)")
            if sha256_file(file) != expected:
                raise RunDirError(f"{file}: checksum differs from {path} (file edited or truncated)")
    return manifest
