"""What the reward server's requests hold, checked item by item, and the errors it answers with.

`POST /reward` takes `{"items": [item, ...], "normalize": true | false | null}`; an item is

    {"prompt": "a red ball bouncing",          # required: the text the media is scored against
     "response": "...",                         # optional: a completion scored with the media (TRL, OpenRLHF)
     "image": MEDIA, "images": [MEDIA, ...],    # optional: images, "image" first
     "video": MEDIA}                            # optional: a video

where MEDIA is a path under the server's media root (relative, or absolute inside it) or
`{"base64": "<the file's bytes>"}`. `POST /get_reward` takes OpenRLHF's `{"query", "prompts", "labels"}`
(`openrlhf_items` maps them onto items; see README "Reward servers").

A bad item never fails the others: each one is checked on its own and answers with an `ItemError`
`{"index": i, "field": "image", "message": "..."}` (index None: the request as a whole).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Annotated, Any, Sequence, Union

from pydantic import BaseModel, ConfigDict, PlainValidator, ValidationError

from mmreward.data.dataset import VIDEO_SUFFIXES

MEDIA_FIELDS = ("image", "images", "video")


@dataclass(frozen=True)
class Upload:
    """A media file's bytes, base64-encoded (for clients that cannot reach the server's media root)."""

    base64: str


def _media_ref(value: Any) -> str | Upload:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, dict) and set(value) == {"base64"} and isinstance(value["base64"], str):
        return Upload(value["base64"])
    raise ValueError('expected a path under the media root or {"base64": "<file bytes>"}, '
                     f"got {json.dumps(value)[:80]}")


MediaRef = Annotated[Union[str, Upload], PlainValidator(_media_ref)]


class RewardItem(BaseModel):
    """One thing to score: a prompt with media (and optionally a response)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str
    response: str | None = None
    image: MediaRef | None = None
    images: list[MediaRef] | None = None
    video: MediaRef | None = None


@dataclass(frozen=True)
class ItemError:
    """Why an item was not scored. index: its position in the request (None: the whole request);
    field: the item's field at fault (e.g. "image", "images[1]", "vidoe"); server_fault: the server
    failed (HTTP 500), not the input (HTTP 400)."""

    index: int | None
    field: str
    message: str
    server_fault: bool = False

    def as_json(self) -> dict[str, Any]:
        return {"index": self.index, "field": self.field, "message": self.message}


class RequestError(ValueError):
    """A request that cannot be used at all (answered 400 naming the field)."""

    def __init__(self, field: str, message: str):
        self.error = ItemError(None, field, message)
        super().__init__(f"{field}: {message}")


def _field_name(loc: Sequence[Any]) -> str:
    name = ""
    for part in loc:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or "item"


def parse_item(index: int, raw: Any) -> RewardItem | ItemError:
    """One request item, or the error naming its first bad field."""
    try:
        return RewardItem.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            message = f"unknown field (allowed: {', '.join(RewardItem.model_fields)})"
        return ItemError(index, _field_name(first["loc"]), message)


def parse_json_object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RequestError("body", f"not JSON ({err})") from err
    if not isinstance(data, dict):
        raise RequestError("body", f"expected a JSON object, got {type(data).__name__}")
    return data


def parse_reward_request(data: dict[str, Any]) -> tuple[list[RewardItem | ItemError], bool | None]:
    """`/reward`'s items (each parsed or its error) and the requested normalisation."""
    unknown = sorted(set(data) - {"items", "normalize"})
    if unknown:
        raise RequestError(unknown[0], "unknown field (allowed: items, normalize)")
    raw_items = data.get("items")
    if not isinstance(raw_items, list) or not raw_items:
        raise RequestError("items", "expected a non-empty list of items")
    normalize = data.get("normalize")
    if normalize is not None and not isinstance(normalize, bool):
        raise RequestError("normalize", f"expected true, false or null, got {json.dumps(normalize)[:40]}")
    return [parse_item(i, raw) for i, raw in enumerate(raw_items)], normalize


# ------------------------------------------------------------------------------------------- OpenRLHF

