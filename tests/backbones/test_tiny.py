"""Tiny offline Qwen-VL builders: tokenizer, configs, determinism, save/load, tool chat template."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor
from trl.chat_template_utils import (
    add_response_schema,
    is_chat_template_prefix_preserving,
    qwen2_5_vl_chat_template,
    supports_tool_calling,
)

from mmreward.backbones.chat_template import TOOL_CHAT_TEMPLATE, ensure_tool_chat_template
from mmreward.backbones.tiny import (
    FAMILIES,
    SPECIAL_TOKENS,
    build_byte_tokenizer,
    build_tiny_vlm,
    tiny_backbone_once,
    tiny_spec_family,
)

MODEL_CLASSES = {
    "qwen2_vl": ("Qwen2VLForConditionalGeneration", "Qwen2VLProcessor"),
    "qwen2_5_vl": ("Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor"),
    "qwen3_vl": ("Qwen3VLForConditionalGeneration", "Qwen3VLProcessor"),
}


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {family: build_tiny_vlm(root / family, family=family, seed=0) for family in FAMILIES}


def _image_inputs(processor, sizes=((84, 84),)):
    images = [Image.new("RGB", size, (40 * i, 90, 200)) for i, size in enumerate(sizes)]
    content = [{"type": "image"} for _ in images] + [{"type": "text", "text": "Is it good?"}]
    text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    return processor(text=[text], images=images, return_tensors="pt")


def test_byte_tokenizer_round_trips_any_text_and_maps_bytes_to_ids():
    tok = build_byte_tokenizer()
    text = "Frame 3: ünïcödé 日本 🙂\n\ttabs"
    assert tok.decode(tok.encode(text)) == text
    assert tok.encode("A~") == [65, 126]  # id == byte value
    assert len(tok) == 256 + 10 + len(SPECIAL_TOKENS)  # bytes, word-merge tokens, specials


def test_verdict_words_are_single_distinct_tokens():
    tok = build_byte_tokenizer()
    ids = {w: tok.encode(w) for w in ("yes", " yes", "no", " no", "Yes", " Yes", "No", " No")}
    assert all(len(v) == 1 for v in ids.values()), ids
    assert len({v[0] for v in ids.values()}) == 8
    assert tok.decode(ids[" yes"]) == " yes"
    assert tok.encode("eyes") == [ord("e"), ids["yes"][0]]  # merges apply inside words too


def test_special_tokens_are_atomic_and_skippable():
    tok = build_byte_tokenizer()
    for token, _ in SPECIAL_TOKENS:
        assert tok.encode(token) == [tok.convert_tokens_to_ids(token)]
    ids = tok.encode("<|im_start|>assistant\n<tool_call>x</tool_call><|im_end|>")
    assert tok.decode(ids, skip_special_tokens=True) == "assistant\n<tool_call>x</tool_call>"
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_dir_loads_through_auto_classes(tiny_dirs, family):
    model = AutoModelForImageTextToText.from_pretrained(tiny_dirs[family])
    processor = AutoProcessor.from_pretrained(tiny_dirs[family])
    assert (type(model).__name__, type(processor).__name__) == MODEL_CLASSES[family]
    tok, cfg = processor.tokenizer, model.config
    assert cfg.text_config.vocab_size == len(tok)
    assert cfg.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert cfg.video_token_id == tok.convert_tokens_to_ids("<|video_pad|>")
    assert cfg.vision_start_token_id == tok.convert_tokens_to_ids("<|vision_start|>")
    assert cfg.text_config.eos_token_id == tok.eos_token_id
    assert model.generation_config.pad_token_id == tok.pad_token_id
    head_dim = cfg.text_config.hidden_size // cfg.text_config.num_attention_heads
    assert sum(cfg.text_config.rope_parameters["mrope_section"]) == head_dim // 2
    assert processor.chat_template == TOOL_CHAT_TEMPLATE


@pytest.mark.parametrize("family", FAMILIES)
def test_image_token_counts(tiny_dirs, family):
    processor = AutoProcessor.from_pretrained(tiny_dirs[family])
    inputs = _image_inputs(processor, sizes=((84, 84), (112, 112)))
    ids = inputs["input_ids"][0]
    assert int((ids == processor.image_token_id).sum()) == 9 + 16
    assert inputs["mm_token_type_ids"][0].tolist() == (ids == processor.image_token_id).int().tolist()


def test_same_seed_same_weights_other_seed_differs(tmp_path):
    def weights(seed, name):
        d = build_tiny_vlm(tmp_path / name, seed=seed)
        return AutoModelForImageTextToText.from_pretrained(d).state_dict()

    a, b, c = weights(7, "a"), weights(7, "b"), weights(8, "c")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["lm_head.weight"], c["lm_head.weight"])


def test_build_leaves_global_rng_untouched(tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_vlm(tmp_path / "m", seed=5)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("family", FAMILIES)
def test_save_reload_gives_identical_fp32_logits(tiny_dirs, family, tmp_path):
    processor = AutoProcessor.from_pretrained(tiny_dirs[family])
    inputs = _image_inputs(processor)
    model = AutoModelForImageTextToText.from_pretrained(tiny_dirs[family], dtype=torch.float32).eval()
    model.save_pretrained(tmp_path / "copy")
    again = AutoModelForImageTextToText.from_pretrained(tmp_path / "copy", dtype=torch.float32).eval()
    with torch.no_grad():
        first, second = model(**inputs).logits, again(**inputs).logits
    assert first.dtype == torch.float32 and first.std() > 0
    assert torch.equal(first, second)


@pytest.mark.parametrize("spec, family", [("tiny", "qwen2_5_vl"), ("tiny:qwen3_vl", "qwen3_vl"),
                                          ("tiny_models/7b", None), ("runs/reward", None)])
def test_tiny_spec_names_a_family_or_nothing(spec, family):
    assert tiny_spec_family(spec) == family


def test_tiny_spec_with_unknown_family_is_rejected():
    with pytest.raises(ValueError, match="unknown tiny family 'qwen9'"):
        tiny_spec_family("tiny:qwen9")


def test_tiny_backbone_is_built_once_by_the_main_process(tmp_path):
    class State:  # the two members of accelerate's states that the helper uses
        def __init__(self, main: bool):
            self.is_main_process, self.waits = main, 0

        def wait_for_everyone(self):
            self.waits += 1

    worker = State(main=False)
    assert tiny_backbone_once("qwen2_vl", tmp_path, worker) == tmp_path / "tiny_backbone"
    assert not (tmp_path / "tiny_backbone").exists() and worker.waits == 1
    main = State(main=True)
    target = tiny_backbone_once("qwen2_vl", tmp_path, main)
    assert json.loads((target / "config.json").read_text())["model_type"] == "qwen2_vl"
    weights = target / "model.safetensors"
    built = weights.stat().st_mtime_ns
    assert tiny_backbone_once("qwen2_vl", tmp_path, main) == target and main.waits == 2
    assert weights.stat().st_mtime_ns == built  # not rebuilt


def test_unknown_family_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown family 'llava'"):
        build_tiny_vlm(tmp_path, family="llava")


# --- tool-capable chat template -------------------------------------------------------------

SELECT_FRAMES = {
    "type": "function",
    "function": {
        "name": "select_frames",
        "description": "Look at more frames.",
        "parameters": {
            "type": "object",
            "properties": {"target_frames": {"type": "array", "items": {"type": "integer"}}},
            "required": ["target_frames"],
        },
    },
}


def _tool_conversation():
    first, second = Image.new("RGB", (84, 84), "red"), Image.new("RGB", (112, 112), "blue")
    call = {"type": "function", "function": {"name": "select_frames", "arguments": {"target_frames": [3, 7]}}}
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "You compare videos."}]},
        {"role": "user", "content": [{"type": "image", "image": first}, {"type": "text", "text": "Which?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "<think>need more</think>"}], "tool_calls": [call]},
        {
            "role": "tool",
            "name": "select_frames",
            "content": [{"type": "text", "text": "Frames 3, 7:"}, {"type": "image", "image": second}],
        },
    ]
    return messages, [first, second]


@pytest.mark.parametrize("family", FAMILIES)
def test_tool_conversation_renders_and_processes(tiny_dirs, family):
    processor = AutoProcessor.from_pretrained(tiny_dirs[family])
    messages, images = _tool_conversation()
    text = processor.apply_chat_template(messages, tools=[SELECT_FRAMES], add_generation_prompt=True)
    assert "You compare videos." in text
    assert "<tools>\n" + json.dumps(SELECT_FRAMES) + "\n</tools>" in text
    call = '<tool_call>\n{"name": "select_frames", "arguments": {"target_frames": [3, 7]}}\n</tool_call>'
    assert "<|im_start|>assistant\n<think>need more</think>\n" + call + "<|im_end|>" in text
    assert "<tool_response>\nFrames 3, 7:<|vision_start|><|image_pad|><|vision_end|>\n</tool_response>" in text
    assert text.count("<|image_pad|>") == 2 and text.endswith("<|im_start|>assistant\n")
    inputs = processor(text=[text], images=images, return_tensors="pt")
    assert int((inputs["input_ids"][0] == processor.image_token_id).sum()) == 9 + 16


def test_template_passes_trl_tool_checks_and_parses_calls(tiny_dirs):
    processor = AutoProcessor.from_pretrained(tiny_dirs["qwen2_5_vl"])
    # The checks GRPOTrainer(tools=...) runs at init: tool support, prefix preservation, response parser.
    assert supports_tool_calling(processor)
    assert is_chat_template_prefix_preserving(processor)
    add_response_schema(processor)
    parsed = processor.tokenizer.parse_response(
        '<think>x</think>\n<tool_call>\n{"name": "select_frames", "arguments": {"target_frames": [1, 5]}}\n'
        "</tool_call><|im_end|>",
        prefix="",
    )
    assert parsed["tool_calls"] == [
        {"type": "function", "function": {"name": "select_frames", "arguments": {"target_frames": [1, 5]}}}
    ]


def test_ensure_tool_chat_template_replaces_only_tool_blind_templates(tiny_dirs):
    processor = AutoProcessor.from_pretrained(tiny_dirs["qwen2_5_vl"])
    processor.chat_template = qwen2_5_vl_chat_template  # the stock Qwen2.5-VL one drops tool calls
    assert not supports_tool_calling(processor)
    ensure_tool_chat_template(processor)
    assert processor.chat_template == TOOL_CHAT_TEMPLATE == processor.tokenizer.chat_template
    assert supports_tool_calling(processor)


def test_grpo_trainer_accepts_tools_without_swapping_template(tiny_dirs, tmp_path):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    model = AutoModelForImageTextToText.from_pretrained(tiny_dirs["qwen2_5_vl"])
    processor = AutoProcessor.from_pretrained(tiny_dirs["qwen2_5_vl"])

    def select_frames(target_frames: list[int]) -> str:
        """Look at more frames.

        Args:
            target_frames: Frame-pool indices to show next.
        """
        return str(target_frames)

    args = GRPOConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=2, num_generations=2, max_completion_length=8,
        use_cpu=True, report_to=[], max_steps=1,
    )
    trainer = GRPOTrainer(
        model=model,
        processing_class=processor,
        reward_funcs=lambda completions, **kwargs: [0.0] * len(completions),
        train_dataset=Dataset.from_list([{"prompt": [{"role": "user", "content": "hi"}]}] * 2),
        args=args,
        tools=[select_frames],
    )
    assert trainer.chat_template is None  # our template is used as is (no training-template swap)
    assert processor.tokenizer.response_template is not None  # TRL recognised it and set the tool-call parser
