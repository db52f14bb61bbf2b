"""RewardDance's yes_token head: exact verdict probabilities and losses, prompts, scoring, reward function."""

import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from mmreward.backbones.tiny import build_tiny_vlm
from mmreward.collate import CollateConfig, CollateError
from mmreward.data.dataset import PreferenceExample, SideMedia
from mmreward.data.records import PreferenceRecord, Side
from mmreward.data.dataset import frames_clip
from mmreward.heads import HeadError, build_head, head_from_config
from mmreward.heads.yes_token.head import YesTokenConfig, YesTokenHead, verdict_log_odds, yes_token_loss
from mmreward.heads.yes_token.prompts import VerdictQuery, YesTokenCollator, build_verdict_messages, encode_queries
from mmreward.heads.yes_token.scoring import YesTokenRewardFunction, YesTokenScorer, order_averaged, position_bias
from mmreward.losses import PreferenceLossConfig
from mmreward.model import RewardModel, TuningConfig
from mmreward.reward_fn import RewardFunction

LN2, LN3 = math.log(2.0), math.log(3.0)


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


# ------------------------------------------------------------------------------ pure functions


def test_verdict_log_odds_exact():
    # exp(logits) = [1, 3, 2, 4, 1]: yes = ids 0, 1 (mass 4), no = id 2 (mass 2), total 11.
    logits = torch.log(torch.tensor([[1.0, 3.0, 2.0, 4.0, 1.0]]))
    softmax = verdict_log_odds(logits, [0, 1], [2], "softmax")
    binary = verdict_log_odds(logits, [0, 1], [2], "binary")
    assert softmax.item() == pytest.approx(math.log(4 / 7), abs=1e-6)  # P(yes) = 4/11
    assert torch.sigmoid(softmax).item() == pytest.approx(4 / 11, abs=1e-6)
    assert binary.item() == pytest.approx(math.log(2.0), abs=1e-6)  # P(yes) = 4 / (4 + 2)
    assert torch.sigmoid(binary).item() == pytest.approx(2 / 3, abs=1e-6)
    # No saturation: a confident verdict keeps exact log-odds where P(yes) itself rounds to 1.0 in float32.
    confident = torch.tensor([[60.0, 0.0, 0.0]])
    assert verdict_log_odds(confident, [0], [1], "softmax").item() == pytest.approx(60.0 - LN2, abs=1e-4)
    assert verdict_log_odds(confident.bfloat16(), [0], [1], "binary").dtype == torch.float32
    with pytest.raises(ValueError, match="probability"):
        verdict_log_odds(logits, [0], [2], "both")


def test_yes_token_loss_exact():
    s_a = torch.tensor([[0.0], [1.0], [2.0]])
    s_b = torch.tensor([[LN2], [0.0], [0.5]])
    labels = torch.tensor([[1], [-1], [0]])
    cfg = YesTokenConfig(bt_weight=0.5)
    loss, stats = yes_token_loss(s_a, s_b, labels, None, cfg)
    # CE (ties skipped): a wins pair 0 (a: yes, b: no), b wins pair 1 (a: no, b: yes).
    ce = (softplus(-0.0) + softplus(LN2) + softplus(1.0) + softplus(-0.0)) / 4
    bt = (softplus(-(0.0 - LN2)) + softplus(-(-1.0))) / 2  # -log sigmoid(winner - loser)
    assert stats["ce_loss"].item() == pytest.approx(ce, abs=1e-6)
    assert stats["bt_loss"].item() == pytest.approx(bt, abs=1e-6)
    assert loss.item() == pytest.approx(ce + 0.5 * bt, abs=1e-6)
    assert stats["accuracy"].tolist() == [0.0] and stats["count"].tolist() == [2]
    # Verdicts (s > 0 = yes): pair 0 a says no (wrong), b says yes (wrong); pair 1 a yes (wrong), b no (wrong).
    assert stats["verdict_accuracy"].item() == 0.0

    tie_cfg = YesTokenConfig(tie_target=0.5)  # tied sides are trained towards P(yes) = 0.5
    loss, stats = yes_token_loss(s_a, s_b, labels, None, tie_cfg)
    tie = (softplus(2.0) - 2.0 * 0.5) + (softplus(0.5) - 0.5 * 0.5)
    assert loss.item() == pytest.approx((ce * 4 + tie) / 6, abs=1e-6)

    mask = torch.tensor([[True], [False], [True]])  # pair 1 unlabeled: only pair 0 trains
    loss, stats = yes_token_loss(s_a, s_b, labels, mask, YesTokenConfig(ce_weight=2.0))
    assert loss.item() == pytest.approx(2.0 * (softplus(0.0) + softplus(LN2)) / 2, abs=1e-6)
    assert stats["count"].tolist() == [1]


