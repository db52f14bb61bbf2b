"""The rollout loop: run VR-Thinker episodes to the end, every running episode advancing one assistant turn per
step, and record per turn the exact tokens and media the model saw (what GRPO trains on).

A rollout drives one :class:`~vr_thinker.env.VideoPairEnv` per episode: render the context the environment gives
(:mod:`vr_thinker.rollout.context`), generate one assistant turn with a backend (:mod:`vr_thinker.rollout.hf_engine`:
Hugging Face with a KV cache kept across turns; :mod:`vr_thinker.rollout.vllm_engine`: vLLM), ``env.step(text)``,
repeat until the episode is done. Each trace keeps, per assistant turn, the windowed context ids and media the model
saw and the generated ids, so a GRPO row is ``context_ids + generated_ids`` with the loss on the generated part.
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

from vr_thinker.env import VideoPairEnv
from vr_thinker.protocol import TurnCheck
from vr_thinker.rewards import TraceOutcome
from vr_thinker.rollout.context import Context, ConversationBuilder

_VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")

def episode_seed(*keys: object) -> int:
    """A sampling seed for one episode from what identifies it (e.g. base seed, pair id, sample index): the same
    keys give the same seed in any process, batch or run; distinct keys give unrelated seeds. 63 bits, valid for
    ``torch.Generator.manual_seed`` and vLLM."""
    digest = hashlib.sha256(":".join(str(key) for key in keys).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def suppressed_ids(tokenizer: Any) -> list[int]:
    """Vision placeholders are never valid output: an emitted <|image_pad|> would break the next prefill."""
    vocab = tokenizer.get_vocab()
    return [vocab[t] for t in _VISION_TOKENS if t in vocab]


@dataclass(frozen=True)
class SamplingConfig:
    """How each assistant turn is generated.

    max_new_tokens: per assistant turn; a turn that reaches it is passed to the env as truncated.
    do_sample: sample (True) or greedy argmax (False).
    temperature, top_k, top_p: sampling filters (top_k=0 and top_p=1.0 disable them).
    later_temperature: temperature of every assistant turn after the first (None: ``temperature``); the official
        VR-Thinker rollouts sample the first turn at 1.0 and later ones at 0.9.
    stop_strings: the turn also ends once its text ends with one of these (a finished tool call).
    seed: sampling seed; unless ``rollout`` is given per-episode seeds, episode i samples from its own generator
        seeded with ``seed + i``. Either way an episode's tokens do not depend on which other episodes share the
        batch.
    """

    max_new_tokens: int = 512
    do_sample: bool = True
    temperature: float = 1.0
    later_temperature: float | None = None
    top_k: int = 0
    top_p: float = 1.0
    stop_strings: tuple[str, ...] = ("</tool_call>",)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.do_sample and (self.temperature <= 0 or (self.later_temperature or 1.0) <= 0):
            raise ValueError(f"temperatures must be > 0 when sampling, got {self.temperature}, {self.later_temperature}")
        if not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ValueError(f"need 0 < top_p <= 1 and top_k >= 0, got top_p={self.top_p}, top_k={self.top_k}")


    def temperature_at(self, turn: int) -> float:
        """Sampling temperature of assistant turn ``turn`` (0-based)."""
        return self.temperature if turn == 0 or self.later_temperature is None else self.later_temperature


@dataclass
class TurnTrace:
    """One assistant turn of an episode.

    context_ids: the exact tokens the model saw before this turn (memory window applied, images expanded).
    images: the context's images in the order of their tokens; image_grid_thw: their [t, h, w] patch grids.
    videos / video_grid_thw / video_seconds: the context's videos (frames), their grids and seconds per grid step.
    generated_ids: the tokens of the turn, model-sampled or teacher-forced, including a final stop token.
    text: the turn's text as given to the environment (decoded ids without a final stop token).
    finish: "stop_token", "stop_string", "length" (hit max_new_tokens) or "forced" (teacher-forced text).
    reused_tokens / prefilled_tokens: context tokens served from the KV cache / computed in this turn's prefill.
    ttft_s: time from the start of the turn (rendering, tokenising, image encoding, prefill) to its first token,
        shared by all episodes of the batch; decode_s: the rest of the turn (batch-wide as well).
    status / info: the environment's answer to this turn (``StepResult.status.value`` and ``.info``).
    check: the protocol's reading of the turn (:func:`vr_thinker.protocol.check_turn`).
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
    videos: list[list[Image.Image]] = field(default_factory=list)
    video_grid_thw: list[tuple[int, int, int]] = field(default_factory=list)
    video_seconds: list[float] = field(default_factory=list)
    status: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    check: TurnCheck | None = None
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
    """One finished episode: its turns, the tool calls (frame numbers shown per call the tool answered, empty for a
    notice or an error), the last turn's reading and the status."""

    turns: list[TurnTrace]
    status: str
    tool_calls: list[list[int]]
    final_check: TurnCheck | None
    outcome: TraceOutcome
    wall_s: float

    @property
    def num_generated_tokens(self) -> int:
        return sum(len(t.generated_ids) for t in self.turns)



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
            final_check=env.turns[-1].check if env.turns else None,
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

    _builder: ConversationBuilder  # set by each backend
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
        self._builder.media.clear()
        self._begin(len(envs))
        try:
            return self._run(episodes, sampling)
        finally:
            self._end()
            self._builder.media.clear()  # pixels and vision features of this rollout's images

    def _run(self, episodes: list[_Episode], sampling: SamplingConfig) -> list[RolloutTrace]:
        traces: list[RolloutTrace | None] = [None] * len(episodes)
        running = episodes
        while running:
            self._turn(running, sampling)
            still = []
            for row, ep in enumerate(running):
                turn = ep.turns[-1]
                result = ep.env.step(turn.text, truncated=turn.finish == "length",
                                     context_tokens=len(turn.context_ids), output_tokens=len(turn.generated_ids))
                turn.status, turn.info, turn.check = result.status.value, result.info, ep.env.turns[-1].check
                if ep.env.turns[-1].tool is not None:  # every call the tool answered (no frames for a notice)
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

    def _contexts(self, episodes: list[_Episode]) -> list[Context]:
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
        ctx: Context,
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
                videos=[list(video.frames) for video in ctx.videos],
                video_grid_thw=[tuple(int(x) for x in video.grid_thw) for video in ctx.videos],
                video_seconds=[video.seconds_per_grid for video in ctx.videos],
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
