"""Tool-capable chat template for the Qwen VL families.

The stock Qwen2-VL / Qwen2.5-VL template silently drops `tools`, assistant `tool_calls` and `tool`
messages, which the VR-Thinker `select_frames` loop needs. We use TRL's copy of the Qwen3-VL
template verbatim (not a modified one) because TRL recognises it by exact string comparison:
`GRPOTrainer(tools=...)` then accepts it (`supports_tool_calling`), treats it as prefix-preserving,
attaches the Qwen `<tool_call>` response parser (`add_response_schema`) and, for SFT with
`assistant_only_loss`, swaps in its `{% generation %}`-marked twin (`get_training_chat_template`).

Rendering (ChatML): a `tools` list becomes a system section `# Tools ... <tools>{json per tool}</tools>`;
an assistant `tool_calls` entry becomes `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`;
`tool` messages become a user turn of `<tool_response>...</tool_response>` blocks whose content
may hold images/videos (rendered as `<|vision_start|><|image_pad|><|vision_end|>`).
Unlike the Qwen2.5-VL template it adds no default system prompt.
"""

from __future__ import annotations

from typing import Any

from trl.chat_template_utils import qwen3_vl_chat_template, supports_tool_calling

TOOL_CHAT_TEMPLATE: str = qwen3_vl_chat_template


def use_tool_chat_template(processor: Any) -> Any:
    """Set the tool-capable template on a processor (and its tokenizer) in place; returns it.

    For real Qwen2-VL / Qwen2.5-VL checkpoints whose shipped template drops tool calls.
    """
    processor.chat_template = TOOL_CHAT_TEMPLATE
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is not None:
        tokenizer.chat_template = TOOL_CHAT_TEMPLATE
    return processor


def ensure_tool_chat_template(processor: Any) -> Any:
    """Keep the processor's template if it already renders tool calls, else install ours."""
    if processor.chat_template is not None and supports_tool_calling(processor):
        return processor
    return use_tool_chat_template(processor)
