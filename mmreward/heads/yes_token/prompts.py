"""Prompts and read positions of the `yes_token` head (RewardDance), and its pair collator.

A query asks one yes/no question about one candidate:

- pointwise: the candidate's media, then e.g. 'Does this image match the prompt "..."? Answer yes or no.'
- pairwise: "First:" reference media, "Second:" candidate media, then "... Is the second image
  better than the first? ..." (text responses are quoted in the question instead; media that
  both sides share is shown once).

The chat ends with the generation prompt, plus the verdict prefix in "rationale_first" mode
("<rationale>\\nAnswer:"), so the last real token is the verdict position: the model's
next-token distribution there is the answer, and `RewardModel` reads its hidden state there.

`YesTokenCollator` turns preference pairs into 2P such queries, all `a` sides then all `b` sides,
like `mmreward.collate.PairCollator`; in the pairwise form side a is asked about against b as
reference and side b against a, so every pair is seen in both orders.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from mmreward.collate import CollateConfig, CollateError, pair_labels, processor_media, shares_prefix
from mmreward.data.dataset import PreferenceExample, SideMedia
from mmreward.data.media import VideoClip
from mmreward.heads.yes_token.config import YesTokenConfig


@dataclass
class VerdictQuery:
    """One yes/no question to the model.

    prompt: the generation prompt or question (already passed through the collate prompt_template).
    candidate: what is judged.
    reference: what the candidate is compared with (pairwise form only).
    share_media: the reference shows the same media as the candidate (response pairs): show it once.
    rationale: "rationale_first" only: the text the model wrote before the verdict (None = none).
    id: a name for error messages (record id).
    """

    prompt: str
    candidate: SideMedia
    reference: SideMedia | None = None
    share_media: bool = False
    rationale: str | None = None
    id: str | None = None


def media_word(side: SideMedia) -> str:
    """How the question names a side's media: "video", "images" or "image"."""
    if side.video is not None:
        return "video"
    return "images" if len(side.images) > 1 else "image"


def _media_items(side: SideMedia) -> list[dict[str, Any]]:
    return [{"type": "image"} for _ in side.images] + ([{"type": "video"}] if side.video is not None else [])


def _question(query: VerdictQuery, cfg: YesTokenConfig) -> str:
    cand, ref = query.candidate, query.reference
    if cfg.form == "pointwise":
        if ref is not None:
            raise CollateError(f"query {query.id!r}: the pointwise form takes no reference")
        if cand.response is not None:
            return cfg.pointwise_response_question.format(prompt=query.prompt, response=cand.response)
        return cfg.pointwise_question.format(prompt=query.prompt, media=media_word(cand))
    if ref is None:
        raise CollateError(f"query {query.id!r}: the pairwise form needs a reference")
    if (cand.response is None) != (ref.response is None):
        raise CollateError(f"query {query.id!r}: pairwise sides must both have a response or both have none")
    if cand.response is not None:
        return cfg.pairwise_response_question.format(prompt=query.prompt, response=cand.response,
                                                     reference=ref.response)
    return cfg.pairwise_question.format(prompt=query.prompt, media=media_word(cand))


def build_verdict_messages(query: VerdictQuery, cfg: YesTokenConfig, collate: CollateConfig) -> list[dict[str, Any]]:
    """Chat messages of a query: one user turn (media, question, answer instruction)."""
    text = f"{_question(query, cfg)} {cfg.answer_instruction()}"
    if query.reference is None or query.share_media:
        content = _media_items(query.candidate)
    else:
        ref_items, cand_items = _media_items(query.reference), _media_items(query.candidate)
        # Label the positions only when both sides show something.
        content = ([{"type": "text", "text": "First:"}, *ref_items, {"type": "text", "text": "Second:"}, *cand_items]
                   if ref_items and cand_items else ref_items + cand_items)
    content = [*content, {"type": "text", "text": text}]
    messages: list[dict[str, Any]] = []
    if collate.system_prompt:
        messages.append({"role": "system", "content": [{"type": "text", "text": collate.system_prompt}]})
    messages.append({"role": "user", "content": content})
    return messages


def verdict_prefix_text(cfg: YesTokenConfig, rationale: str | None) -> str:
    """Assistant text before the verdict: empty, or "<rationale>\\n<verdict_prefix>" (rationale_first)."""
    if cfg.reasoning != "rationale_first":
        return ""
    rationale = (rationale or "").strip()
    return f"{rationale}\n{cfg.verdict_prefix}" if rationale else cfg.verdict_prefix


