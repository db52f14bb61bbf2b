"""Using a `yes_token` reward model: batched P(yes) for many candidates, reasoning, position bias.

`YesTokenScorer.score(prompt, candidates)` asks the model's question about every candidate and
returns P(yes) per candidate. Candidates are ordered by size, cut into batches of `batch_size`,
padded (left by default: the read position is the last column) and scored with ONE forward per
batch; the results are put back in the input order.

Reasoning modes (set in the head's config):
- "verdict_first": the reward is read at the verdict, the first answer token, so it needs no
  generation; `explain` lets the model write its verdict and rationale after it.
- "rationale_first": the model first writes its rationale (`generate`, greedy); the reward is then
  read right after "<rationale>\\n<verdict_prefix>" in a second, batched forward.

Position bias (pairwise form): a candidate X judged against a reference R is asked in both orders:
`p_forward = P(yes | R first, X second)` ("X is better") and `p_swapped = P(yes | X first,
R second)` ("R is better"). A judge without position bias gives `p_forward + p_swapped = 1`; the
pair's preferred item flips with the order when both probabilities are on the same side of 0.5.
`order_averaged` (and `score(..., average_orders=True)`) scores X by `(p_forward + 1 - p_swapped) / 2`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from mmreward.collate import CollateConfig
from mmreward.data.dataset import PreferenceExample, SideMedia, media_side
from mmreward.data.media import MediaConfig, VideoClip
from mmreward.heads.yes_token.head import YesTokenHead
from mmreward.heads.yes_token.prompts import VerdictQuery, encode_queries, pair_queries
from mmreward.model import RewardModel
from mmreward.reward_fn import RewardFunction, RewardFunctionError, column, media_columns, prompt_text


@dataclass
class PositionBias:
    """Order sensitivity of a pairwise judge over n (candidate, reference) pairs.

    flip_rate: fraction of pairs whose preferred item changes when the order is swapped.
    second_rate: fraction of all 2n verdicts that say "the second is better" (0.5 = no preference
        for a position; 1.0 = always the second).
    n: number of pairs.
    """

    flip_rate: float
    second_rate: float
    n: int


def position_bias(p_forward: Sequence[float] | torch.Tensor, p_swapped: Sequence[float] | torch.Tensor) -> PositionBias:
    """`PositionBias` from both orders' P(yes) (see the module docstring); a verdict is yes when P > 0.5."""
    forward = np.asarray(torch.as_tensor(p_forward, dtype=torch.float64).cpu(), dtype=np.float64).reshape(-1)
    swapped = np.asarray(torch.as_tensor(p_swapped, dtype=torch.float64).cpu(), dtype=np.float64).reshape(-1)
    if forward.shape != swapped.shape or forward.size == 0:
        raise ValueError(f"need two equally long non-empty score lists, got {forward.size} and {swapped.size}")
    yes_forward, yes_swapped = forward > 0.5, swapped > 0.5
    return PositionBias(
        flip_rate=float(np.mean(yes_forward == yes_swapped)),
        second_rate=float(np.mean(np.concatenate([yes_forward, yes_swapped]))),
        n=int(forward.size),
    )


def order_averaged(p_forward: torch.Tensor, p_swapped: torch.Tensor) -> torch.Tensor:
    """P(candidate better), averaged over both presentation orders."""
    return (p_forward + (1.0 - p_swapped)) / 2.0


def _side_cost(side: SideMedia | None) -> int:
    if side is None:
        return 0
    pixels = sum(img.width * img.height for img in side.images)
    if side.video is not None:
        pixels += int(np.prod(side.video.frames.shape[:3]))
    return pixels + len(side.response or "")


