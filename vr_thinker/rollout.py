"""Batched multi-turn rollouts of the VR-Thinker tool loop with a KV cache kept across turns.

A rollout drives one :class:`~vr_thinker.env.VideoPairEnv` per episode: render the context the environment
gives, generate one assistant turn, ``env.step(text)``, repeat until the episode is done.

Hugging Face backend (:class:`HFRolloutEngine`): an own prefill/decode loop over the model's ``forward`` with a
``DynamicCache``, not ``generate``, because a turn must feed tokens that differ per episode in length and
start, with explicit M-RoPE positions and vision features for only part of the images, and we want the time to
first token of every turn. Per turn and episode:

1. The context is rendered with the chat template and turned into token ids in which every earlier assistant
   turn is the exact generated ids (not a re-tokenisation of its text), image placeholders expanded to the
   image's token count. The text between assistant turns is tokenised on its own; the template must render
   each assistant turn verbatim at the place where the prefix ends (checked; it holds for the ChatML tool
   template), so the ids always decode to the rendered conversation.
2. The ids are compared with what the KV cache holds (image tokens compare by image content): the longest
   common prefix is kept, the cache is cropped right after it (``DynamicCache.crop``) and only the rest is
   prefilled. A normal turn thus prefills the last generated token, the observation and the generation prompt;
   when the memory window replaces older tool images with a placeholder, the cache is cut just before the
   first dropped image and everything after it is prefilled again.
3. Positions: M-RoPE positions come from the model's ``get_rope_index`` over the episode's whole sequence (all
   images' ``image_grid_thw``) and the slice of the new tokens is passed as ``position_ids``; the new ids and
   the vision features of only the image tokens among them go in through ``mm_encoder_outputs``. Features are
   computed once per distinct image and reused while the image stays in context.

Batching: the cache holds one row per running episode. Each forward pads the rows' new tokens to a common
width with masked pad slots (before the new tokens, or after them in a row with nothing cached yet, so that no
query may attend to nothing), so a row may hold pad slots between its real tokens; the 2-D attention mask marks
them and the positions ignore them, so a row's logits do not depend on the other rows (verified to 1e-5 in fp32
in the tests). Episodes that finish leave the batch (``batch_select_indices``).

Each trace keeps, per assistant turn, the exact windowed context ids and images the model saw and the
generated ids, so a GRPO row is ``context_ids + generated_ids`` with the loss on the generated part.

The vLLM backend (:class:`VLLMRolloutEngine`) has the same interface; vLLM's automatic prefix caching does the
reuse there. It is imported lazily and needs a GPU.
"""

from __future__ import annotations

import hashlib
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import DynamicCache
from transformers.generation.logits_process import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from vr_thinker.env import Message, VideoPairEnv
from vr_thinker.protocol import ParsedTurn
from vr_thinker.rewards import TraceOutcome

_VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")


class RolloutError(RuntimeError):
    """The conversation cannot be turned into token ids that extend the generated ones (template, images)."""


def episode_seed(*keys: object) -> int:
    """A sampling seed for one episode from what identifies it (e.g. base seed, pair id, sample index): the same
    keys give the same seed in any process, batch or run; distinct keys give unrelated seeds. 63 bits, valid for
    ``torch.Generator.manual_seed`` and vLLM."""
    digest = hashlib.sha256(":".join(str(key) for key in keys).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _suppressed_ids(tokenizer: Any) -> list[int]:
    """Vision placeholders are never valid output: an emitted <|image_pad|> would break the next prefill."""
    vocab = tokenizer.get_vocab()
    return [vocab[t] for t in _VISION_TOKENS if t in vocab]


@dataclass(frozen=True)
class SamplingConfig:
    """How each assistant turn is generated.

    max_new_tokens: per assistant turn; a turn that reaches it is passed to the env as truncated.
    do_sample: sample (True) or greedy argmax (False).
    temperature, top_k, top_p: sampling filters (top_k=0 and top_p=1.0 disable them).
    stop_strings: the turn also ends once its text ends with one of these (a finished tool call).
    seed: sampling seed; unless ``rollout`` is given per-episode seeds, episode i samples from its own generator
        seeded with ``seed + i``. Either way an episode's tokens do not depend on which other episodes share the
        batch.
    """

    max_new_tokens: int = 512
    do_sample: bool = True
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    stop_strings: tuple[str, ...] = ("</tool_call>",)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.do_sample and self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature}")
        if not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ValueError(f"need 0 < top_p <= 1 and top_k >= 0, got top_p={self.top_p}, top_k={self.top_k}")