def test_loss_gradient_direction():
    s_a = torch.zeros(4, 1, requires_grad=True)
    s_b = torch.zeros(4, 1, requires_grad=True)
    labels = torch.tensor([[1], [1], [-1], [0]])
    loss, _ = yes_token_loss(s_a, s_b, labels, None, YesTokenConfig(bt_weight=1.0))
    loss.backward()
    assert (s_a.grad[:2] < 0).all() and (s_b.grad[:2] > 0).all()  # descent raises the winner's yes
    assert s_a.grad[2] > 0 and s_b.grad[2] < 0
    assert s_a.grad[3] == 0 and s_b.grad[3] == 0  # ties give no signal by default


def test_position_bias_exact():
    forward = [0.9, 0.6, 0.2, 0.7]
    swapped = [0.2, 0.7, 0.6, 0.1]
    bias = position_bias(forward, swapped)
    assert bias.flip_rate == 0.25  # only pair 1 says "the second is better" in both orders
    assert bias.second_rate == 5 / 8 and bias.n == 4
    averaged = order_averaged(torch.tensor(forward), torch.tensor(swapped))
    assert averaged.tolist() == pytest.approx([0.85, 0.45, 0.3, 0.8])
    with pytest.raises(ValueError, match="equally long"):
        position_bias([0.1], [0.2, 0.3])


@pytest.mark.parametrize(
    "options,match",
    [
        (dict(probability="max"), "probability must be one of"),
        (dict(form="listwise"), "form must be one of"),
        (dict(reasoning="cot"), "reasoning must be one of"),
        (dict(yes_words=["yes"], no_words=["yes"]), "both yes and no"),
        (dict(pointwise_question="Is it good?"), r"pointwise_question must contain \['\{prompt\}'\]"),
        (dict(pairwise_response_question="{prompt} {response}"), "pairwise_response_question must contain"),
        (dict(pointwise_question="{prompt} {colour}"), "bad template"),
        (dict(ce_weight=0.0, bt_weight=0.0), "not both 0"),
        (dict(tie_target=1.5), "tie_target"),
        (dict(reasoning="rationale_first", verdict_prefix=" "), "verdict_prefix"),
        (dict(temperature=1.0), "invalid options"),
    ],
)
def test_bad_configs(options, match):
    with pytest.raises(HeadError, match=match):
        build_head("yes_token", 8, ["overall"], **options)


def test_one_dimension_only():
    with pytest.raises(HeadError, match="one dimension"):
        build_head("yes_token", 8, ["VQ", "TA"])


class _Tokenizer:
    vocab = {"yes": [0], "Yes": [1], "no": [2], "No": [3], "maybe": [4, 5]}

    def encode(self, text, add_special_tokens=False):
        return self.vocab[text]


