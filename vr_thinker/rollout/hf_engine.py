"""Rollouts with a Hugging Face Qwen-VL model and a KV cache kept across turns.

An own prefill/decode loop over the model's ``forward`` with a ``DynamicCache``, not ``generate``, because a turn
must feed tokens that differ per episode in length and start, with explicit M-RoPE positions and vision features
for only part of the media, and we want the time to first token of every turn. Per turn and episode:

1. The context is built as token ids that extend the generated ones (:class:`~vr_thinker.rollout.context.
   ConversationBuilder`).
2. The ids are compared with what the KV cache holds (media tokens compare by content): the longest common prefix
   is kept, the cache is cropped right after it (``DynamicCache.crop``) and only the rest is prefilled. A normal
   turn thus prefills the last generated token, the observation and the generation prompt; when the memory window
   removes older tool images, the cache is cut just before the first removed image and everything after it is
   prefilled again.
3. Positions: M-RoPE positions come from the model's ``get_rope_index`` over the episode's whole sequence (all
   images' and videos' grids) and the slice of the new tokens is passed as ``position_ids``; the new ids and the
   vision features of only the media tokens among them go in through ``mm_encoder_outputs``. Features are computed
   once per distinct image or video and reused while it stays in context.

Batching: the cache holds one row per running episode. Each forward pads the rows' new tokens to a common width
with masked pad slots (before the new tokens, or after them in a row with nothing cached yet, so that no query may
attend to nothing), so a row may hold pad slots between its real tokens; the 2-D attention mask marks them and the
positions ignore them, so a row's logits do not depend on the other rows (verified to 1e-5 in fp32 in the tests).
Episodes that finish leave the batch (``batch_select_indices``).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers import DynamicCache
from transformers.generation.logits_process import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from vr_thinker.rollout.context import Context, ConversationBuilder, Media
from vr_thinker.rollout.loop import RolloutEngine, SamplingConfig, _Episode, suppressed_ids

@dataclass
class _TurnOutput:
    generated_ids: list[int] = field(default_factory=list)
    finish: str = ""
    logprobs: list[float] = field(default_factory=list)
    logits: list[torch.Tensor] = field(default_factory=list)


@dataclass
class _Feed:
    """Tokens one row appends to the cache in one forward (possibly none), their M-RoPE positions [3, n] and the
    vision features of the image and video tokens among them (per kind, in token order)."""

    ids: torch.Tensor
    positions: torch.Tensor
    features: dict[str, list[torch.Tensor]] = field(default_factory=lambda: {"image": [], "video": []})
    deepstack: list[list[torch.Tensor]] = field(default_factory=list)


def _text_feed(ids: Sequence[int], first_position: int) -> _Feed:
    count = len(ids)
    return _Feed(
        torch.tensor(list(ids), dtype=torch.long),
        torch.arange(first_position, first_position + count).view(1, -1).expand(3, -1),
    )


def _common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if len(differ) else n


class HFRolloutEngine(RolloutEngine):
    """Rollouts with a Hugging Face Qwen-VL model (Qwen2-VL, Qwen2.5-VL, Qwen3-VL) on one device.

    cache_reuse: keep the KV cache and the image features across turns (False re-prefills the whole context
        and re-encodes every image each turn, the baseline of ``bench/rollout.py``).
    record_logits: keep the logits of every generated token in the trace (tests, benchmarks).

    Teacher-forced turns are fed as one chunk right after their context's prefill, so replaying a scripted turn
    costs one forward, not one per token.
    """

    def __init__(self, model: Any, processor: Any, cache_reuse: bool = True, record_logits: bool = False):
        self.model = model
        self.processor = processor
        self.cache_reuse = cache_reuse
        self.record_logits = record_logits
        self.tokenizer = processor.tokenizer
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        eos = model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        self.stop_ids = set(eos) | {self.tokenizer.eos_token_id}
        self.suppress_ids = suppressed_ids(self.tokenizer)
        self._builder = ConversationBuilder(processor)
        self._cache: DynamicCache | None = None
        self._mask = torch.zeros(0, 0, dtype=torch.long)  # [rows, cache length]: 1 = real token, 0 = pad slot
        self._rope_args = set(inspect.signature(model.model.get_rope_index).parameters)

    def _begin(self, rows: int) -> None:
        self._cache, self._mask = None, torch.zeros(rows, 0, dtype=torch.long)

    def _end(self) -> None:
        self._cache = None

    def _keep_rows(self, rows: list[int]) -> None:
        if self._cache is not None:
            keep = torch.tensor(rows, dtype=torch.long)
            self._cache.batch_select_indices(keep.to(self.model.device))
            self._mask = self._mask[keep]

    # ------------------------------------------------------------------------------------------------ a turn

    def _turn(self, episodes: list[_Episode], sampling: SamplingConfig) -> None:
        start = time.perf_counter()
        if not self.cache_reuse:
            self._builder.media.clear()
            self._cache, self._mask = None, torch.zeros(len(episodes), 0, dtype=torch.long)
            for ep in episodes:
                ep.cached_keys = np.zeros(0, dtype=np.int64)
        built = self._contexts(episodes)
        kept, next_pos, logits = self._prefill(episodes, built)
        outputs, first_token_at = self._decode(episodes, logits, next_pos, sampling)
        ttft, decode_s = first_token_at - start, time.perf_counter() - first_token_at
        for row, (ep, ctx, out, reused) in enumerate(zip(episodes, built, outputs, kept)):
            logits = torch.stack(out.logits) if out.logits else None
            self._record(ep, ctx, out.generated_ids, out.finish, reused, ttft, decode_s, out.logprobs, logits)
            # Every generated token but the last was fed to the model, so the cache row holds them too.
            ep.cached_keys = np.concatenate([ctx.keys, np.asarray(out.generated_ids[:-1], dtype=np.int64)])
            assert int(self._mask[row].sum()) == len(ep.cached_keys), "cache row and its token record disagree"

    def _prefill(
        self, episodes: list[_Episode], built: list[Context]
    ) -> tuple[list[int], list[int], torch.Tensor]:
        """Crop the cache to the longest prefix every row still shares and prefill the rest.

        Returns per row the context tokens reused from the cache and the next text position, and the logits
        of the next token [rows, vocab]."""
        cache_len = self._mask.shape[1]
        # Physical cache slot up to which each row's cache matches its new context (>= 1 token to prefill).
        cut = []
        for row, (ep, ctx) in enumerate(zip(episodes, built)):
            match = min(_common_prefix(ep.cached_keys, ctx.keys), len(ctx.ids) - 1)
            cut.append(cache_len if match == len(ep.cached_keys) else int(torch.nonzero(self._mask[row])[match, 0]))
        keep_len = min(cut)
        if self._cache is not None and keep_len < cache_len:
            self._cache.crop(keep_len - cache_len)
        self._mask = self._mask[:, :keep_len]
        kept = self._mask.sum(dim=1).tolist()
        if self._cache is None:
            self._cache = DynamicCache(config=self.model.config)

        self._encode_media([item for ctx in built for item in ctx.media])
        feeds, next_pos = [], []
        for ctx, k in zip(built, kept):
            pos = self._positions(ctx)
            feed = _Feed(torch.from_numpy(ctx.ids[k:]), pos[:, k:])
            for item, first in zip(ctx.media, ctx.media_starts):
                skip = max(k - first, 0)  # an item cut by the crop point is fed from its first uncached token
                if skip < item.num_tokens:
                    feed.features[item.kind].append(item.features[skip:])
                    if item.deepstack is not None:
                        feed.deepstack.append([layer[skip:] for layer in item.deepstack])
            feeds.append(feed)
            next_pos.append(int(pos.max()) + 1)
        hidden, starts = self._forward(feeds)
        return kept, next_pos, self._last_logits(hidden, starts, feeds)

    def _decode(
        self, episodes: list[_Episode], logits: torch.Tensor, next_pos: list[int], sampling: SamplingConfig
    ) -> tuple[list[_TurnOutput], float]:
        """Generate or teacher-force one turn for every row; returns the outputs and when the first token came.

        A forced turn of n tokens is complete at step 0; its first n-1 tokens go into the cache with the next
        forward (their logits are the ones the later forced tokens are "chosen" from)."""
        rows = len(episodes)
        forced: list[list[int] | None] = []
        for ep in episodes:
            text = self._forced_text(ep)
            forced.append(None if text is None else self.tokenizer(text, add_special_tokens=False)["input_ids"])
        warpers = self._warpers(sampling, len(episodes[0].turns))
        outputs = [_TurnOutput() for _ in range(rows)]
        done = [False] * rows
        first_token_at = None
        while True:
            feeds = []
            for row in range(rows):
                out = outputs[row]
                if done[row]:
                    feeds.append(_text_feed([], next_pos[row]))
                    continue
                if self.record_logits:
                    out.logits.append(logits[row].float().cpu())
                if forced[row] is not None:
                    out.generated_ids, out.finish = list(forced[row]), "forced"
                else:
                    out.generated_ids.append(self._pick(logits[row], warpers, sampling, episodes[row].generator))
                    out.finish = self._finished(out.generated_ids, sampling)
                out.logprobs.append(float(logits[row].float().log_softmax(-1)[out.generated_ids[len(out.logprobs)]]))
                done[row] = bool(out.finish)
                # Every token but the last of a finished turn is fed (the next turn's prefill starts with it).
                fed = out.generated_ids[:-1] if forced[row] is not None else [] if done[row] else out.generated_ids[-1:]
                feeds.append(_text_feed(fed, next_pos[row]))
                next_pos[row] += len(fed)
            if first_token_at is None:
                first_token_at = time.perf_counter()
            if all(len(f.ids) == 0 for f in feeds):
                break
            hidden, starts = self._forward(feeds)
            logits = self._last_logits(hidden, starts, feeds)
            for row, (feed, start) in enumerate(zip(feeds, starts)):
                if forced[row] is not None and len(feed.ids):  # the logits of forced tokens 1..n-1
                    out = outputs[row]
                    chunk = self.model.lm_head(hidden[row, start : start + len(feed.ids)]).float()
                    chosen = torch.tensor(out.generated_ids[1:], device=chunk.device)[:, None]
                    out.logprobs += chunk.log_softmax(-1).gather(-1, chosen)[:, 0].tolist()
                    if self.record_logits:
                        out.logits += list(chunk.cpu())
        assert first_token_at is not None
        return outputs, first_token_at

    def _finished(self, generated: list[int], sampling: SamplingConfig) -> str:
        if generated[-1] in self.stop_ids:
            return "stop_token"
        if sampling.stop_strings:
            longest = max(len(s) for s in sampling.stop_strings)
            tail = self.tokenizer.decode(generated[-longest:], skip_special_tokens=False)
            if any(tail.endswith(s) for s in sampling.stop_strings):
                return "stop_string"
        return "length" if len(generated) >= sampling.max_new_tokens else ""

    def _warpers(self, sampling: SamplingConfig, turn: int) -> LogitsProcessorList:
        """Sampling filters of assistant turn ``turn`` (all running episodes are at the same turn)."""
        warpers = LogitsProcessorList()
        if sampling.do_sample:
            temperature = sampling.temperature_at(turn)
            if temperature != 1.0:
                warpers.append(TemperatureLogitsWarper(temperature))
            if sampling.top_k:
                warpers.append(TopKLogitsWarper(sampling.top_k))
            if sampling.top_p < 1.0:
                warpers.append(TopPLogitsWarper(sampling.top_p))
        return warpers

    def _pick(
        self, logits: torch.Tensor, warpers: LogitsProcessorList, sampling: SamplingConfig, generator: torch.Generator
    ) -> int:
        scores = logits.float().cpu().clone()[None]
        scores[:, self.suppress_ids] = -float("inf")
        if not sampling.do_sample:
            return int(scores.argmax())
        scores = warpers(None, scores)  # the warpers used here ignore input_ids
        return int(torch.multinomial(scores.softmax(-1), 1, generator=generator))

    # --------------------------------------------------------------------------------------------- model calls

    def _positions(self, ctx: Context) -> torch.Tensor:
        """[3, len] M-RoPE positions of the whole context, as the model computes them without a cache."""
        ids = torch.from_numpy(ctx.ids)[None]
        if not ctx.media:
            return torch.arange(ids.shape[1]).view(1, -1).expand(3, -1)
        builder = self._builder
        types = (ids == builder.image_token_id).int() + 2 * (ids == builder.video_token_id).int()
        kwargs: dict[str, Any] = {"mm_token_type_ids": types}
        if ctx.images:
            kwargs["image_grid_thw"] = torch.stack([item.grid_thw for item in ctx.images])
        if ctx.videos:
            kwargs["video_grid_thw"] = torch.stack([item.grid_thw for item in ctx.videos])
            if "second_per_grid_ts" in self._rope_args:
                kwargs["second_per_grid_ts"] = torch.tensor([item.seconds_per_grid for item in ctx.videos])
        pos, _ = self.model.model.get_rope_index(ids, **kwargs)
        return pos[:, 0].cpu()

    def _encode_media(self, media: list[Media]) -> None:
        """Vision features of the images and videos that have none yet, one batch per kind."""
        device = self.model.device
        for kind in ("image", "video"):
            todo = list({id(m): m for m in media if m.kind == kind and m.features is None}.values())
            if not todo:
                continue
            pixels = torch.cat([m.pixel_values for m in todo]).to(device)
            grids = torch.stack([m.grid_thw for m in todo]).to(device)
            encode = self.model.model.get_image_features if kind == "image" else self.model.model.get_video_features
            out = encode(pixels, grids, return_dict=True)
            stacks = getattr(out, "deepstack_features", None)
            for i, item in enumerate(todo):
                item.features = out.pooler_output[i]
                item.deepstack = [layer[i] for layer in stacks] if stacks is not None else None

    def _forward(self, feeds: list[_Feed]) -> tuple[torch.Tensor, list[int]]:
        """Append each row's feed to the cache, padded to a common width with masked pad slots; returns the last
        hidden states [rows, width, hidden] and where each row's feed starts.

        A row's feed is right-aligned (pads before it) so its last token is the batch's last slot, except in a row
        with nothing cached yet: there it is left-aligned, because a pad slot with no real token before it would
        be a query that may attend to nothing, which some GPU SDPA kernels answer with NaN (and 0 * NaN spreads
        through every later attention over that slot)."""
        rows, width = len(feeds), max(len(f.ids) for f in feeds)
        input_ids = torch.full((rows, width), self.pad_id, dtype=torch.long)
        positions = torch.zeros(3, rows, width, dtype=torch.long)
        new_mask = torch.zeros(rows, width, dtype=torch.long)
        empty = (self._mask.sum(dim=1) == 0).tolist()
        starts = []
        for row, feed in enumerate(feeds):
            n = len(feed.ids)
            start = 0 if empty[row] else width - n
            input_ids[row, start : start + n] = feed.ids
            positions[:, row, start : start + n] = feed.positions
            new_mask[row, start : start + n] = 1
            starts.append(start)
        self._mask = torch.cat([self._mask, new_mask], dim=1)
        kwargs: dict[str, Any] = {}
        encoder_outputs = {}
        for kind in ("image", "video"):
            features = [f for feed in feeds for f in feed.features[kind]]
            if features:
                encoder_outputs[kind] = _EncoderOutput(pooler_output=(torch.cat(features),))
        deepstack = [d for feed in feeds for d in feed.deepstack]
        if deepstack and "image" in encoder_outputs:  # Qwen3-VL (images only: its videos are refused earlier)
            encoder_outputs["image"].deepstack_features = [(torch.cat(layer),) for layer in zip(*deepstack)]
        if encoder_outputs:
            kwargs["mm_encoder_outputs"] = encoder_outputs
        device = self.model.device
        out = self.model.model(
            input_ids=input_ids.to(device),
            attention_mask=self._mask.to(device),
            position_ids=positions.to(device),
            past_key_values=self._cache,
            use_cache=True,
            **kwargs,
        )
        return out.last_hidden_state, starts

    def _last_logits(self, hidden: torch.Tensor, starts: list[int], feeds: list[_Feed]) -> torch.Tensor:
        """Next-token logits [rows, vocab] after each row's last fed token (rows that fed nothing: unused)."""
        last = [start + len(feed.ids) - 1 if len(feed.ids) else 0 for start, feed in zip(starts, feeds)]
        return self.model.lm_head(hidden[torch.arange(len(feeds)), torch.tensor(last, device=hidden.device)])


@dataclass
class _EncoderOutput:
    """Precomputed vision-encoder output in the shape ``mm_encoder_outputs`` reads (pooler per image, deepstack)."""

    pooler_output: tuple[torch.Tensor, ...]
    deepstack_features: list[tuple[torch.Tensor, ...]] | None = None

