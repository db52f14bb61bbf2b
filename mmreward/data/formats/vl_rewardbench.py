"""VL-RewardBench (MMInstruction/VL-RewardBench): one image, a query and two responses per row.

Rows (Parquet as published, or JSON / JSONL): ``id``, ``query``, ``response`` (two strings),
``image``, ``human_ranking`` (``[0, 1]``: the first response is better, ``[1, 0]``: the second;
equal ranks would be a tie), plus ``models``, ``judge``, ``rationale``, ``query_source``,
``ground_truth``, ... kept in ``meta``. ``image`` is either a path (relative to ``media_root``)
or, in the Parquet files, a ``{"bytes", "path"}`` struct whose bytes are written to
``media_out/<id>.<format>``.

The subset and its category come from the id prefix (before the first ``_`` or ``-``), the rule
of the benchmark's evaluation scripts: ``RLAIF`` -> rlaif-v, ``RLHF`` -> rlhf-v,
``hallucination`` -> povid (all three: hallucination), ``mathverse`` / ``mmmu`` ->
reasoning_tasks (reasoning), ``wildvision`` -> wildvision-battle and anything else -> vlfeedback
(both: general).
"""

from __future__ import annotations

import io
import re
from pathlib import Path

from PIL import Image

from mmreward.data.formats._common import RowContext, build_meta, load_rows, media_path, resolve_roots
from mmreward.data.records import PreferenceRecord, Side, quote

NAME = __name__.rsplit(".", 1)[-1]  # the registry name is the module's
SOURCE_FILE = "test-00000-of-00001.parquet"  # the benchmark's own file, as released (tests/fixtures/benchmarks/NAME/ holds one)
SUBSET_BY_PREFIX = {
    "RLAIF": "rlaif-v",
    "RLHF": "rlhf-v",
    "hallucination": "povid",
    "mathverse": "reasoning_tasks",
    "mmmu": "reasoning_tasks",
    "wildvision": "wildvision-battle",
}
CATEGORY_BY_SUBSET = {
    "rlaif-v": "hallucination",
    "rlhf-v": "hallucination",
    "povid": "hallucination",
    "reasoning_tasks": "reasoning",
    "wildvision-battle": "general",
    "vlfeedback": "general",
}


def subset_of(record_id: str) -> str:
    """The VL-RewardBench source subset named by an id's prefix."""
    prefix = re.split(r"[_-]", record_id, maxsplit=1)[0]
    return SUBSET_BY_PREFIX.get(prefix, "vlfeedback")


def _image(ctx: RowContext, root: Path, media_out: Path | None) -> Path:
    value = ctx.get("image", (str, dict))
    if isinstance(value, str):
        return media_path(ctx, root, value)
    if value.get("bytes"):
        if media_out is None:
            raise ctx.error("the image is embedded as bytes; pass media_out to choose where to write it")
        try:
            fmt = Image.open(io.BytesIO(value["bytes"])).format
        except OSError as e:
            raise ctx.error(f"embedded image bytes are not a readable image: {e}") from e
        out = media_out.resolve() / f"{re.sub(r'[^A-Za-z0-9._-]', '_', ctx.record_id)}.{fmt.lower()}"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(value["bytes"])
        return out
    if value.get("path"):
        return media_path(ctx, root, value["path"])
    raise ctx.error("field 'image' has neither bytes nor a path")


def read(src: str | Path, media_root: str | Path | None = None, media_out: str | Path | None = None) -> list[PreferenceRecord]:
    """Records of ``src``; embedded images are written under ``media_out``."""
    src, root = resolve_roots(src, media_root)
    media_out = Path(media_out) if media_out is not None else None
    records = []
    for index, (where, row) in enumerate(load_rows(src)):
        ctx = RowContext(src, where, row)
        ctx.record_id = str(ctx.get("id", (str, int)))
        responses = ctx.get("response", list)
        ranking = ctx.get("human_ranking", list)
        if len(responses) != 2 or not all(isinstance(r, str) for r in responses):
            raise ctx.error(f"field 'response' must hold two strings, got {quote(responses)}")
        if len(ranking) != 2 or not all(isinstance(r, int) for r in ranking):
            raise ctx.error(f"field 'human_ranking' must hold two integer ranks, got {quote(ranking)}")
        overall = "a" if ranking[0] < ranking[1] else "b" if ranking[0] > ranking[1] else "tie"
        image = _image(ctx, root, media_out)
        subset = subset_of(ctx.record_id)
        derived = {"benchmark": NAME, "source_row": index, "subset": subset, "category": CATEGORY_BY_SUBSET[subset]}
        meta = build_meta(row, ["query", "response"], derived)
        if isinstance(row["image"], dict):
            meta["image"] = {"path": row["image"].get("path"), "written_to": image.name}
        records.append(PreferenceRecord(
            id=ctx.record_id,
            prompt=ctx.get("query"),
            a=Side(image=image, response=responses[0]),
            b=Side(image=image, response=responses[1]),
            label={"overall": overall},
            meta=meta,
        ))
    return records
