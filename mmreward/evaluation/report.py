"""Metrics and reports of an evaluation: `metrics.json`, `summary.md` and `report.html` with PNG plots.

Metrics follow `mmreward.metrics` (and so the published tables): per dimension, accuracy without
ties and tie-calibrated accuracy with ties, each with a bootstrap interval; Acc+ when items have
several pairs (MM-RLHF-RewardBench); accuracy per category and their mean (VL-RewardBench's macro
accuracy); the position flip rate when pairs were scored in both orders. Error rows (media that
failed) are counted and left out of every accuracy.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmreward.metrics import (
    acc_plus,
    accuracy_with_ties,
    bootstrap_ci,
    pair_accuracy,
    position_flip_rate,
    tie_calibration,
)
from mmreward.html_report import Report, plt

__all__ = [
    "METRICS_NAME",
    "SUMMARY_NAME",
    "pairs_for_dimension",
    "tie_threshold_curve",
    "compute_metrics",
    "summary_markdown",
    "write_report",
    "format_ci",
]

METRICS_NAME = "metrics.json"
SUMMARY_NAME = "summary.md"


def pairs_for_dimension(rows: Sequence[Mapping[str, Any]], dim: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(delta, labels, item ids) of the scored rows that have both a label and a score for `dim`."""
    delta, labels, items = [], [], []
    for row in rows:
        if "error" in row or dim not in row["labels"] or dim not in row["delta"]:
            continue
        delta.append(float(row["delta"][dim]))
        labels.append(int(row["labels"][dim]))
        items.append(row.get("item_id", row["id"]))
    return np.asarray(delta, dtype=np.float64), np.asarray(labels, dtype=np.int64), items


