"""Settings of the `yes_token` head (RewardDance): the question asked, how P(yes) is read, the loss weights."""

from __future__ import annotations

from dataclasses import dataclass, field

from mmreward.heads.base import HeadError

PROBABILITY_MODES = ("softmax", "binary")
FORMS = ("pointwise", "pairwise")
REASONING_MODES = ("none", "verdict_first", "rationale_first")
DEFAULT_INSTRUCTIONS = {
    "none": "Answer yes or no.",
    "verdict_first": "Answer yes or no first, then explain your answer in one sentence.",
    "rationale_first": 'Explain your reasoning in one sentence, then finish with "Answer: yes" or "Answer: no".',
}


@dataclass
class YesTokenConfig:
    """Options of the `yes_token` head (all recorded in the checkpoint, so a saved model knows how
    to prompt itself).

    probability: "softmax" (P(yes) over the full vocabulary) or "binary" (sigmoid(logit_yes - logit_no)).
    yes_words / no_words: spellings whose probabilities are summed; each must be one token of the
        backbone's tokenizer (checked when the head meets the processor).
    form: "pointwise" (does this candidate match the prompt?) or "pairwise" (is the second,
        candidate, better than the first, a reference?). Training pairs give both orders: side a is
        judged against b as reference and side b against a.
    reasoning: "none"; "verdict_first" (the model answers, then explains: the reward is read at the
        verdict, the first answer token); "rationale_first" (the model explains, then writes
        `verdict_prefix` and the verdict: the reward is read after the generated rationale).
    pointwise_question / pairwise_question: question about media candidates; `{prompt}` and
        `{media}` ("image", "images" or "video") are filled in.
    pointwise_response_question / pairwise_response_question: the same for text responses;
        `{prompt}`, `{response}` (the candidate) and `{reference}` (pairwise) are filled in.
    instruction: answer-format sentence after the question; None = the default of `reasoning`.
    verdict_prefix: text before the verdict in "rationale_first" (the reward is read right after it).
    ce_weight: weight of the yes/no cross-entropy.
    bt_weight: weight of the Bradley-Terry term on the two sides' log-odds (0 = off).
    tie_target: CE target P(yes) for both sides of a tied pair (e.g. 0.5); None = ties give no CE.
    """

    probability: str = "softmax"
    yes_words: list[str] = field(default_factory=lambda: ["yes", " yes", "Yes", " Yes"])
    no_words: list[str] = field(default_factory=lambda: ["no", " no", "No", " No"])
    form: str = "pointwise"
    reasoning: str = "none"
    pointwise_question: str = 'Does this {media} match the prompt "{prompt}"?'
    pairwise_question: str = (
        'Both {media}s were made for the prompt "{prompt}". The first is a reference, the second a candidate. '
        "Is the second {media} better than the first?"
    )
    pointwise_response_question: str = "Question: {prompt}\nResponse: {response}\nIs this response correct and helpful?"
    pairwise_response_question: str = (
        "Question: {prompt}\nFirst response: {reference}\nSecond response: {response}\n"
        "Is the second response better than the first?"
    )
    instruction: str | None = None
    verdict_prefix: str = "Answer:"
    ce_weight: float = 1.0
    bt_weight: float = 0.0
    tie_target: float | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.probability not in PROBABILITY_MODES:
            problems.append(f"probability must be one of {PROBABILITY_MODES}, got {self.probability!r}")
        if self.form not in FORMS:
            problems.append(f"form must be one of {FORMS}, got {self.form!r}")
        if self.reasoning not in REASONING_MODES:
            problems.append(f"reasoning must be one of {REASONING_MODES}, got {self.reasoning!r}")
        self.yes_words, self.no_words = list(self.yes_words), list(self.no_words)
        if not self.yes_words or not self.no_words:
            problems.append("yes_words and no_words need at least one spelling each")
        if set(self.yes_words) & set(self.no_words):
            problems.append(f"a spelling is both yes and no: {sorted(set(self.yes_words) & set(self.no_words))}")
        for name, needed in (("pointwise_question", ("prompt",)), ("pairwise_question", ("prompt",)),
                             ("pointwise_response_question", ("prompt", "response")),
                             ("pairwise_response_question", ("prompt", "response", "reference"))):
            template = getattr(self, name)
            missing = [key for key in needed if "{" + key + "}" not in template]
            if missing:
                problems.append(f"{name} must contain {['{' + k + '}' for k in missing]}")
            try:  # other fields ({media}) or stray braces would only fail when the first batch is encoded
                template.format(prompt="", response="", reference="", media="")
            except (KeyError, IndexError, ValueError) as err:
                problems.append(f"{name}: bad template {template!r} ({err!r})")
        if self.reasoning == "rationale_first" and not self.verdict_prefix.strip():
            problems.append("rationale_first needs a non-empty verdict_prefix (the reward is read after it)")
        if self.ce_weight < 0 or self.bt_weight < 0 or self.ce_weight + self.bt_weight == 0:
            problems.append(f"ce_weight and bt_weight must be >= 0 and not both 0, "
                            f"got {self.ce_weight}, {self.bt_weight}")
        if self.tie_target is not None and not 0.0 <= self.tie_target <= 1.0:
            problems.append(f"tie_target must be in [0, 1] or None, got {self.tie_target}")
        if problems:
            raise HeadError("head 'yes_token': " + "; ".join(problems))

    def answer_instruction(self) -> str:
        return self.instruction if self.instruction is not None else DEFAULT_INSTRUCTIONS[self.reasoning]
