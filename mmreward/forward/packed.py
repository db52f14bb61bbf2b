"""Shared-prefix pair forward: one language-model pass per pair with a block attention mask.

When both sides of a pair share the prompt and media and differ only in the response (response
pairs, as in VL-RewardBench or MM-RLHF), the naive form runs two sequences per pair and encodes
the media twice. The packed form runs one sequence `[prefix | response_a | response_b]`:

- segment ids: 0 = shared prefix, 1 = side a's tail, 2 = side b's tail, -1 = padding;
- attention: causal, and a token of one tail never sees the other tail (`block_attention_mask`);
- positions: each tail continues from the prefix exactly as in its own sequence (`packed_position_ids`
  runs the backbone's own M-RoPE index once per side, masking out the other tail);
- media: only side a's pixels are encoded (they are the same as side b's).

With these three, every reward equals the naive form's up to float rounding. The prefix is found
at the token level (longest common prefix of the two tokenised sides), so it is exact whatever the
chat template; each tail keeps at least its last token, which is where the reward is read.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from mmreward.errors import MmrewardError

SEG_PAD, SEG_PREFIX, SEG_A, SEG_B = -1, 0, 1, 2
# Processor outputs that describe media; the packed batch takes them from side a only.
MEDIA_KEYS = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts")


class PackError(MmrewardError, ValueError):
    """Two sides that cannot share a prefix (the message names the record)."""


def _common_prefix_length(x: torch.Tensor, y: torch.Tensor) -> int:
    n = min(len(x), len(y))
    differ = (x[:n] != y[:n]).nonzero()
    return int(differ[0]) if len(differ) else n


def pack_pairs(
    enc_a: dict[str, torch.Tensor],
    enc_b: dict[str, torch.Tensor],
    pad_token_id: int,
    ids: Sequence[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Pack two processor batches (side a and side b of P pairs, any padding) into P sequences.

    Returns `input_ids`, `attention_mask` (padding only), `mm_token_type_ids`, `segment_ids`
    (all `[P, L]`, right-padded), `read_index` `[P, 2]` (last token of tail a and of tail b) and
    side a's media tensors.
    """
    num_pairs = enc_a["input_ids"].shape[0]
    if enc_b["input_ids"].shape[0] != num_pairs:
        raise PackError(f"side a has {num_pairs} sequences, side b {enc_b['input_ids'].shape[0]}")
    rows, reads = [], []
    for i in range(num_pairs):
        name = ids[i] if ids else f"pair {i}"
        keep_a, keep_b = enc_a["attention_mask"][i].bool(), enc_b["attention_mask"][i].bool()
        ids_a, ids_b = enc_a["input_ids"][i][keep_a], enc_b["input_ids"][i][keep_b]
        mm_a, mm_b = enc_a["mm_token_type_ids"][i][keep_a], enc_b["mm_token_type_ids"][i][keep_b]
        # Each tail keeps at least one token: the read position must belong to its own side.
        prefix = min(_common_prefix_length(ids_a, ids_b), len(ids_a) - 1, len(ids_b) - 1)
        if mm_a[prefix:].any() or mm_b[prefix:].any():
            raise PackError(f"{name}: media tokens after the shared prefix; the sides do not share their media")
        tail_a, tail_b = len(ids_a) - prefix, len(ids_b) - prefix
        segments = torch.tensor([SEG_PREFIX] * prefix + [SEG_A] * tail_a + [SEG_B] * tail_b)
        rows.append((torch.cat([ids_a, ids_b[prefix:]]), torch.cat([mm_a, mm_b[prefix:]]), segments))
        reads.append((prefix + tail_a - 1, prefix + tail_a + tail_b - 1))
    length = max(len(r[0]) for r in rows)

    def pad(values: list[torch.Tensor], fill: int) -> torch.Tensor:
        out = torch.full((num_pairs, length), fill, dtype=values[0].dtype)
        for i, v in enumerate(values):
            out[i, : len(v)] = v
        return out

    packed = {
        "input_ids": pad([r[0] for r in rows], pad_token_id),
        "mm_token_type_ids": pad([r[1] for r in rows], 0),
        "segment_ids": pad([r[2] for r in rows], SEG_PAD),
        "read_index": torch.tensor(reads, dtype=torch.long),
    }
    packed["attention_mask"] = (packed["segment_ids"] != SEG_PAD).long()
    packed.update({k: enc_a[k] for k in MEDIA_KEYS if k in enc_a})
    return packed


def packed_position_ids(get_rope_index: Callable[..., tuple[torch.Tensor, torch.Tensor]],
                        inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """`[3, P, L]` M-RoPE positions: each tail positioned as if it followed the prefix alone."""
    segments = inputs["segment_ids"]
    media = {k: inputs[k] for k in ("image_grid_thw", "video_grid_thw", "second_per_grid_ts") if k in inputs}
    positions = []
    for tail in (SEG_A, SEG_B):
        visible = ((segments == SEG_PREFIX) | (segments == tail)).long()
        pos, _ = get_rope_index(inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"],
                                attention_mask=visible, **media)
        positions.append(pos)
    return torch.where(segments.unsqueeze(0) == SEG_B, positions[1], positions[0])


def block_attention_mask(text_config: Any, dtype: torch.dtype, attention_mask: torch.Tensor,
                         segment_ids: torch.Tensor) -> torch.Tensor:
    """`[P, 1, L, L]` causal mask with the two tails kept apart, in the attention implementation's format.

    A query may see a key when the key is in the prefix or in the query's own segment (and the
    causal and padding rules allow it). Padding queries (segment -1) see the prefix only, so no
    row is empty and no NaN reaches the backward pass. "sdpa" takes the boolean mask (True = may
    attend), "eager" an additive float mask; flash attention cannot express a block mask. Built
    with plain tensor ops: transformers' mask-function path (vmap) costs a noticeable share of a
    tiny model's step.
    """
    implementation = text_config._attn_implementation
    if implementation not in ("sdpa", "eager"):
        raise NotImplementedError(
            f"the shared-prefix pair forward needs attn_implementation 'sdpa' or 'eager', not {implementation!r}; "
            "use pair_form='naive'"
        )
    if any(t != "full_attention" for t in getattr(text_config, "layer_types", None) or ()):
        raise NotImplementedError("the shared-prefix pair forward supports full-attention layers only")
    length = segment_ids.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=segment_ids.device).tril()
    query, key = segment_ids[:, :, None], segment_ids[:, None, :]
    allowed = causal & ((key == SEG_PREFIX) | (key == query)) & attention_mask.bool()[:, None, :]
    allowed = allowed[:, None]
    if implementation == "sdpa":
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)
