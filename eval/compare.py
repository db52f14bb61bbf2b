"""Put several evaluation runs side by side: one markdown table and one HTML report with a plot.

    python eval/compare.py runs/eval/reward_video runs/eval/reward_token_video --names BaseReward VideoReward \\
        --out runs/eval/compare

Each run directory is an output of eval/preference.py (checked through its manifest). Columns:
accuracy without / with ties per dimension (in %, with the bootstrap interval), pairs, failures.
Runs on different data are flagged: their numbers are not comparable.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from mmreward.cli import ArgParser
from mmreward.cli import run as run_script
from mmreward.errors import UsageError

EVAL_STAGE = "eval_preference"
STAGE = "eval_compare"


def load_run(run_dir: Path) -> dict[str, Any]:
    """The metrics of one finished evaluation directory (refuses unfinished or edited ones)."""
    from mmreward.evaluation.report import METRICS_NAME
    from mmreward.manifest import read_manifest

    manifest = read_manifest(run_dir, expect_stage=EVAL_STAGE)
    metrics = json.loads((run_dir / METRICS_NAME).read_text())
    return {"dir": run_dir, "manifest": manifest, "metrics": metrics}


def comparison_rows(runs: list[dict[str, Any]], names: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """One row per run; columns in a fixed order (dimensions: "overall" first, then first seen)."""
    from mmreward.evaluation.report import format_ci

    dims: dict[str, None] = {}
    for run in runs:
        dims.update(dict.fromkeys(run["metrics"]["dimensions"]))
    rows = []
    for name, run in zip(names, runs):
        m = run["metrics"]
        row: dict[str, Any] = {"run": name, "data": m.get("info", {}).get("data", "?"),
                               "pairs": m["counts"]["pairs"], "failed": m["counts"]["errors"]}
        for dim in dims:
            entry = m["dimensions"].get(dim)
            row[f"{dim} w/o ties"] = format_ci(entry["accuracy"]) if entry else "-"
            row[f"{dim} w/ ties"] = format_ci(entry["accuracy_with_ties"]) if entry else "-"
        if "acc_plus" in m:
            row["Acc+"] = format_ci(m["acc_plus"])
        if "position_flip_rate" in m:
            row["flip rate"] = f"{100 * m['position_flip_rate']:.2f}"
        rows.append(row)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    return [{c: row.get(c, "-") for c in columns} for row in rows], columns


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(str(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def plot_overall(runs: list[dict[str, Any]], names: list[str], path: Path) -> Path:
    """Overall accuracy (without / with ties) per run with interval error bars."""
    import numpy as np

    from mmreward.html_report import plt

    fig, ax = plt.subplots(figsize=(max(4.0, 1.4 * len(runs) + 2), 3.5), dpi=100)
    x = np.arange(len(runs))
    for offset, key, label in ((-0.2, "accuracy", "w/o ties"), (0.2, "accuracy_with_ties", "w/ ties")):
        entries = [run["metrics"]["dimensions"].get("overall", {}).get(key) for run in runs]
        est = np.array([100 * e["estimate"] if e else np.nan for e in entries])
        err = [[100 * (e["estimate"] - e["low"]) if e else 0 for e in entries],
               [100 * (e["high"] - e["estimate"]) if e else 0 for e in entries]]
        ax.bar(x + offset, est, width=0.4, yerr=err, capsize=3, label=label)
    ax.set_xticks(x, names, rotation=20, ha="right")
    ax.set_ylim(0, 100)
    ax.set_ylabel("overall accuracy (%)")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgParser(__doc__)
    parser.add_argument("runs", nargs="+", type=Path, help="eval/preference.py output directories")
    parser.add_argument("--out", type=Path, required=True, help="folder for compare.md and report.html")
    parser.add_argument("--names", nargs="+", default=None, help="a name per run (default: folder names)")
    parser.add_argument("--title", default="Preference evaluation: comparison")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    names = args.names or [run.name for run in args.runs]
    if len(names) != len(args.runs):
        raise UsageError(f"--names gives {len(names)} names for {len(args.runs)} runs")
    from mmreward.manifest import check_run_dir, finalize_run_dir, start_run_dir
    from mmreward.html_report import Report

    check_run_dir(args.out, STAGE, "--out")
    runs = [load_run(run) for run in args.runs]
    rows, columns = comparison_rows(runs, names)
    datasets = sorted({str(row["data"]) for row in rows})
    note = ("" if len(datasets) == 1 else
            f"Warning: the runs were evaluated on different data ({datasets}); their numbers are not comparable.\n")

    out = start_run_dir(args.out, STAGE)
    text = f"# {args.title}\n\nAccuracy in % [bootstrap interval].\n\n{note}\n" + markdown_table(rows, columns)
    (out / "compare.md").write_text(text)
    report = Report(args.title, out)
    if note:
        report.text(note.strip())
    report.table(rows, columns)
    report.image(plot_overall(runs, names, out / "assets" / "overall.png"), "overall accuracy per run")
    report.write()
    finalize_run_dir(out, STAGE, inputs={"runs": [str(r) for r in args.runs]})
    print(text)
    print(f"wrote {out / 'compare.md'} and {out / 'report.html'}")
    return out / "compare.md"


if __name__ == "__main__":
    run_script(main)
