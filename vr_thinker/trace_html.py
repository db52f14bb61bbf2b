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
from vr_thinker.protocol import label_verdicts

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


def _frames_html(env: VideoPairEnv, indices: Sequence[int]) -> str:
    """Figures of pool indices (0-based), labelled with their frame number and video."""
    per_video = env.preset.frames.per_video
    figures = []
    for index in indices:
        video = 1 if index < per_video else 2
        figures.append(f'<figure><img src="{_png(env.frame(index))}" alt="frame {index + 1}">'
                       f"<figcaption>{index + 1} (Video {video})</figcaption></figure>")
    return f'<div class="frames">{"".join(figures)}</div>'


def _verdict_table(env: VideoPairEnv, label: Mapping[str, str] | None) -> str:
    preset = env.preset
    expected = label_verdicts(label, preset, env.dimensions) if label else {}
    keys = [*(d.key for d in env.dimensions), preset.answer.overall_key]
    cells = []
    for key in keys:
        got = env.verdicts.get(key)
        text = "-" if got is None else str(got)
        if key in expected:
            cls = "right" if got == expected[key] else "wrong"
            text = f'<span class="{cls}">{text}</span> (label {expected[key]})'
        cells.append((key, text))
    head = "".join(f"<th>{html.escape(k)}</th>" for k, _ in cells)
    body = "".join(f"<td>{t}</td>" for _, t in cells)
    return f'<table class="verdicts"><tr>{head}</tr><tr>{body}</tr></table>'


def render_trace_html(env: VideoPairEnv, title: str = "", label: Mapping[str, str] | None = None) -> str:
    """HTML page of a finished (or running) episode. ``label``: the record label ("a"/"b"/"tie" per label key)
    to mark verdicts right or wrong."""
    if env.status is None:
        raise ValueError("the episode was never reset")
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{_STYLE}</style></head><body><h1>{html.escape(title or 'VR-Thinker trace')}</h1>",
        f"<p><b>Prompt:</b> {html.escape(env.prompt)}<br><b>Protocol:</b> {html.escape(env.preset.name)}<br>"
        f"<b>Status:</b> {html.escape(env.status.value)}, {env.num_tool_calls} tool call(s)</p>",
        _verdict_table(env, label),
        "<h2>Initial frames</h2>",
        _frames_html(env, env.initial_indices()),
    ]
    for number, turn in enumerate(env.turns):
        check = turn.check
        parts.append(f'<div class="turn"><h3>Turn {number + 1} ({html.escape(turn.status.value)})</h3>')
        if check.synthesis is not None:
            parts.append(f'<div class="synthesis">{html.escape(check.synthesis)}</div>')
        if check.think is not None:
            parts.append(f'<div class="think">{html.escape(check.think)}</div>')
        if check.recommend is not None:
            parts.append(f'<p class="action">recommended: {html.escape(str(check.recommend))}</p>')
        if turn.tool is not None:
            asked = turn.tool.requested
            parts.append(f'<p class="action">select_frames {html.escape(str(asked))} -> {turn.tool.kind}'
                         + (" (reduced)" if turn.tool.reduced else "") + "</p>")
            if turn.tool.message:
                parts.append(f'<pre class="action">{html.escape(turn.tool.message)}</pre>')
        elif check.answer is not None:
            answer = ", ".join(f"{k}={v}" for k, v in check.answer.items())
            parts.append(f'<p class="action">final answer: {html.escape(answer)}</p>')
        if not check.format_valid or (check.final and check.answer is None):
            parts.append(f'<pre class="action">{html.escape(turn.text)}</pre>')
        for problem in check.problems:
            parts.append(f'<p class="problem">{html.escape(str(problem))}</p>')
        if turn.frames:
            parts.append("<p>Frames shown:</p>" + _frames_html(env, turn.frames))
        parts.append("</div>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_trace_html(path: str | Path, env: VideoPairEnv, title: str = "", label: Mapping[str, str] | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_trace_html(env, title, label), encoding="utf-8")
    return path
