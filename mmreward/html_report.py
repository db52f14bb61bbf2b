"""A small static HTML report: sections of text, tables, PNG plots and videos beside `report.html`."""

from __future__ import annotations

import html
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # headless: reports are written on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
img, video { max-width: 100%; border: 1px solid #ddd; margin: 0.3em 0; }
.note { color: #555; font-size: 0.92em; }
"""


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return html.escape(str(value))


@dataclass
class Report:
    """Collects blocks of HTML; `write` puts `report.html` and its assets in one folder."""

    title: str
    out_dir: Path
    blocks: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        (self.out_dir / "assets").mkdir(parents=True, exist_ok=True)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def text(self, text: str, note: bool = False) -> None:
        css = ' class="note"' if note else ""
        self.blocks.append(f"<p{css}>{html.escape(text)}</p>")

    def table(self, rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> None:
        if not rows:
            self.text("(no rows)", note=True)
            return
        cols = list(columns or rows[0].keys())
        head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
        body = "".join(
            "<tr>" + "".join(f"<td>{_cell(row.get(c, ''))}</td>" for c in cols) + "</tr>" for row in rows
        )
        self.blocks.append(f"<table><tr>{head}</tr>{body}</table>")

    def _asset(self, path: Path) -> str:
        """Copy a file into assets/ (unless it is already inside the report folder); return its href."""
        path = Path(path).resolve()
        root = self.out_dir.resolve()
        if root in path.parents:
            return path.relative_to(root).as_posix()
        target = self.out_dir / "assets" / path.name
        shutil.copyfile(path, target)
        return f"assets/{path.name}"

    def image(self, path: Path, caption: str = "") -> None:
        href = self._asset(path)
        cap = f"<figcaption class='note'>{html.escape(caption)}</figcaption>" if caption else ""
        self.blocks.append(f"<figure><img src='{href}' alt='{html.escape(caption)}'>{cap}</figure>")

    def video(self, path: Path, caption: str = "") -> None:
        href = self._asset(path)
        cap = f"<figcaption class='note'>{html.escape(caption)}</figcaption>" if caption else ""
        self.blocks.append(f"<figure><video src='{href}' controls loop muted></video>{cap}</figure>")

    def page(self, path: Path, caption: str = "", height: int = 600) -> None:
        """Embed another HTML page (e.g. a VR-Thinker trace) in a frame, with a link to open it alone."""
        href = self._asset(path)
        cap = html.escape(caption)
        self.blocks.append(
            f"<figure><iframe src='{href}' style='width:100%;height:{height}px;border:1px solid #ddd'></iframe>"
            f"<figcaption class='note'>{cap} (<a href='{href}'>open</a>)</figcaption></figure>"
        )

    def write(self) -> Path:
        page = (
            f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(self.title)}</h1>"
            + "\n".join(self.blocks)
            + "</body></html>\n"
        )
        path = self.out_dir / "report.html"
        path.write_text(page)
        return path


def plot_lines(
    series: Mapping[str, tuple[Iterable[float], Iterable[float]]],
    path: Path,
    title: str,
    xlabel: str = "step",
    ylabel: str = "",
) -> Path:
    """One PNG with a line per named (x, y) series."""
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    for name, (xs, ys) in series.items():
        ax.plot(list(xs), list(ys), label=name)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if len(series) > 1:
        ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
