"""Rollouts with vLLM (GPU): the same interface as the HF engine; vLLM's automatic prefix caching does the reuse."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from vr_thinker.rollout.context import Context, ConversationBuilder
from vr_thinker.rollout.loop import RolloutEngine, SamplingConfig, _Episode, episode_seed, suppressed_ids

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
        self._builder = ConversationBuilder(processor)
        eos = self.llm.get_tokenizer().eos_token_id
        self.stop_ids = {eos} if eos is not None else set()
        self.suppress_ids = suppressed_ids(processor.tokenizer)

    def _params(self, sampling: SamplingConfig, seed: int, forced: bool, turn: int) -> Any:
        return self._vllm.SamplingParams(
            max_tokens=1 if forced else sampling.max_new_tokens,
            temperature=sampling.temperature_at(turn) if sampling.do_sample else 0.0,
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
            prompt: dict[str, Any] = {"prompt_token_ids": _collapse_media(ctx, self._builder)}
            data: dict[str, Any] = {}
            if ctx.images:
                data["image"] = [image.image for image in ctx.images]
            if ctx.videos:
                data["video"] = [np.stack([np.asarray(f.convert("RGB")) for f in v.frames]) for v in ctx.videos]
                # vLLM's Qwen2.5-VL processor derives the temporal positions from the frame rate.
                temporal = self._builder.processor.video_processor.temporal_patch_size
                prompt["mm_processor_kwargs"] = {"fps": temporal / ctx.videos[0].seconds_per_grid}
            if data:
                prompt["multi_modal_data"] = data
            prompts.append(prompt)
            # One seed per episode and turn: reproducible, independent of the batch.
            params.append(self._params(sampling, episode_seed(ep.seed, len(ep.turns)), text is not None,
                                       len(ep.turns)))
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


def _collapse_media(ctx: Context, builder: ConversationBuilder) -> list[int]:
    """Context ids with each image's and video's run of placeholder tokens collapsed to one (vLLM expands them)."""
    ids = ctx.ids.tolist()
    out: list[int] = []
    pos = 0
    for item, first in zip(ctx.media, ctx.media_starts):
        out += ids[pos:first] + [builder.image_token_id if item.kind == "image" else builder.video_token_id]
        pos = first + item.num_tokens
    return out + ids[pos:]
