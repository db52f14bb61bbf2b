"""Evaluation metrics from prediction rows (exact values) and the written report files."""

import json

import numpy as np
import pytest

from mmreward.evaluation.report import (
    compute_metrics,
    format_ci,
    pairs_for_dimension,
    summary_markdown,
    tie_threshold_curve,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _row(i, item, cat, labels, delta, **extra):
    return {"id": str(i), "item_id": item, "category": cat, "labels": labels, "delta": delta,
            "score_a": None, "score_b": None, **extra}


ROWS = [
    _row(1, "i1", "x", {"overall": 1, "VQ": 1}, {"overall": 0.5, "VQ": 0.2}),
    _row(2, "i1", "x", {"overall": -1, "VQ": 1}, {"overall": 0.3, "VQ": 0.1}),
    _row(3, "i2", "y", {"overall": 0, "VQ": -1}, {"overall": 0.05, "VQ": -0.4}),
    _row(4, "i3", "y", {"overall": -1}, {"overall": -0.2, "VQ": 0.3}),
    _row(5, "i3", "y", {"overall": 1}, {"overall": 0.0}),
    {"id": "6", "item_id": "6", "category": "y", "labels": {"overall": 1},
     "error": {"type": "MediaError", "message": "v.mp4: file is empty (0 bytes)"}},
]


def test_pairs_for_dimension_skips_errors_and_missing_labels():
    d, y, items = pairs_for_dimension(ROWS, "VQ")
    assert d.tolist() == [0.2, 0.1, -0.4] and y.tolist() == [1, 1, -1] and items == ["i1", "i1", "i2"]


def test_tie_threshold_curve_exact():
    d, y, _ = pairs_for_dimension(ROWS, "overall")
    thresholds, acc = tie_threshold_curve(d, y)
    assert thresholds.tolist() == [-1.0, 0.0, 0.05, 0.2, 0.3, 0.5]
    assert acc.tolist() == pytest.approx([0.4, 0.4, 0.6, 0.4, 0.4, 0.2])
    # Few points: quantiles plus the calibrated optimum, which must stay on the curve.
    thresholds, acc = tie_threshold_curve(d, y, max_points=2)
    assert thresholds.tolist() == [-1.0, 0.0, 0.05, 0.5]
    assert acc.max() == pytest.approx(0.6)


def test_tie_threshold_curve_equals_the_full_grid_in_little_memory():
    """The curve equals the threshold x pair grid it replaced, and at 100k pairs needs a few MB
    (the grid took ~166 MB)."""
    import tracemalloc

    rng = np.random.default_rng(0)
    d = np.round(rng.normal(size=3000), 2)  # repeated |delta| values, zeros included
    y = rng.choice([-1, 0, 1], size=3000)
    for max_points in (200, 10_000):
        thresholds, acc = tie_threshold_curve(d, y, max_points=max_points)
        grid = np.where(np.abs(d)[None, :] <= thresholds[:, None], 0, np.sign(d)[None, :])
        assert acc.tolist() == (grid == y[None, :]).mean(axis=1).tolist()
    d, y = rng.normal(size=100_000), rng.choice([-1, 0, 1], size=100_000)
    tracemalloc.start()
    thresholds, acc = tie_threshold_curve(d, y)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert thresholds.size == 202 and peak < 20e6, peak


def test_compute_metrics_exact_values():
    m = compute_metrics(ROWS, n_bootstrap=200, seed=1)
    assert m["counts"] == {"pairs": 6, "scored": 5, "errors": 1, "errors_by_type": {"MediaError": 1}, "unanswered": 0}
    assert list(m["dimensions"]) == ["overall", "VQ"]
    overall = m["dimensions"]["overall"]
    assert (overall["pairs"], overall["tie_labels"]) == (5, 1)
    assert overall["accuracy"]["estimate"] == pytest.approx(0.5)
    assert overall["accuracy_with_ties"]["estimate"] == pytest.approx(0.6)
    assert overall["accuracy_with_ties"]["threshold"] == pytest.approx(0.05)
    for key in ("accuracy", "accuracy_with_ties"):
        assert overall[key]["low"] <= overall[key]["estimate"] <= overall[key]["high"]
    assert m["dimensions"]["VQ"]["accuracy"]["estimate"] == 1.0
    # Items i1 and i3 each have a wrong pair; i2 has only a tie-labelled pair and does not count.
    assert m["acc_plus"]["estimate"] == 0.0
    assert m["categories"] == {"x": {"pairs": 2, "accuracy": 0.5}, "y": {"pairs": 3, "accuracy": 0.5}}
    assert m["macro_accuracy"] == 0.5
    assert "position_flip_rate" not in m


def test_compute_metrics_flip_rate_unanswered_and_no_acc_plus_for_single_pairs():
    rows = [
        _row(1, "1", None, {"overall": 1}, {"overall": 1.0}, delta_swapped={"overall": -1.0}),
        _row(2, "2", None, {"overall": 1}, {"overall": -1.0}, delta_swapped={"overall": -1.0}),
        _row(3, "3", None, {"overall": -1}, {"overall": 0.0}, delta_swapped={"overall": 0.0},
             extra={"unanswered": ["overall"]}),
    ]
    m = compute_metrics(rows, n_bootstrap=50)
    assert m["position_flip_rate"] == pytest.approx(1 / 3)
    assert m["counts"]["unanswered"] == 1
    assert "acc_plus" not in m and "categories" not in m
    # A dimension with only tie labels has no accuracy without ties, but one with ties.
    tie_only = compute_metrics([_row(1, "1", None, {"overall": 0}, {"overall": 0.0})], n_bootstrap=20)
    assert tie_only["dimensions"]["overall"]["accuracy"] is None
    assert tie_only["dimensions"]["overall"]["accuracy_with_ties"]["estimate"] == 1.0


def test_compute_metrics_all_failed():
    m = compute_metrics(ROWS[-1:])
    assert m["counts"]["errors"] == 1 and m["dimensions"] == {}


def test_format_ci():
    assert format_ci({"estimate": 0.7359, "low": 0.712, "high": 0.759}) == "73.59 [71.20, 75.90]"
    assert format_ci(None) == "n/a"


def test_write_report_files(tmp_path):
    metrics = compute_metrics(ROWS, n_bootstrap=100)
    info = {"model": "tiny", "data": "rows"}
    paths = write_report(tmp_path, ROWS, metrics, "Test run", info)
    saved = json.loads(paths["metrics"].read_text())
    assert saved["info"] == info and saved["dimensions"]["overall"]["accuracy"]["estimate"] == 0.5
    summary = paths["summary"].read_text()
    assert summary.startswith("# Test run")
    assert "| overall | 5 | 1 | 50.00 [" in summary
    assert "failed: 1 (MediaError: 1)" in summary and "Acc+" in summary and "| x | 2 | 50.00 |" in summary
    html = paths["html"].read_text()
    for name in ("accuracy.png", "delta_overall.png", "delta_VQ.png", "threshold_overall.png", "threshold_VQ.png"):
        assert f"assets/{name}" in html
        assert (tmp_path / "assets" / name).read_bytes()[:8] == PNG_MAGIC
    assert "MediaError" in html and "file is empty" in html


def test_summary_markdown_without_categories():
    rows = [_row(1, "1", None, {"overall": 1}, {"overall": 2.0}), _row(2, "2", None, {"overall": -1}, {"overall": 1.0})]
    text = summary_markdown(compute_metrics(rows, n_bootstrap=10), "t", {"model": "m"})
    assert "- model: m" in text and "category" not in text
    assert "| overall | 2 | 0 | 50.00 [" in text
    assert np.isfinite(compute_metrics(rows, n_bootstrap=10)["dimensions"]["overall"]["accuracy_with_ties"]["threshold"])