def query_media(query: VerdictQuery) -> tuple[list[Any], list[VideoClip]]:
    """Images and videos of a query in placeholder order (reference first)."""
    sides = [query.candidate] if query.reference is None or query.share_media else [query.reference, query.candidate]
    images = [img for side in sides for img in side.images]
    videos = [side.video for side in sides if side.video is not None]
    return images, videos


def encode_queries(
    processor: Any,
    queries: Sequence[VerdictQuery],
    cfg: YesTokenConfig,
    collate: CollateConfig,
    for_generation: bool = False,
) -> dict[str, torch.Tensor]:
    """Processor inputs for the queries, padded per `collate.padding_side`.

    Each sequence ends at its verdict position; with `for_generation` it ends at the generation
    prompt instead (where a "rationale_first" model starts writing its rationale).
    """
    if not queries:
        raise CollateError("no queries to encode")
    texts: list[str] = []
    images: list[Any] = []
    clips: list[VideoClip] = []
    rendered: dict[str, str] = {}  # candidates for one prompt share their chat text: render it once
    for query in queries:
        messages = build_verdict_messages(query, cfg, collate)
        key = repr(messages)
        if key not in rendered:
            rendered[key] = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        chat = rendered[key]
        texts.append(chat if for_generation else chat + verdict_prefix_text(cfg, query.rationale))
        query_images, query_videos = query_media(query)
        images.extend(query_images)
        clips.extend(query_videos)
    batch = dict(processor(text=texts, padding=True, padding_side=collate.padding_side, return_tensors="pt",
                           **processor_media(images, clips)))
    if collate.max_length is not None and batch["input_ids"].shape[1] > collate.max_length:
        lengths = batch["attention_mask"].sum(dim=1).tolist()
        too_long = [(queries[i].id or i, n) for i, n in enumerate(lengths) if n > collate.max_length]
        raise CollateError(f"sequences longer than max_length={collate.max_length}: {too_long}")
    return batch


def pair_queries(examples: Sequence[PreferenceExample], cfg: YesTokenConfig,
                 collate: CollateConfig) -> list[VerdictQuery]:
    """2P queries for P pairs: every `a` side, then every `b` side (pairwise: each against the other)."""
    queries_a, queries_b = [], []
    for ex in examples:
        record = ex.record
        prompt = collate.prompt_template.format(prompt=record.prompt)
        if cfg.form == "pointwise":
            queries_a.append(VerdictQuery(prompt, ex.a, id=record.id))
            queries_b.append(VerdictQuery(prompt, ex.b, id=record.id))
        else:
            shared = shares_prefix(record)
            queries_a.append(VerdictQuery(prompt, ex.a, reference=ex.b, share_media=shared, id=record.id))
            queries_b.append(VerdictQuery(prompt, ex.b, reference=ex.a, share_media=shared, id=record.id))
    return queries_a + queries_b


@dataclass
class YesTokenCollator:
    """`collate(examples) -> {"inputs", "labels": [P, 1], "label_mask": [P, 1]}` for the yes_token head.

    The same output as `PairCollator`'s naive form (2P sequences, a sides then b sides), so the
    trainer and evaluation treat both heads alike. `cfg.prompt_template` formats the record's prompt
    before it goes into the question; the packed shared-prefix form is not used (each query is a
    different question).
    """

    processor: Any
    dimensions: Sequence[str]
    config: YesTokenConfig
    cfg: CollateConfig = field(default_factory=CollateConfig)

    def __post_init__(self) -> None:
        if self.cfg.pair_form == "shared_prefix":
            raise CollateError("the yes_token head asks one question per side; "
                               "pair_form='shared_prefix' does not apply "
                               "(use 'naive' or 'auto')")

    def __call__(self, examples: Sequence[PreferenceExample]) -> dict[str, Any]:
        if not examples:
            raise CollateError("empty batch")
        labels, mask = pair_labels([ex.record for ex in examples], self.dimensions)
        inputs = encode_queries(self.processor, pair_queries(examples, self.config, self.cfg), self.config, self.cfg)
        return {"inputs": inputs, "labels": labels, "label_mask": mask}