def test_head_forward_exact_and_registry():
    head = build_head("yes_token", 2, ["overall"], yes_words=["yes", "Yes"], no_words=["no", "No"],
                      probability="binary")
    assert isinstance(head, YesTokenHead) and head.uses_lm_head and not list(head.parameters())
    lm_head = nn.Linear(2, 6, bias=False)
    with torch.no_grad():  # logits = [h0, h1, h0, 0, 0, 0]: yes mass e^h0 + e^h1, no mass e^h0 + 1
        lm_head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0, 0], [0, 0], [0, 0]]))
    hidden = torch.tensor([[0.0, LN3], [LN2, 0.0]])[:, None]
    with pytest.raises(HeadError, match="bind_processor"):
        head(hidden, lm_head)
    head.bind_processor(_Tokenizer())
    assert (head.yes_ids, head.no_ids) == ([0, 1], [2, 3])
    out = head(hidden, lm_head)
    assert out.shape == (2, 1)
    assert out[:, 0].tolist() == pytest.approx([math.log(4 / 2), math.log(3 / 3)], abs=1e-6)
    assert head.to_reward(out)[:, 0].tolist() == pytest.approx([2 / 3, 1 / 2], abs=1e-6)
    with pytest.raises(HeadError, match="LM head"):
        head(hidden)
    # The checkpoint config rebuilds the same head (options included).
    again = head_from_config(head.config())
    assert again.cfg == head.cfg and again.config() == head.config()
    bad = build_head("yes_token", 2, ["overall"], yes_words=["maybe"], no_words=["no"])
    with pytest.raises(HeadError, match="single tokens.*maybe"):
        bad.bind_processor(_Tokenizer())


# ------------------------------------------------------------------------------ tiny backbone


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_vlm(tmp_path_factory.mktemp("tiny"), family="qwen2_5_vl")


def _model(tiny, mode="head", **options) -> RewardModel:
    torch.manual_seed(0)
    return RewardModel.from_backbone(tiny, head="yes_token", dimensions=["overall"], head_options=options,
                                     tuning=TuningConfig(mode=mode, lora_r=4), dtype="float32").eval()


def _image(rgb, size=56):
    return Image.new("RGB", (size, size), rgb)


def _video(rgb, frames=4, size=56):
    return frames_clip(np.tile(np.array(rgb, dtype=np.uint8), (frames, size, size, 1)), fps=4.0)


def _example(index, a: SideMedia, b: SideMedia, label="a") -> PreferenceExample:
    record = PreferenceRecord(id=f"r{index}", prompt="two red circles", a=Side(None, [], None, a.response),
                              b=Side(None, [], None, b.response), label={"overall": label}, meta={})
    return PreferenceExample(record, a, b)


def _text(processor, inputs, row=0) -> str:
    ids = inputs["input_ids"][row][inputs["attention_mask"][row].bool()]
    return processor.tokenizer.decode(ids)


def test_prompts_and_read_position(tiny):
    model = _model(tiny)
    processor, cfg = model.processor, model.head.cfg
    query = VerdictQuery("two red circles", SideMedia([_image((200, 0, 0))]))
    text = _text(processor, encode_queries(processor, [query], cfg, CollateConfig()))
    assert text.endswith('Does this image match the prompt "two red circles"? Answer yes or no.<|im_end|>\n'
                         "<|im_start|>assistant\n")
    video = VerdictQuery("a ball", SideMedia(video=_video((0, 0, 200))))
    assert 'Does this video match the prompt "a ball"?' in _text(processor, encode_queries(processor, [video], cfg,
                                                                                          CollateConfig()))
    response = VerdictQuery("What colour?", SideMedia([_image((200, 0, 0))], response="Red."))
    assert "Question: What colour?\nResponse: Red.\nIs this response correct and helpful? Answer yes or no." in _text(
        processor, encode_queries(processor, [response], cfg, CollateConfig()))

    pairwise = YesTokenConfig(form="pairwise", reasoning="rationale_first")
    ref = SideMedia([_image((0, 200, 0))])
    pair = VerdictQuery("two red circles", SideMedia([_image((200, 0, 0))]), reference=ref)
    messages = build_verdict_messages(pair, pairwise, CollateConfig(system_prompt="Judge."))
    assert [m["role"] for m in messages] == ["system", "user"]
    assert [item["type"] for item in messages[1]["content"]] == ["text", "image", "text", "image", "text"]
    text = _text(processor, encode_queries(processor, [pair], pairwise, CollateConfig()))
    assert text.count("<|vision_start|>") == 2 and "First:<|vision_start|>" in text
    assert text.endswith('Answer: yes" or "Answer: no".<|im_end|>\n<|im_start|>assistant\nAnswer:')
    with_rationale = VerdictQuery(pair.prompt, pair.candidate, reference=ref, rationale=" It is red. ")
    assert _text(processor, encode_queries(processor, [with_rationale], pairwise, CollateConfig())).endswith(
        "<|im_start|>assistant\nIt is red.\nAnswer:")
    # Response pairs sharing their media show it once.
    shared = VerdictQuery("What colour?", SideMedia([_image((1, 2, 3))], response="Red."),
                          reference=SideMedia([_image((1, 2, 3))], response="Blue."), share_media=True)
    text = _text(processor, encode_queries(processor, [shared], YesTokenConfig(form="pairwise"), CollateConfig()))
    assert text.count("<|vision_start|>") == 1 and "First response: Blue.\nSecond response: Red." in text
    with pytest.raises(CollateError, match="needs a reference"):
        encode_queries(processor, [query], pairwise, CollateConfig())
    with pytest.raises(CollateError, match="max_length=10"):
        encode_queries(processor, [query], cfg, CollateConfig(max_length=10))