@dataclass
class TurnTrace:
    """One assistant turn of an episode.

    context_ids: the exact tokens the model saw before this turn (memory window applied, images expanded).
    images: the context's images in the order of their tokens; image_grid_thw: their [t, h, w] patch grids.
    generated_ids: the tokens of the turn, model-sampled or teacher-forced, including a final stop token.
    text: the turn's text as given to the environment (decoded ids without a final stop token).
    finish: "stop_token", "stop_string", "length" (hit max_new_tokens) or "forced" (teacher-forced text).
    reused_tokens / prefilled_tokens: context tokens served from the KV cache / computed in this turn's prefill.
    ttft_s: time from the start of the turn (rendering, tokenising, image encoding, prefill) to its first token,
        shared by all episodes of the batch; decode_s: the rest of the turn (batch-wide as well).
    status / info: the environment's answer to this turn (``StepResult.status.value`` and ``.info``).
    parsed: the environment's strict parse of the turn.
    logprobs: log-probability of each generated token under the model's own distribution (temperature 1, no
        top-k/top-p), as GRPO's old-policy term; empty where a backend does not report it.
    logits: [len(generated_ids), vocab] float32 logits the tokens were chosen from, if requested.
    """

    context_ids: list[int]
    images: list[Image.Image]
    image_grid_thw: list[tuple[int, int, int]]
    generated_ids: list[int]
    text: str
    finish: str
    reused_tokens: int
    prefilled_tokens: int
    ttft_s: float
    decode_s: float
    status: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    parsed: ParsedTurn | None = None
    logprobs: list[float] = field(default_factory=list)
    logits: torch.Tensor | None = None

    @property
    def input_ids(self) -> list[int]:
        """The training row of this turn: context then generated tokens."""
        return self.context_ids + self.generated_ids

    @property
    def generated_mask(self) -> list[int]:
        """1 for model-generated tokens of :attr:`input_ids`, 0 for context (system, user, tool, history)."""
        return [0] * len(self.context_ids) + [1] * len(self.generated_ids)


@dataclass
class RolloutTrace:
    """One finished episode: its turns, the tool calls (pool indices shown per call), the final parse and status."""

    turns: list[TurnTrace]
    status: str
    tool_calls: list[list[int]]
    final_parse: ParsedTurn | None
    outcome: TraceOutcome
    wall_s: float

    @property
    def num_generated_tokens(self) -> int:
        return sum(len(t.generated_ids) for t in self.turns)


# --------------------------------------------------------------------------------------------- conversation ids


@dataclass
class _Image:
    """One distinct image (by content): preprocessed pixels, grid, token count and, once needed, its features."""

    uid: int
    image: Image.Image
    pixel_values: torch.Tensor
    grid_thw: torch.Tensor  # [3]
    num_tokens: int
    features: torch.Tensor | None = None  # [num_tokens, hidden]
    deepstack: list[torch.Tensor] | None = None  # Qwen3-VL: one [num_tokens, hidden] per deepstack layer


@dataclass
class _Context:
    """Token ids of one rendered context. keys: ids for text, ``-1 - uid`` for the tokens of image ``uid`` (so a
    prefix comparison also compares image content); images with the index of their first token."""

    ids: np.ndarray
    keys: np.ndarray
    images: list[_Image]
    image_starts: list[int]


def _image_key(image: Image.Image) -> bytes:
    digest = hashlib.blake2b(image.tobytes(), digest_size=16)
    digest.update(f"{image.mode}{image.size}".encode())
    return digest.digest()


def _message_images(messages: Sequence[Message]) -> list[Image.Image]:
    """Images in the order the chat template renders them (content order of user and tool turns)."""
    images = []
    for message in messages:
        if message["role"] not in ("user", "tool") or isinstance(message["content"], str):
            continue
        for part in message["content"]:
            if part.get("type") == "image" or "image" in part:
                image = part["image"]
                if not isinstance(image, Image.Image):
                    raise RolloutError(f"image parts must hold PIL images, got {type(image).__name__}")
                images.append(image)
    return images