class YesTokenScorer:
    """Scores candidates with a `RewardModel` whose head is `yes_token`.

    batch_size: queries per forward.
    padding_side: of the scoring batches ("left": read position = last column; generation needs left).
    max_new_tokens: length limit of generated rationales / explanations.
    collate: system prompt, prompt template and max_length (its padding_side is replaced).
    """

    def __init__(self, model: RewardModel, batch_size: int = 16, padding_side: str = "left",
                 max_new_tokens: int = 64, collate: CollateConfig | None = None):
        if not isinstance(model.head, YesTokenHead):
            raise TypeError(f"YesTokenScorer needs a model with the yes_token head, got {type(model.head).__name__}")
        if model.processor is None:
            raise ValueError("YesTokenScorer: the model has no processor to encode inputs")
        if batch_size < 1 or max_new_tokens < 1:
            raise ValueError(f"batch_size and max_new_tokens must be >= 1, got {batch_size}, {max_new_tokens}")
        self.model = model
        self.config = model.head.cfg
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.collate = replace(collate or CollateConfig(), padding_side=padding_side)

    # ------------------------------------------------------------------------------ low level

    def _device_inputs(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        param = next(self.model.parameters())
        return {k: (v.to(param.device, param.dtype) if torch.is_floating_point(v) else v.to(param.device))
                for k, v in inputs.items()}

    def _batches(self, queries: Sequence[VerdictQuery]) -> list[list[int]]:
        # Similar sizes together, so a batch pads little; indices let results go back in input order.
        costs = [_side_cost(q.candidate) + _side_cost(q.reference) for q in queries]
        order = sorted(range(len(queries)), key=costs.__getitem__)
        return [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]

    @torch.no_grad()
    def generate(self, queries: Sequence[VerdictQuery]) -> list[str]:
        """The model's greedy answer to each query (from the generation prompt), special tokens removed."""
        texts: list[str] = [""] * len(queries)
        tokenizer = self.model.processor.tokenizer
        left = replace(self.collate, padding_side="left")  # new tokens are appended after the last column
        for batch in self._batches(queries):
            chunk = [queries[i] for i in batch]
            inputs = self._device_inputs(encode_queries(self.model.processor, chunk, self.config, left,
                                                        for_generation=True))
            out = self.model.backbone.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                                               pad_token_id=tokenizer.pad_token_id)
            new = out[:, inputs["input_ids"].shape[1]:]
            for i, row in zip(batch, tokenizer.batch_decode(new, skip_special_tokens=True)):
                texts[i] = row
        return texts

    def rationale(self, text: str) -> str:
        """The rationale of a generated "rationale_first" answer: the text before the verdict prefix."""
        return text.split(self.config.verdict_prefix, 1)[0].strip()

    @torch.no_grad()
    def verdict_probs(self, queries: Sequence[VerdictQuery]) -> torch.Tensor:
        """P(yes) per query `[n]` (float32, CPU), one forward per batch.

        In "rationale_first" mode, queries without a rationale first get one generated.
        """
        if not queries:
            return torch.zeros(0)
        queries = list(queries)
        if self.config.reasoning == "rationale_first":
            missing = [i for i, q in enumerate(queries) if q.rationale is None]
            if missing:
                generated = self.generate([queries[i] for i in missing])
                for i, text in zip(missing, generated):
                    queries[i] = replace(queries[i], rationale=self.rationale(text))
        probs = torch.empty(len(queries))
        for batch in self._batches(queries):
            inputs = encode_queries(self.model.processor, [queries[i] for i in batch], self.config, self.collate)
            probs[batch] = self.model.score(self._device_inputs(inputs))[:, 0].float().cpu()
        return probs

    # ------------------------------------------------------------------------------ candidates

    def _queries(self, prompt: str, candidates: Sequence[SideMedia], reference: SideMedia | None,
                 swapped: bool = False) -> list[VerdictQuery]:
        text = self.collate.prompt_template.format(prompt=prompt)
        if self.config.form == "pointwise":
            if reference is not None:
                raise ValueError("the pointwise yes_token form takes no reference (the head's form is 'pointwise')")
            return [VerdictQuery(text, c, id=f"candidate {i}") for i, c in enumerate(candidates)]
        if reference is None:
            raise ValueError("the pairwise yes_token form needs a reference to compare the candidates with")
        if swapped:  # the reference is asked about, with the candidate shown first
            return [VerdictQuery(text, reference, reference=c, id=f"candidate {i} (swapped)")
                    for i, c in enumerate(candidates)]
        return [VerdictQuery(text, c, reference=reference, id=f"candidate {i}") for i, c in enumerate(candidates)]

    def score(self, prompt: str, candidates: Sequence[SideMedia], reference: SideMedia | None = None,
              average_orders: bool = False) -> torch.Tensor:
        """Rewards `[n]` of the candidates for one prompt: P(yes) (pairwise: P(candidate better than
        the reference); with `average_orders`, averaged over both presentation orders)."""
        if average_orders:
            forward, swapped = self.score_both_orders(prompt, candidates, reference)
            return order_averaged(forward, swapped)
        return self.verdict_probs(self._queries(prompt, candidates, reference))

    def score_both_orders(self, prompt: str, candidates: Sequence[SideMedia],
                          reference: SideMedia | None) -> tuple[torch.Tensor, torch.Tensor]:
        """`(p_forward, p_swapped)` `[n]` each (module docstring), scored together in shared batches."""
        if self.config.form != "pairwise":
            raise ValueError("both orders exist only for the pairwise yes_token form")
        queries = [*self._queries(prompt, candidates, reference),
                   *self._queries(prompt, candidates, reference, swapped=True)]
        probs = self.verdict_probs(queries)
        return probs[: len(candidates)], probs[len(candidates):]

    def explain(self, prompt: str, candidates: Sequence[SideMedia], reference: SideMedia | None = None) -> list[str]:
        """The model's full answer per candidate (verdict and rationale, in the head's order)."""
        return self.generate(self._queries(prompt, candidates, reference))

    # ------------------------------------------------------------------------------ pairs

    def pair_position_bias(self, examples: Sequence[PreferenceExample]) -> tuple[PositionBias, torch.Tensor]:
        """Position bias over preference pairs (pairwise form): side a as candidate against b, both
        orders. Returns the bias and the order-averaged P(a better than b) `[P]`."""
        if self.config.form != "pairwise":
            raise ValueError("position bias applies to the pairwise yes_token form")
        queries = pair_queries(examples, self.config, self.collate)  # a vs b, then b vs a (= a vs b swapped)
        probs = self.verdict_probs(queries)
        forward, swapped = probs[: len(examples)], probs[len(examples):]
        return position_bias(forward, swapped), order_averaged(forward, swapped)