@pytest.mark.parametrize("probability", ["softmax", "binary"])
def test_reward_is_p_yes_at_the_verdict_position(tiny, probability):
    model = _model(tiny, probability=probability)
    yes = [model.processor.tokenizer.encode(w, add_special_tokens=False)[0] for w in ("yes", " yes", "Yes", " Yes")]
    no = [model.processor.tokenizer.encode(w, add_special_tokens=False)[0] for w in ("no", " no", "No", " No")]
    queries = [VerdictQuery("two red circles", SideMedia([_image((200, 0, 0))])),
               VerdictQuery("a long prompt about three blue squares on grey", SideMedia([_image((0, 0, 200), 84)]))]
    left = encode_queries(model.processor, queries, model.head.cfg, CollateConfig(padding_side="left"))
    right = encode_queries(model.processor, queries, model.head.cfg, CollateConfig(padding_side="right"))
    reward = model.score(left)[:, 0]
    with torch.no_grad():  # the backbone's own next-token distribution after the last (verdict) position
        probs = model.backbone(**left).logits[:, -1].float().softmax(-1)
    p_yes, p_no = probs[:, yes].sum(-1), probs[:, no].sum(-1)
    expected = p_yes if probability == "softmax" else p_yes / (p_yes + p_no)
    assert reward.tolist() == pytest.approx(expected.tolist(), abs=1e-5)
    assert model.score(right)[:, 0].tolist() == pytest.approx(reward.tolist(), abs=1e-5)
    assert torch.sigmoid(model(left))[:, 0].tolist() == pytest.approx(reward.tolist(), abs=1e-6)