_CHAT_TURN = re.compile(r"<\|im_start\|>(\w+)\n(.*?)(?=<\|im_end\|>|<\|im_start\|>|\Z)", re.S)
_VISION_SPAN = re.compile(r"<\|vision_start\|>.*?<\|vision_end\|>", re.S)


def chat_user_text(text: str) -> str:
    """The prompt a reward model scores: for a ChatML-templated prompt (what OpenRLHF sends with
    `apply_chat_template`, the Qwen-VL format) the last user turn's text without its vision
    placeholders; any other text as it is."""
    users = [content for role, content in _CHAT_TURN.findall(text) if role == "user"]
    if not users:
        return text
    return _VISION_SPAN.sub("", users[-1]).strip()


def strip_trailing_tokens(text: str, tokens: Sequence[str]) -> str:
    """`text` without the special tokens (end of turn, padding) a decoded generation ends with."""
    tokens = [t for t in tokens if t]
    stripped = True
    while stripped:
        stripped = False
        for token in tokens:
            if text.endswith(token):
                text, stripped = text[: -len(token)], True
    return text


def label_media(label: Any) -> dict[str, Any]:
    """An OpenRLHF label as media fields: null or "" (none), a path under the media root (a video by
    its suffix, else an image), or an object / JSON object string with image, images and/or video."""
    if label is None or label == "":
        return {}
    if isinstance(label, str) and label.lstrip().startswith("{"):
        try:
            label = json.loads(label)
        except json.JSONDecodeError as err:
            raise ValueError(f"not a JSON object ({err})") from err
    if isinstance(label, dict):
        unknown = sorted(set(label) - set(MEDIA_FIELDS))
        if unknown:
            raise ValueError(f"unknown media field {unknown[0]!r} (allowed: {', '.join(MEDIA_FIELDS)})")
        return dict(label)
    if isinstance(label, str):
        return {"video" if label.lower().endswith(VIDEO_SUFFIXES) else "image": label}
    raise ValueError(f"expected a media path or an object of media fields, got {type(label).__name__}")


def _optional_list(data: dict[str, Any], name: str, n: int) -> list[Any] | None:
    values = data.get(name)
    if values is None:
        return None
    if not isinstance(values, list) or len(values) != n:
        raise RequestError(name, f"expected a list of {n} entries (one per query), got {json.dumps(values)[:60]}")
    return values


def openrlhf_items(data: dict[str, Any], special_tokens: Sequence[str]) -> list[RewardItem | ItemError]:
    """Items for OpenRLHF's `{"query": [...], "prompts": [...], "labels": [...]}` (other keys are
    ignored, as OpenRLHF's own server does).

    query[i]: the decoded prompt + response. prompts[i] (optional): the prompt, so the response is
    `query[i]` after it (trailing special tokens removed); without prompts the query is the prompt and
    there is no response. The prompt text is `chat_user_text(prompts[i])`. labels[i] (optional): the
    media (`label_media`)."""
    queries = data.get("query")
    if not isinstance(queries, list) or not queries:
        raise RequestError("query", "expected a non-empty list of strings")
    prompts = _optional_list(data, "prompts", len(queries))
    labels = _optional_list(data, "labels", len(queries))
    items: list[RewardItem | ItemError] = []
    for i, query in enumerate(queries):
        prompt = prompts[i] if prompts is not None else query
        if not isinstance(query, str) or not isinstance(prompt, str):
            items.append(ItemError(i, "query" if not isinstance(query, str) else "prompts", "expected a string"))
            continue
        if prompts is not None and not query.startswith(prompt):
            items.append(ItemError(i, "query", "does not start with its prompt (prompts[i])"))
            continue
        response = strip_trailing_tokens(query[len(prompt):], special_tokens) if prompts is not None else ""
        try:
            media = label_media(labels[i] if labels is not None else None)
        except ValueError as err:
            items.append(ItemError(i, "labels", str(err)))
            continue
        items.append(parse_item(i, {"prompt": chat_user_text(prompt), "response": response or None, **media}))
    return items
