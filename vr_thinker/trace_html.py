"""Render a finished VR-Thinker episode as a standalone HTML page.

The page shows the prompt, the initial frames of both videos, then every assistant turn: its reasoning
(``<think>``), its synthesis, its action (the frames it asked for, or its verdicts), any problems the parser or
environment found, and the frames the tool showed in reply. Frames are inline PNGs, so the file has no
dependencies. Works for model rollouts (``JudgeResult.env``) and teacher or imported traces (``replay(trace)``).
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from pathlib import Path

from vr_thinker.env import VideoPairEnv
from vr_thinker.protocol import OVERALL, VERDICT_FROM_LABEL

_STYLE = """
body { font-family: sans-serif; max-width: 70em; margin: 1em auto; color: #222; }
.turn { border: 1px solid #ccc; border-radius: 6px; padding: 0.6em 1em; margin: 1em 0; }
.think { white-space: pre-wrap; background: #f6f6f6; padding: 0.5em; }
.synthesis { white-space: pre-wrap; background: #eef6ee; padding: 0.5em; }
.action { white-space: pre-wrap; font-family: monospace; }
.problem { color: #a00; }
.frames { display: flex; flex-wrap: wrap; gap: 6px; align-items: flex-end; }
.frames figure { margin: 0; text-align: center; font-size: 0.8em; }
.frames img { image-rendering: pixelated; width: 112px; }
table.verdicts td, table.verdicts th { padding: 0 0.8em; text-align: center; }
.right { color: #070; } .wrong { color: #a00; }
"""


def _png(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _frames_html(env: VideoPairEnv, indices_1: Sequence[int], indices_2: Sequence[int]) -> str:
    rows = []
    for video, indices in ((1, indices_1), (2, indices_2)):
        figures = []
        for index in indices:
            if index >= env.pool_sizes[video - 1]:
                continue
            frame = env.frame(video, index)
            figures.append(
                f'<figure><img src="{_png(frame.image)}" alt="Video {video} frame {index}">'
                f"<figcaption>V{video} #{index}</figcaption></figure>"
            )
        rows.append(f'<div class="frames"><b>Video {video}</b> {"".join(figures)}</div>')
    return "\n".join(rows)


def _verdict_table(env: VideoPairEnv, label: Mapping[str, str] | None) -> str:
    names = [*env.dimensions, OVERALL]
    expected = {k: VERDICT_FROM_LABEL[v] for k, v in label.items()} if label else {}
    cells = []
    for name in names:
        got = env.verdicts.get(name)
        text = "-" if got is None else str(got)
        if name in expected:
            cls = "right" if got == expected[name] else "wrong"
            text = f'<span class="{cls}">{text}</span> (label {expected[name]})'
        cells.append(f"<td>{text}</td>")
    header = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    return f'<table class="verdicts"><tr>{header}</tr><tr>{"".join(cells)}</tr></table>'


def render_trace_html(env: VideoPairEnv, title: str = "", label: Mapping[str, str] | None = None) -> str:
    """HTML page of a finished (or running) episode. ``label``: the record label ("a"/"b"/"tie" per dimension)
    to mark each verdict right or wrong."""
    if env.status is None:
        raise ValueError("the environment was never reset; nothing to render")
    heading = html.escape(title or "VR-Thinker trace")
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{heading}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{heading}</h1>",
        f"<p><b>Prompt:</b> {html.escape(env.prompt)}<br><b>Status:</b> {html.escape(env.status.value)}, "
        f"{env.num_tool_calls} tool call(s)</p>",
        _verdict_table(env, label),
        "<h2>Initial frames</h2>",
        _frames_html(env, env.initial_indices(1), env.initial_indices(2)),
    ]
    for number, turn in enumerate(env.turns):
        parsed = turn.parsed
        parts.append(f'<div class="turn"><h3>Turn {number + 1} ({html.escape(turn.status.value)})</h3>')
        if parsed.think is not None:
            parts.append(f'<div class="think">{html.escape(parsed.think)}</div>')
        if parsed.synthesis is not None:
            parts.append(f'<div class="synthesis">{html.escape(parsed.synthesis)}</div>')
        if parsed.kind == "tool_call":
            parts.append(f'<p class="action">select_frames {html.escape(str(parsed.target_frames))}</p>')
        elif parsed.kind == "answer":
            answer = ", ".join(f"{k}: {v}" for k, v in parsed.verdicts.items())
            parts.append(f'<p class="action">answer {html.escape(answer)}</p>')
        else:
            parts.append(f'<pre class="action">{html.escape(turn.text)}</pre>')
        for problem in turn.problems:
            parts.append(f'<p class="problem">{html.escape(str(problem))}</p>')
        if turn.frames:
            parts.append("<p>Frames shown:</p>" + _frames_html(env, turn.frames, turn.frames))
        parts.append("</div>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_trace_html(path: str | Path, env: VideoPairEnv, title: str = "", label: Mapping[str, str] | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_trace_html(env, title, label), encoding="utf-8")
    return path