class YesTokenRewardFunction(RewardFunction):
    """A yes_token model as a TRL reward function: `fn(prompts, completions, **kwargs) -> list[float]` (P(yes)).

    Completions are either text (strings or chat messages, judged as responses with the `images` /
    `videos` columns, as in `RewardFunction`) or generated media, for GRPO on image / video
    generators: PIL images, `VideoClip`s or `[T, H, W, 3]` uint8 frame arrays (shown at `video_fps`).
    The pairwise form judges each completion against the `reference` column (media as above, or a
    file path); `average_orders` asks both orders and averages. Scoring goes through
    `YesTokenScorer` (size-sorted batches, one forward each; rationales generated when the head
    reasons first).
    """

    def __init__(self, model: RewardModel, batch_size: int = 16, collate: CollateConfig | None = None,
                 media: MediaConfig | None = None, video_fps: float = 8.0, average_orders: bool = False,
                 max_new_tokens: int = 64):
        super().__init__(model, None, batch_size, collate, media)
        self.scorer = YesTokenScorer(model, batch_size=batch_size, max_new_tokens=max_new_tokens, collate=collate)
        self.video_fps = video_fps
        self.average_orders = average_orders
        if average_orders and self.scorer.config.form != "pairwise":
            raise RewardFunctionError("average_orders needs the pairwise yes_token form")

    def _candidate(self, completion: Any, images: Any, video: Any) -> SideMedia:
        if isinstance(completion, (Image.Image, VideoClip, np.ndarray)):
            return media_side(completion, self.media, self.video_fps, self.final_image_size)
        return self.completion_side(completion, images, video)  # a text response with the example's media

    def _reference(self, i: int, value: Any) -> SideMedia:
        if value is None:
            raise RewardFunctionError(f"example {i}: the pairwise yes_token form needs a 'reference' column entry")
        try:
            return media_side(value, self.media, self.video_fps, self.final_image_size)
        except (TypeError, ValueError) as err:
            raise RewardFunctionError(f"example {i}: bad reference ({err})") from err

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        images, videos = media_columns(prompts, completions, kwargs)
        n = len(prompts)
        texts = [self.collate.prompt_template.format(prompt=prompt_text(p)) for p in prompts]
        sides = [self._candidate(c, images[i], videos[i]) for i, c in enumerate(completions)]
        if self.scorer.config.form == "pointwise":
            queries = [VerdictQuery(texts[i], sides[i], id=f"example {i}") for i in range(n)]
            return self.scorer.verdict_probs(queries).tolist()
        refs = [self._reference(i, r) for i, r in enumerate(column(kwargs, ("reference",), n))]
        queries = [VerdictQuery(texts[i], sides[i], reference=refs[i], id=f"example {i}") for i in range(n)]
        if not self.average_orders:
            return self.scorer.verdict_probs(queries).tolist()
        swapped = [VerdictQuery(texts[i], refs[i], reference=sides[i], id=f"example {i} (swapped)") for i in range(n)]
        probs = self.scorer.verdict_probs(queries + swapped)
        return order_averaged(probs[:n], probs[n:]).tolist()