def test_collator_sides_and_orders(tiny):
    model = _model(tiny, form="pairwise")
    red, green = SideMedia([_image((200, 0, 0))]), SideMedia([_image((0, 200, 0))])
    examples = [_example(0, red, green, "a"), _example(1, green, red, "b")]
    collator = model.head.pair_collator(model.processor, CollateConfig())
    assert isinstance(collator, YesTokenCollator)
    batch = collator(examples)
    assert batch["labels"].tolist() == [[1], [-1]] and batch["label_mask"].all()
    cfg = model.head.cfg
    # Side a is asked about against b (b shown first); side b against a.
    a_vs_b = encode_queries(model.processor, [VerdictQuery("two red circles", red, reference=green)], cfg,
                            CollateConfig())
    assert torch.equal(batch["inputs"]["input_ids"][0], a_vs_b["input_ids"][0])
    assert torch.equal(batch["inputs"]["pixel_values"][: a_vs_b["pixel_values"].shape[0]], a_vs_b["pixel_values"])
    rewards = model(batch["inputs"])
    assert rewards.shape == (4, 1)
    loss, stats = model.pair_loss(rewards, batch["labels"], batch["label_mask"], PreferenceLossConfig())
    assert torch.isfinite(loss) and "ce_loss" in stats
    with pytest.raises(CollateError, match="shared_prefix"):
        model.head.pair_collator(model.processor, CollateConfig(pair_form="shared_prefix"))


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_gradients_and_save_load(tiny, tmp_path, mode):
    model = _model(tiny, mode=mode, probability="binary", bt_weight=0.5).train()
    red, green = SideMedia([_image((200, 0, 0))]), SideMedia([_image((0, 200, 0))])
    batch = model.head.pair_collator(model.processor, CollateConfig())([_example(0, red, green)])
    loss, _ = model.pair_loss(model(batch["inputs"]), batch["labels"], batch["label_mask"], PreferenceLossConfig())
    loss.backward()
    base = model.backbone.get_base_model() if mode == "lora" else model.backbone
    lm_head = base.get_output_embeddings().weight
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    if mode == "lora":
        assert grads and all("lora_" in n for n in grads) and lm_head.grad is None
        assert any(g is not None and g.abs().sum() > 0 for g in grads.values())
    else:
        assert lm_head.grad is not None and lm_head.grad.abs().sum() > 0  # the read LM head trains too
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.01)
    model.eval()
    model.save_pretrained(tmp_path / "ckpt")
    loaded = RewardModel.from_pretrained(tmp_path / "ckpt")
    assert loaded.head.cfg == model.head.cfg and loaded.head.yes_ids == model.head.yes_ids
    expected = model.score(batch["inputs"])[:, 0].tolist()
    assert loaded.score(batch["inputs"])[:, 0].tolist() == pytest.approx(expected, abs=1e-6)


# ------------------------------------------------------------------------------ scoring


def _candidates():
    colours = [(200, 0, 0), (0, 200, 0), (0, 0, 200), (200, 200, 0), (0, 200, 200)]
    return [SideMedia([_image(c, 56 if i % 2 else 84)]) for i, c in enumerate(colours)] + [
        SideMedia(video=_video((120, 30, 30)))]


def test_batched_scoring_matches_one_at_a_time(tiny):
    model = _model(tiny)
    candidates = _candidates()
    batched = YesTokenScorer(model, batch_size=4).score("two red circles", candidates)
    single = YesTokenScorer(model, batch_size=1, padding_side="right").score("two red circles", candidates)
    assert batched.shape == (6,)
    assert batched.tolist() == pytest.approx(single.tolist(), abs=1e-5)
    assert len(set(np.round(batched.tolist(), 7))) > 1  # different candidates, different rewards
    with pytest.raises(ValueError, match="takes no reference"):
        YesTokenScorer(model).score("x", candidates, reference=candidates[0])


def test_pairwise_both_orders_and_position_bias(tiny):
    model = _model(tiny, form="pairwise")
    scorer = YesTokenScorer(model, batch_size=3)
    candidates, reference = _candidates()[:4], SideMedia([_image((90, 90, 90))])
    forward, swapped = scorer.score_both_orders("two red circles", candidates, reference)
    assert forward.tolist() == pytest.approx(scorer.score("two red circles", candidates, reference).tolist(), abs=1e-6)
    alone = scorer.verdict_probs([VerdictQuery("two red circles", reference, reference=candidates[2])])
    assert swapped[2].item() == pytest.approx(alone.item(), abs=1e-5)  # swapped = the reference asked about, second
    averaged = scorer.score("two red circles", candidates, reference, average_orders=True)
    assert averaged.tolist() == pytest.approx(((forward + 1 - swapped) / 2).tolist(), abs=1e-6)
    red, green = candidates[0], candidates[1]
    examples = [_example(0, red, green), _example(1, green, red, "b")]
    bias, p_a = scorer.pair_position_bias(examples)
    batch = model.head.pair_collator(model.processor, CollateConfig())(examples)
    rewards = model.score(batch["inputs"])[:, 0]
    assert bias == position_bias(rewards[:2], rewards[2:]) and bias.n == 2
    assert p_a.tolist() == pytest.approx(((rewards[:2] + 1 - rewards[2:]) / 2).tolist(), abs=1e-5)
    with pytest.raises(ValueError, match="needs a reference"):
        scorer.score("x", candidates)