def _dimensions(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Dimensions with labels and scores, "overall" first, then in order of first appearance."""
    seen: dict[str, None] = {"overall": None}
    for row in rows:
        if "error" not in row:
            for dim in row["labels"]:
                if dim in row["delta"]:
                    seen[dim] = None
    return list(seen)


def tie_threshold_curve(delta: Sequence[float], labels: Sequence[int], max_points: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Three-way accuracy for tie thresholds t (predict tie where |delta| <= t, else sign(delta)).

    Thresholds are -1 and every distinct |delta| (or, beyond `max_points`, evenly spaced quantiles
    of |delta| plus the calibrated optimum), sorted. Computed from the pairs sorted by |delta| and
    running counts, so memory stays O(n) whatever the number of thresholds.
    """
    d = np.asarray(delta, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    mag = np.abs(d)
    values = np.unique(mag)
    if values.size > max_points:
        values = np.unique(np.concatenate([np.quantile(mag, np.linspace(0, 1, max_points)),
                                           [tie_calibration(d, y)[1]]]))
    thresholds = np.concatenate([[-1.0], values])
    order = np.argsort(mag, kind="stable")
    # Running counts over the sorted pairs: right if predicted tie, right if predicted sign(delta).
    tie_hits = np.concatenate([[0], np.cumsum(y[order] == 0)])
    sign_hits = np.concatenate([[0], np.cumsum(np.sign(d[order]) == y[order])])
    below = np.searchsorted(mag[order], thresholds, side="right")  # pairs with |delta| <= t
    correct = tie_hits[below] + sign_hits[-1] - sign_hits[below]
    return thresholds, correct / d.size


def _interval(metric, *arrays, group_by: int | None = None, n: int, confidence: float, seed: int) -> dict[str, float]:
    ci = bootstrap_ci(metric, *arrays, group_by=group_by, n_resamples=n, confidence=confidence, seed=seed)
    return {"estimate": ci.estimate, "low": ci.low, "high": ci.high}


def compute_metrics(rows: Sequence[Mapping[str, Any]], n_bootstrap: int = 1000, confidence: float = 0.95,
                    seed: int = 0) -> dict[str, Any]:
    """All metrics of a predictions file's rows (see the module docstring for what is included)."""
    scored = [r for r in rows if "error" not in r]
    errors = Counter(r["error"]["type"] for r in rows if "error" in r)
    unanswered = sum(1 for r in scored if r.get("extra", {}).get("unanswered"))
    metrics: dict[str, Any] = {
        "counts": {"pairs": len(rows), "scored": len(scored), "errors": sum(errors.values()),
                   "errors_by_type": dict(sorted(errors.items())), "unanswered": unanswered},
        "confidence": confidence,
        "n_bootstrap": n_bootstrap,
        "dimensions": {},
    }
    if not scored:
        return metrics
    ci = {"n": n_bootstrap, "confidence": confidence, "seed": seed}
    for dim in _dimensions(scored):
        d, y, _ = pairs_for_dimension(scored, dim)
        if d.size == 0:
            continue
        entry: dict[str, Any] = {"pairs": int(d.size), "tie_labels": int((y == 0).sum())}
        entry["accuracy"] = _interval(pair_accuracy, d, y, **ci) if (y != 0).any() else None
        entry["accuracy_with_ties"] = {**_interval(accuracy_with_ties, d, y, **ci), "threshold": tie_calibration(d, y)[1]}
        metrics["dimensions"][dim] = entry

    d, y, items = pairs_for_dimension(scored, "overall")
    item_ids = np.asarray(items)
    decisive = y != 0
    if decisive.any() and len(np.unique(item_ids[decisive])) < int(decisive.sum()):
        metrics["acc_plus"] = _interval(acc_plus, d, y, item_ids, group_by=2, **ci)

    categories = sorted({r["category"] for r in scored if r.get("category") is not None}, key=str)
    if categories:
        per_category = {}
        for cat in categories:
            cd, cy, _ = pairs_for_dimension([r for r in scored if r.get("category") == cat], "overall")
            if (cy != 0).any():
                per_category[str(cat)] = {"pairs": int(cd.size), "accuracy": pair_accuracy(cd, cy)}
        metrics["categories"] = per_category
        if per_category:
            metrics["macro_accuracy"] = float(np.mean([c["accuracy"] for c in per_category.values()]))

    swapped = [r for r in scored if "delta_swapped" in r]
    if swapped:
        metrics["position_flip_rate"] = position_flip_rate(
            [r["delta"]["overall"] for r in swapped], [r["delta_swapped"]["overall"] for r in swapped]
        )
    return metrics


# ------------------------------------------------------------------------------------ text


def format_ci(entry: Mapping[str, float] | None) -> str:
    """"73.59 [71.20, 75.90]" (percent) or "n/a"."""
    if not entry:
        return "n/a"
    return f"{100 * entry['estimate']:.2f} [{100 * entry['low']:.2f}, {100 * entry['high']:.2f}]"


def _dimension_rows(metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for dim, m in metrics["dimensions"].items():
        rows.append({
            "dimension": dim,
            "pairs": m["pairs"],
            "tie labels": m["tie_labels"],
            "acc w/o ties (%)": format_ci(m["accuracy"]),
            "acc w/ ties (%)": format_ci(m["accuracy_with_ties"]),
            "tie threshold": f"{m['accuracy_with_ties']['threshold']:.4g}",
        })
    return rows


def _markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return "(no rows)\n"
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _headline(metrics: Mapping[str, Any]) -> list[str]:
    counts = metrics["counts"]
    lines = [f"pairs: {counts['pairs']}, scored: {counts['scored']}, failed: {counts['errors']}"
             + (f" ({', '.join(f'{k}: {v}' for k, v in counts['errors_by_type'].items())})" if counts["errors"] else "")
             + (f", no verdict: {counts['unanswered']}" if counts["unanswered"] else "")]
    if "acc_plus" in metrics:
        lines.append(f"Acc+ (all pairs of an item right): {format_ci(metrics['acc_plus'])} %")
    if "macro_accuracy" in metrics:
        lines.append(f"macro accuracy over categories: {100 * metrics['macro_accuracy']:.2f} %")
    if "position_flip_rate" in metrics:
        lines.append(f"position flip rate (verdict changes when sides swap): {100 * metrics['position_flip_rate']:.2f} %")
    return lines


def summary_markdown(metrics: Mapping[str, Any], title: str, info: Mapping[str, Any] | None = None) -> str:
    """A markdown summary: what was evaluated, counts, the per-dimension table, categories."""
    conf = int(round(100 * metrics["confidence"]))
    parts = [f"# {title}\n"]
    parts += [f"- {k}: {v}" for k, v in (info or {}).items()]
    parts += [f"- {line}" for line in _headline(metrics)]
    parts.append(f"\nAccuracy in %, [{conf}% bootstrap interval, {metrics['n_bootstrap']} resamples]. "
                 "Without ties: tie-labelled pairs left out, delta 0 counts as wrong. With ties: tie "
                 "calibration (tie predicted where |delta| <= threshold, threshold chosen to maximise accuracy).\n")
    parts.append(_markdown_table(_dimension_rows(metrics)))
    if metrics.get("categories"):
        parts.append("\nOverall accuracy without ties per category:\n")
        parts.append(_markdown_table([
            {"category": cat, "pairs": c["pairs"], "accuracy (%)": f"{100 * c['accuracy']:.2f}"}
            for cat, c in metrics["categories"].items()
        ]))
    return "\n".join(parts) + "\n"


# ------------------------------------------------------------------------------------ plots


def plot_accuracy_bars(metrics: Mapping[str, Any], path: Path) -> Path:
    """Accuracy per dimension, without and with ties, with the bootstrap intervals as error bars."""
    dims = list(metrics["dimensions"])
    fig, ax = plt.subplots(figsize=(max(4.0, 1.3 * len(dims) + 2), 3.5), dpi=100)
    x = np.arange(len(dims))
    for offset, key, name in ((-0.2, "accuracy", "w/o ties"), (0.2, "accuracy_with_ties", "w/ ties")):
        entries = [metrics["dimensions"][d][key] for d in dims]
        est = np.array([100 * e["estimate"] if e else np.nan for e in entries])
        low = np.array([100 * (e["estimate"] - e["low"]) if e else 0 for e in entries])
        high = np.array([100 * (e["high"] - e["estimate"]) if e else 0 for e in entries])
        ax.bar(x + offset, est, width=0.4, yerr=[low, high], capsize=3, label=name)
    ax.set_xticks(x, dims)
    ax.set_ylim(0, 100)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"accuracy per dimension ({int(round(100 * metrics['confidence']))}% intervals)")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def plot_delta_histogram(delta: np.ndarray, labels: np.ndarray, dim: str, path: Path) -> Path:
    """delta of tie-labelled pairs vs label-oriented delta (delta * label) of the other pairs."""
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ties, decisive = delta[labels == 0], (delta * labels)[labels != 0]
    bins = np.histogram_bin_edges(delta * np.where(labels == 0, 1, labels), bins=30)
    if decisive.size:
        ax.hist(decisive, bins=bins, alpha=0.6, label=f"non-tie pairs (n={decisive.size}), delta * label")
    if ties.size:
        ax.hist(ties, bins=bins, alpha=0.6, label=f"tie pairs (n={ties.size}), delta")
    ax.axvline(0, color="k", lw=0.8)
    ax.set_title(f"{dim}: score difference (right of 0 = agrees with a non-tie label)")
    ax.set_xlabel("delta")
    ax.set_ylabel("pairs")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def plot_threshold_curve(thresholds: np.ndarray, accuracy: np.ndarray, best: float, dim: str, path: Path) -> Path:
    """Three-way accuracy against the tie threshold: a step curve over t >= 0, the accuracy with no
    forced ties (t = -1) as a dashed line, and the calibrated threshold marked."""
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    keep = thresholds >= 0
    x, y = thresholds[keep], 100 * accuracy[keep]
    # Carry the last step a little to the right so the value at the largest threshold is visible.
    x, y = np.append(x, x[-1] * 1.05 if x[-1] > 0 else 1.0), np.append(y, y[-1])
    ax.step(x, y, where="post", label="accuracy w/ ties")
    ax.axhline(100 * accuracy[0], color="gray", ls="--", lw=1, label="no forced ties (t = -1)")
    ax.axvline(best, color="k", ls=":", lw=1, label=f"calibrated t = {best:.4g}")
    ax.set_title(f"{dim}: accuracy vs tie threshold")
    ax.set_xlabel("tie threshold t (tie predicted where |delta| <= t)")
    ax.set_ylabel("accuracy (%)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def write_report(out_dir: str | Path, rows: Sequence[Mapping[str, Any]], metrics: Mapping[str, Any],
                 title: str, info: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """Write `metrics.json`, `summary.md` and `report.html` (+ PNGs in `assets/`) into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / METRICS_NAME).write_text(json.dumps({**metrics, "info": dict(info or {})}, indent=2, default=str) + "\n")
    summary = summary_markdown(metrics, title, info)
    (out / SUMMARY_NAME).write_text(summary)

    report = Report(title, out)
    report.heading("What was evaluated")
    report.table([{"key": k, "value": v} for k, v in (info or {}).items()] or [{"key": "-", "value": "-"}])
    for line in _headline(metrics):
        report.text(line)
    report.heading("Accuracy per dimension")
    report.table(_dimension_rows(metrics))
    if metrics["dimensions"]:
        report.image(plot_accuracy_bars(metrics, out / "assets" / "accuracy.png"),
                     "accuracy per dimension with bootstrap intervals")
    if metrics.get("categories"):
        report.heading("Overall accuracy per category")
        report.table([{"category": c, "pairs": v["pairs"], "accuracy": v["accuracy"]}
                      for c, v in metrics["categories"].items()])
    scored = [r for r in rows if "error" not in r]
    for dim in metrics["dimensions"]:
        d, y, _ = pairs_for_dimension(scored, dim)
        report.heading(f"{dim}: score differences and tie threshold", level=3)
        safe = "".join(ch if ch.isalnum() else "_" for ch in dim)
        report.image(plot_delta_histogram(d, y, dim, out / "assets" / f"delta_{safe}.png"),
                     "histogram of delta for tie-labelled and non-tie pairs")
        thresholds, acc = tie_threshold_curve(d, y)
        best = metrics["dimensions"][dim]["accuracy_with_ties"]["threshold"]
        report.image(plot_threshold_curve(thresholds, acc, best, dim, out / "assets" / f"threshold_{safe}.png"),
                     "three-way accuracy against the tie threshold")
    failed = [r for r in rows if "error" in r]
    if failed:
        report.heading("Pairs that failed")
        report.table([{"id": r["id"], "error": r["error"]["type"], "message": r["error"]["message"]} for r in failed[:50]])
        if len(failed) > 50:
            report.text(f"... and {len(failed) - 50} more (see predictions.jsonl)", note=True)
    return {"metrics": out / METRICS_NAME, "summary": out / SUMMARY_NAME, "html": report.write()}
