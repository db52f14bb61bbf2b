"""Compare a preset's prompt strings with the ones in a released checkpoint's model card (README.md).

The cards hold their inference code in Python code blocks: the system prompt as a string (``sys_prompt``,
``SYSTEM_PROMPT``) and the first-turn text as an f-string (``prompt_text``) over variables the card assigns
(``prompt_for_videos``, ``dim_name_1`` / ``dim_explain_1``, ``N``). The code is parsed with :mod:`ast`, never run:
f-strings are filled from the card's own constant assignments. The preset is rendered with the same prompt and
dimensions, and each string is reported identical or with its first differing line.

    python -m vr_thinker.presets check-card vr-thinker path/to/vr-thinker/README.md
"""

from __future__ import annotations

import ast
import difflib
import re
from dataclasses import dataclass

from vr_thinker.presets import DimensionSpec, ProtocolPreset

SYSTEM_NAMES = ("sys_prompt", "SYSTEM_PROMPT", "system_prompt")
FIRST_TURN_NAMES = ("prompt_text", "PROMPT_TEXT", "USER_PROMPT", "user_prompt")


@dataclass
class CardFinding:
    """One compared string: which, whether it matches, and the first differing line (card / preset)."""

    what: str
    identical: bool
    detail: str = ""


def _code_blocks(text: str) -> list[str]:
    blocks = re.findall(r"```(?:python|py)?\n(.*?)```", text, flags=re.S)
    return blocks or [text]


def _constants(tree: ast.AST) -> dict[str, object]:
    """Names assigned constant values (also ``a, b = "x", "y"``) and f-strings filled from earlier constants."""
    values: dict[str, object] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Assign) or len(node.targets) != 1:
            continue
        target, value = node.targets[0], node.value
        if isinstance(target, ast.Name):
            filled = _value(value, values)
            if filled is not None:
                values[target.id] = filled
        elif isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple) and len(target.elts) == len(value.elts):
            for name, item in zip(target.elts, value.elts):
                filled = _value(item, values)
                if isinstance(name, ast.Name) and filled is not None:
                    values[name.id] = filled
    return values


def _value(node: ast.AST, known: dict[str, object]) -> object | None:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.JoinedStr):
        parts = []
        for part in node.values:
            if isinstance(part, ast.Constant):
                parts.append(str(part.value))
            elif isinstance(part, ast.FormattedValue) and isinstance(part.value, ast.Name) and part.value.id in known:
                parts.append(str(known[part.value.id]))
            else:
                return None
        return "".join(parts)
    return None


def card_strings(text: str) -> dict[str, object]:
    """Every constant the card's code blocks assign (code that does not parse is skipped)."""
    values: dict[str, object] = {}
    for block in _code_blocks(text):
        try:
            values.update(_constants(ast.parse(block)))
        except SyntaxError:
            continue
    return values


def _first_difference(card: str, ours: str) -> str:
    for line in difflib.unified_diff(card.splitlines(), ours.splitlines(), "card", "preset", n=0, lineterm=""):
        if line.startswith(("-", "+")) and not line.startswith(("---", "+++")):
            return line
    return "whitespace at the ends"


def check_card(preset: ProtocolPreset, text: str) -> list[CardFinding]:
    """Compare the preset's system and first-turn texts with the card's (what the card has)."""
    values = card_strings(text)
    dims = list(preset.dimensions())
    names = sorted(k for k in values if re.fullmatch(r"dim_name_\d+", k))
    if names:  # the card's own dimension names and explanations
        dims = [DimensionSpec(d.key, d.label, str(values[n]), str(values.get(n.replace("name", "explain"), "")))
                for d, n in zip(dims, names)]
    prompt = next((str(v) for k, v in values.items() if k.startswith("prompt_for")), "")
    findings = []
    pairs = [("system", SYSTEM_NAMES, preset.system_text(dims)),
             ("first turn", FIRST_TURN_NAMES, preset.first_turn_text(prompt, dims))]
    for what, candidates, ours in pairs:
        name = next((n for n in candidates if isinstance(values.get(n), str)), None)
        if name is None:
            findings.append(CardFinding(what, False, f"the card assigns none of {candidates} as a string"))
            continue
        card = str(values[name])
        same = card.strip() == ours.strip()
        findings.append(CardFinding(f"{what} ({name})", same, "" if same else _first_difference(card, ours)))
    return findings