class _ConversationBuilder:
    """Renders environment contexts into token ids that keep earlier generated turns as their exact ids."""

    def __init__(self, processor: Any):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.image_token = processor.image_token
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token = getattr(processor, "video_token", "<|video_pad|>")
        self.merge_size = processor.image_processor.merge_size
        self.images: dict[bytes, _Image] = {}

    def _image(self, image: Image.Image) -> _Image:
        key = _image_key(image)
        entry = self.images.get(key)
        if entry is None:
            out = self.processor.image_processor(images=[image.convert("RGB")], return_tensors="pt")
            grid = out["image_grid_thw"][0]
            entry = _Image(
                uid=len(self.images),
                image=image,
                pixel_values=out["pixel_values"],
                grid_thw=grid,
                num_tokens=int(grid.prod()) // self.merge_size**2,
            )
            self.images[key] = entry
        return entry

    def render(self, messages: Sequence[Message], tools: Sequence[dict], generation_prompt: bool = True) -> str:
        return self.processor.apply_chat_template(
            list(messages), tools=list(tools), add_generation_prompt=generation_prompt, tokenize=False
        )

    def build(self, messages: Sequence[Message], tools: Sequence[dict], generated: Sequence[list[int]]) -> _Context:
        """Ids of ``messages`` + generation prompt where assistant turn k is ``generated[k]`` verbatim."""
        text = self.render(messages, tools)
        assistant_at = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        if len(assistant_at) != len(generated):
            raise RolloutError(f"{len(assistant_at)} assistant turns in the context but {len(generated)} generated")
        pieces: list[tuple[str, list[int] | None]] = []  # (context text, None) or ("", generated ids)
        pos = 0
        for index, gen in zip(assistant_at, generated):
            start = len(self.render(messages[:index], tools))
            gen_text = self.tokenizer.decode(gen, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            if start < pos or not text.startswith(gen_text, start):
                raise RolloutError(
                    f"the chat template does not render assistant message {index} verbatim after the rendered "
                    "prefix; token ids cannot extend the generated ones"
                )
            pieces += [(text[pos:start], None), ("", gen)]
            pos = start + len(gen_text)
        pieces.append((text[pos:], None))

        images = [self._image(image) for image in _message_images(messages)]
        # Split into text chunks, image slots and generated ids; all chunks go through the tokenizer at once.
        parts: list[str | _Image | list[int]] = []
        queue = iter(images)
        for piece, gen in pieces:
            if gen is not None:
                parts.append(gen)
                continue
            if self.video_token in piece:
                raise RolloutError("video inputs are not supported in rollouts; pass frames as images")
            for j, chunk in enumerate(piece.split(self.image_token)):
                if j > 0:
                    image = next(queue, None)
                    if image is None:
                        raise RolloutError("the rendered context has more image placeholders than images")
                    parts.append(image)
                if chunk:
                    parts.append(chunk)
        if next(queue, None) is not None:
            raise RolloutError("the messages hold more images than the rendered context has placeholders")
        chunks = [p for p in parts if isinstance(p, str)]
        encoded = iter(self.tokenizer(chunks, add_special_tokens=False)["input_ids"] if chunks else [])
        ids: list[int] = []
        keys: list[int] = []
        starts: list[int] = []
        for part in parts:
            if isinstance(part, _Image):
                starts.append(len(ids))
                ids += [self.image_token_id] * part.num_tokens
                keys += [-1 - part.uid] * part.num_tokens
            else:
                part_ids = next(encoded) if isinstance(part, str) else part
                ids += part_ids
                keys += part_ids
        return _Context(np.asarray(ids, dtype=np.int64), np.asarray(keys, dtype=np.int64), images, starts)


# ---------------------------------------------------------------------------------------------------- episodes


@dataclass
class _Episode:
    """Per-episode state while it runs. cached_keys: keys of the real tokens in this row of the KV cache."""

    index: int
    env: VideoPairEnv
    forced: Sequence[str | None]
    seed: int
    generator: torch.Generator
    generated: list[list[int]] = field(default_factory=list)  # per assistant turn, as it appears in later contexts
    turns: list[TurnTrace] = field(default_factory=list)
    tool_calls: list[list[int]] = field(default_factory=list)
    cached_keys: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    started: float = field(default_factory=time.perf_counter)

    def trace(self) -> RolloutTrace:
        env = self.env
        return RolloutTrace(
            turns=self.turns,
            status=env.status.value if env.status is not None else "",
            tool_calls=self.tool_calls,
            final_parse=env.turns[-1].parsed if env.turns else None,
            outcome=env.outcome(),
            wall_s=time.perf_counter() - self.started,
        )


class RolloutEngine(ABC):
    """Runs episodes to the end, all running episodes advancing one assistant turn per step.

    ``forced[i][t]``, when given and not None, is teacher-forced as turn t of episode i instead of generating;
    its context is still prefilled and timed (scripted episodes, replaying traces). ``seeds[i]``, when given, is
    episode i's sampling seed (else ``sampling.seed + i``); an episode samples from its own generator, so with the
    same seed it gives the same tokens alone or in any batch (:func:`episode_seed` derives seeds from pair ids and
    sample indices). Backends implement :meth:`_turn` and may hook :meth:`_begin` / :meth:`_end`. ``rollout``
    resets the envs itself.
    """

    _builder: _ConversationBuilder  # set by each backend
    stop_ids: set[int]  # token ids that end a turn

    @torch.inference_mode()
    def rollout(
        self,
        envs: Sequence[VideoPairEnv],
        sampling: SamplingConfig = SamplingConfig(),
        forced: Sequence[Sequence[str | None]] | None = None,
        seeds: Sequence[int] | None = None,
    ) -> list[RolloutTrace]:
        if forced is not None and len(forced) != len(envs):
            raise ValueError(f"forced has {len(forced)} entries for {len(envs)} envs")
        if seeds is not None and len(seeds) != len(envs):
            raise ValueError(f"seeds has {len(seeds)} entries for {len(envs)} envs")
        episodes = []
        for i, env in enumerate(envs):
            env.reset()
            seed = int(seeds[i]) if seeds is not None else sampling.seed + i
            generator = torch.Generator(device="cpu").manual_seed(seed)
            episodes.append(_Episode(i, env, forced[i] if forced is not None else (), seed, generator))
        self._builder.images.clear()
        self._begin(len(envs))
        try:
            return self._run(episodes, sampling)
        finally:
            self._end()
            self._builder.images.clear()  # pixels and vision features of this rollout's images

    def _run(self, episodes: list[_Episode], sampling: SamplingConfig) -> list[RolloutTrace]:
        traces: list[RolloutTrace | None] = [None] * len(episodes)
        running = episodes
        while running:
            self._turn(running, sampling)
            still = []
            for row, ep in enumerate(running):
                turn = ep.turns[-1]
                result = ep.env.step(turn.text, truncated=turn.finish == "length")
                turn.status, turn.info, turn.parsed = result.status.value, result.info, ep.env.turns[-1].parsed
                if result.info.get("frames"):
                    ep.tool_calls.append(list(result.info["frames"]))
                if result.done:
                    traces[ep.index] = ep.trace()
                else:
                    still.append(row)
            if len(still) < len(running):
                self._keep_rows(still)
            running = [running[row] for row in still]
        return [t for t in traces if t is not None]

    @abstractmethod
    def _turn(self, episodes: list[_Episode], sampling: SamplingConfig) -> None:
        """Generate the next assistant turn of every episode and :meth:`_record` it."""

    def _begin(self, rows: int) -> None:
        """A rollout of ``rows`` episodes starts."""

    def _end(self) -> None:
        """The rollout ended (also after an error)."""

    def _contexts(self, episodes: list[_Episode]) -> list[_Context]:
        """Every episode's current context as token ids that extend its generated turns."""
        return [self._builder.build(ep.env.messages(), ep.env.tools, ep.generated) for ep in episodes]

    def _keep_rows(self, rows: list[int]) -> None:
        """Episodes at these positions of the running list go on; the others just finished."""

    @staticmethod
    def _forced_text(ep: _Episode) -> str | None:
        text = ep.forced[len(ep.turns)] if len(ep.turns) < len(ep.forced) else None
        if text is not None and not text:
            raise ValueError(f"forced turn {len(ep.turns)} of episode {ep.index} is empty")
        return text

    def _record(
        self,
        ep: _Episode,
        ctx: _Context,
        generated: list[int],
        finish: str,
        reused: int,
        ttft_s: float,
        decode_s: float,
        logprobs: list[float] | None = None,
        logits: torch.Tensor | None = None,
    ) -> None:
        # A stop token is replaced by the template's own end-of-turn marker in later contexts.
        stopped = finish == "stop_token" and bool(generated) and generated[-1] in self.stop_ids
        in_context = generated[:-1] if stopped else generated
        ep.generated.append(in_context)
        tokenizer = self._builder.tokenizer
        ep.turns.append(
            TurnTrace(
                context_ids=ctx.ids.tolist(),
                images=[image.image for image in ctx.images],
                image_grid_thw=[tuple(int(x) for x in image.grid_thw) for image in ctx.images],
                generated_ids=generated,
                text=tokenizer.decode(in_context, skip_special_tokens=False, clean_up_tokenization_spaces=False),
                finish=finish,
                reused_tokens=reused,
                prefilled_tokens=len(ctx.ids) - reused,
                ttft_s=ttft_s,
                decode_s=decode_s,
                logprobs=logprobs or [],
                logits=logits,
            )
        )


# ------------------------------------------------------------------------------------------------------ HF engine


@dataclass
class _TurnOutput:
    generated_ids: list[int] = field(default_factory=list)
    finish: str = ""
    logprobs: list[float] = field(default_factory=list)
    logits: list[torch.Tensor] = field(default_factory=list)


@dataclass
class _Feed:
    """Tokens one row appends to the cache in one forward (possibly none), their M-RoPE positions [3, n] and the
    vision features of the image tokens among them."""

    ids: torch.Tensor
    positions: torch.Tensor
    features: list[torch.Tensor] = field(default_factory=list)
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
        self.suppress_ids = _suppressed_ids(self.tokenizer)
        self._builder = _ConversationBuilder(processor)
        self._cache: DynamicCache | None = None
        self._mask = torch.zeros(0, 0, dtype=torch.long)  # [rows, cache length]: 1 = real token, 0 = pad slot

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
            self._builder.images.clear()
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
        self, episodes: list[_Episode], built: list[_Context]
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

        self._encode_images([image for ctx in built for image in ctx.images])
        feeds, next_pos = [], []
        for ctx, k in zip(built, kept):
            pos = self._positions(ctx)
            feed = _Feed(torch.from_numpy(ctx.ids[k:]), pos[:, k:])
            for image, first in zip(ctx.images, ctx.image_starts):
                skip = max(k - first, 0)  # an image cut by the crop point is fed from its first uncached token
                if skip < image.num_tokens:
                    feed.features.append(image.features[skip:])
                    if image.deepstack is not None:
                        feed.deepstack.append([layer[skip:] for layer in image.deepstack])
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
        warpers = self._warpers(sampling)
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

    def _warpers(self, sampling: SamplingConfig) -> LogitsProcessorList:
        warpers = LogitsProcessorList()
        if sampling.do_sample:
            if sampling.temperature != 1.0:
                warpers.append(TemperatureLogitsWarper(sampling.temperature))
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

    def _positions(self, ctx: _Context) -> torch.Tensor:
        """[3, len] M-RoPE positions of the whole context, as the model computes them without a cache."""
        ids = torch.from_numpy(ctx.ids)[None]
        if not ctx.images:
            return torch.arange(ids.shape[1]).view(1, -1).expand(3, -1)
        types = (ids == self._builder.image_token_id).int()
        grids = torch.stack([image.grid_thw for image in ctx.images])
        pos, _ = self.model.model.get_rope_index(ids, mm_token_type_ids=types, image_grid_thw=grids)
        return pos[:, 0].cpu()

    def _encode_images(self, images: list[_Image]) -> None:
        """Vision features of the images that have none yet, in one batch."""
        todo = list({id(image): image for image in images if image.features is None}.values())
        if not todo:
            return
        device = self.model.device
        pixels = torch.cat([image.pixel_values for image in todo]).to(device)
        grids = torch.stack([image.grid_thw for image in todo]).to(device)
        out = self.model.model.get_image_features(pixels, grids, return_dict=True)
        stacks = getattr(out, "deepstack_features", None)
        for i, image in enumerate(todo):
            image.features = out.pooler_output[i]
            image.deepstack = [layer[i] for layer in stacks] if stacks is not None else None

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
        features = [f for feed in feeds for f in feed.features]
        if features:
            encoded = _EncoderOutput(pooler_output=(torch.cat(features),))
            deepstack = [d for feed in feeds for d in feed.deepstack]
            if deepstack:
                encoded.deepstack_features = [(torch.cat(layer),) for layer in zip(*deepstack)]
            kwargs["mm_encoder_outputs"] = {"image": encoded}
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


# -------------------------------------------------------------------------------------------------- vLLM engine


class VLLMRolloutEngine(RolloutEngine):
    """Rollouts with vLLM (GPU). Contexts are built exactly as for :class:`HFRolloutEngine` (earlier turns as
    their generated ids) and sent as token prompts with one ``<|image_pad|>`` per image, which vLLM expands;
    its automatic prefix caching reuses the KV blocks of the shared prefix, so no cache handling happens here.

    llm: a ``vllm.LLM`` (built by the caller, e.g. colocated with training) or a model directory, in which case
        one is built with prefix caching on and ``llm_kwargs``.
    processor: the model's processor with a tool-capable chat template (``ensure_tool_chat_template``).

    Trace fields: ``reused_tokens`` is vLLM's count of prefix-cache hits where reported (else 0); ``ttft_s`` is
    the request's first-token latency where vLLM reports it, else the time until the turn's batch returned;
    logprobs come from vLLM (none for forced turns); logits are not recorded. A teacher-forced turn sends its
    context with ``max_tokens=1`` so the prefill still happens (and lands in the prefix cache) and is timed. Each
    turn samples with a seed derived from its episode's seed and the turn index.
    """

    def __init__(self, llm: Any, processor: Any, **llm_kwargs: Any):
        import vllm  # lazy: optional, GPU only

        self._vllm = vllm
        if not isinstance(llm, vllm.LLM):
            llm = vllm.LLM(model=str(llm), enable_prefix_caching=True, **llm_kwargs)
        self.llm = llm
        self._builder = _ConversationBuilder(processor)
        eos = self.llm.get_tokenizer().eos_token_id
        self.stop_ids = {eos} if eos is not None else set()
        self.suppress_ids = _suppressed_ids(processor.tokenizer)

    def _params(self, sampling: SamplingConfig, seed: int, forced: bool) -> Any:
        return self._vllm.SamplingParams(
            max_tokens=1 if forced else sampling.max_new_tokens,
            temperature=sampling.temperature if sampling.do_sample else 0.0,
            top_p=sampling.top_p,
            top_k=sampling.top_k if sampling.top_k > 0 else -1,
            stop=list(sampling.stop_strings),
            include_stop_str_in_output=True,
            stop_token_ids=sorted(self.stop_ids),
            logit_bias={token: -100.0 for token in self.suppress_ids},
            skip_special_tokens=False,
            seed=seed,
            logprobs=None if forced else 0,  # 0: only the chosen token's
        )

    def _turn(self, episodes: list[_Episode], sampling: SamplingConfig) -> None:
        start = time.perf_counter()
        built = self._contexts(episodes)
        forced = [self._forced_text(ep) for ep in episodes]
        prompts, params = [], []
        for ep, ctx, text in zip(episodes, built, forced):
            prompt: dict[str, Any] = {"prompt_token_ids": _collapse_images(ctx, self._builder.image_token_id)}
            if ctx.images:
                prompt["multi_modal_data"] = {"image": [image.image for image in ctx.images]}
            prompts.append(prompt)
            # One seed per episode and turn: reproducible, independent of the batch.
            params.append(self._params(sampling, episode_seed(ep.seed, len(ep.turns)), text is not None))
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        returned = time.perf_counter()
        for ep, ctx, text, out in zip(episodes, built, forced, outputs):
            completion = out.outputs[0]
            logprobs: list[float] = []
            if text is not None:
                generated, finish = self._builder.tokenizer(text, add_special_tokens=False)["input_ids"], "forced"
            else:
                generated = list(completion.token_ids)
                logprobs = [step[token].logprob for step, token in zip(completion.logprobs or [], generated)]
                if completion.finish_reason == "length":
                    finish = "length"
                elif isinstance(completion.stop_reason, str):
                    finish = "stop_string"
                else:
                    finish = "stop_token"
            metrics = getattr(out, "metrics", None)
            first = getattr(metrics, "first_token_time", None)
            arrival = getattr(metrics, "arrival_time", None)
            ttft = first - arrival if first is not None and arrival is not None else returned - start
            reused = int(getattr(out, "num_cached_tokens", 0) or 0)
            self._record(ep, ctx, generated, finish, reused, ttft, max(returned - start - ttft, 0.0), logprobs)


def _collapse_images(ctx: _Context, image_token_id: int) -> list[int]:
    """Context ids with each image's run of placeholder tokens collapsed to one (vLLM expands them itself)."""
    ids = ctx.ids.tolist()
    out: list[int] = []
    pos = 0
    for image, first in zip(ctx.images, ctx.image_starts):
        out += ids[pos:first] + [image_token_id]
        pos = first + image.num_tokens
    return out + ids[pos:]