def test_reasoning_modes(tiny):
    first = _model(tiny, reasoning="rationale_first")
    scorer = YesTokenScorer(first, batch_size=2, max_new_tokens=6)
    candidates = _candidates()[:3]
    generated = scorer.generate([VerdictQuery("two red circles", c) for c in candidates])
    rationales = [scorer.rationale(t) for t in generated]
    reward = scorer.score("two red circles", candidates)
    # The reward is read after "<rationale>\nAnswer:", the rationale being what the model wrote.
    explicit = scorer.verdict_probs([VerdictQuery("two red circles", c, rationale=r)
                                     for c, r in zip(candidates, rationales)])
    assert reward.tolist() == pytest.approx(explicit.tolist(), abs=1e-6)
    other = scorer.verdict_probs([VerdictQuery("two red circles", candidates[0], rationale="Red circles, two.")])
    assert other.item() != pytest.approx(explicit[0].item(), abs=1e-7)
    assert scorer.rationale("It is red.\nAnswer: yes") == "It is red."

    # verdict_first: the reward is read at the verdict, before any rationale; generation explains after it.
    verdict = _model(tiny, reasoning="verdict_first")
    vscorer = YesTokenScorer(verdict, batch_size=2, max_new_tokens=4)
    plain = verdict.score(encode_queries(verdict.processor, [VerdictQuery("two red circles", candidates[0])],
                                         verdict.head.cfg, CollateConfig()))[0, 0]
    assert vscorer.score("two red circles", candidates[:1]).item() == pytest.approx(plain.item(), abs=1e-6)
    assert all(isinstance(t, str) for t in vscorer.explain("two red circles", candidates[:2]))


def test_reward_functions_trl_signature(tiny, tmp_path):
    model = _model(tiny)
    red, blue = _image((200, 0, 0)), _image((0, 0, 200))
    fn = YesTokenRewardFunction(model, batch_size=2)
    rewards = fn(prompts=["two red circles", [{"role": "user", "content": "two red circles"}]],
                 completions=[red, blue], completion_ids=None, trainer_state=None)
    expected = YesTokenScorer(model).score("two red circles", [SideMedia([red]), SideMedia([blue])])
    assert rewards == pytest.approx(expected.tolist(), abs=1e-6) and all(isinstance(r, float) for r in rewards)
    frames = np.full((4, 56, 56, 3), 128, np.uint8)
    assert len(fn(prompts=["a ball"], completions=[frames])) == 1
    # Text completions: the generic RewardFunction (through the head's encode_sides) gives the same P(yes).
    path = tmp_path / "red.png"
    red.save(path)
    kwargs = dict(prompts=["What colour?"] * 2, completions=["Red.", "Blue."], images=[[path], [path]])
    assert RewardFunction(model)(**kwargs) == pytest.approx(fn(**kwargs), abs=1e-6)

    pairwise = _model(tiny, form="pairwise")
    with pytest.raises(HeadError, match="cannot score sides one by one"):
        RewardFunction(pairwise)(**kwargs)
    pair_fn = YesTokenRewardFunction(pairwise, average_orders=True)
    averaged = pair_fn(prompts=["two red circles"] * 2, completions=[red, blue], reference=[path, path])
    scorer = YesTokenScorer(pairwise)
    expected = scorer.score("two red circles", [SideMedia([red]), SideMedia([blue])],
                            reference=SideMedia([Image.open(path).convert("RGB")]), average_orders=True)
    assert averaged == pytest.approx(expected.tolist(), abs=1e-6)
    with pytest.raises(Exception, match="needs a 'reference'"):
        YesTokenRewardFunction(pairwise)(prompts=["x"], completions=[red])
