"""Qwen2-VL / Qwen2.5-VL / Qwen3-VL vision features for a whole batch with one attention call per
segment length.

transformers' Qwen-VL vision towers (sdpa / eager) attend within each frame (and, in Qwen2.5-VL's
windowed blocks, each window) by slicing the packed patch sequence at
`cu_seqlens` and calling attention once per slice: a batch of 64 images costs 64 small calls per
block, so on CPU the vision tower gains almost nothing from batching. `vision_features` computes
the same function with the tower's own modules, but stacks the segments of equal length into one
`[n, heads, len, dim]` attention call (windows of a grid are mostly equal; images of one size
share all of them). The layout of a grid (`t, h, w`) is computed once per distinct grid and reused.

Handled towers (`supports_batched_vision`): `Qwen2_5_VisionTransformerPretrainedModel` (window
attention, full attention in `fullatt_block_indexes`), `Qwen2VisionTransformerPretrainedModel`
(every block attends within a frame) and `Qwen3VLVisionModel` (within a frame, plus learned
position embeddings and the deepstack features of some blocks). Other towers go through their
own forward.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["supports_batched_vision", "segment_attention", "vision_features", "vision_outputs"]


def supports_batched_vision(visual: nn.Module) -> bool:
    """True for a Qwen2-VL, Qwen2.5-VL or Qwen3-VL vision tower (the layouts this module reproduces)."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VisionTransformerPretrainedModel
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionModel

    return type(visual) in (Qwen2_5_VisionTransformerPretrainedModel, Qwen2VisionTransformerPretrainedModel,
                            Qwen3VLVisionModel)


def _windowed(visual: nn.Module) -> bool:
    """Qwen2.5-VL's tower attends within windows except in its full-attention blocks; Qwen2-VL's never."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

    return type(visual) is Qwen2_5_VisionTransformerPretrainedModel


@dataclass(frozen=True)
class _GridLayout:
    """Attention layout of one (t, h, w) patch grid (indices local to the grid)."""

    rope_positions: torch.Tensor  # [t*h*w, 2] (row, column) of each patch, merge-block order
    frame_lengths: tuple[int, ...]  # patches per frame (full-attention blocks attend within a frame)
    window_index: torch.Tensor | None = None  # [t*h*w / unit] merged-token order within windows
    window_lengths: tuple[int, ...] = ()  # patches per non-empty window, in window order


@lru_cache(maxsize=256)
def _grid_layout(t: int, h: int, w: int, merge: int, window: tuple[int, int] | None) -> _GridLayout:
    """window: the tower's (window_size, patch_size); None for a tower without windows (Qwen2-VL)."""
    from transformers.vision_utils import get_vision_position_ids, get_vision_window_index

    grid = torch.tensor([[t, h, w]])
    positions = get_vision_position_ids(grid, merge)
    if window is None:
        return _GridLayout(positions, (h * w,) * t)
    window_index, cu_windows = get_vision_window_index(grid, merge, *window)
    lengths = tuple(int(n) for n in (cu_windows[1:] - cu_windows[:-1]).tolist() if n > 0)
    return _GridLayout(positions, (h * w,) * t, window_index, lengths)


def _segments_by_length(lengths: list[int]) -> dict[int, torch.Tensor]:
    """length -> start offsets of the segments of that length (segments laid end to end)."""
    groups: dict[int, list[int]] = {}
    start = 0
    for n in lengths:
        groups.setdefault(n, []).append(start)
        start += n
    return {n: torch.tensor(starts) for n, starts in groups.items()}


def segment_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      segments: dict[int, torch.Tensor], scale: float) -> torch.Tensor:
    """Bidirectional attention within segments of packed `[S, heads, dim]` tensors.

    segments: length -> start offsets (`_segments_by_length`), together covering `[0, S)`.
    Segments of one length go through one batched `scaled_dot_product_attention` call.
    """
    total, heads, dim = query.shape
    if len(segments) == 1:  # all equal: the packed sequence is a plain batch of windows
        (n,) = segments
        q, k, v = (x.view(total // n, n, heads, dim).transpose(1, 2) for x in (query, key, value))
        out = F.scaled_dot_product_attention(q, k, v, scale=scale)
        return out.transpose(1, 2).reshape(total, heads, dim)
    out = torch.empty_like(query)
    for n, starts in segments.items():
        index = (starts.to(query.device)[:, None] + torch.arange(n, device=query.device)).reshape(-1)
        q, k, v = (x[index].view(-1, n, heads, dim).transpose(1, 2) for x in (query, key, value))
        attended = F.scaled_dot_product_attention(q, k, v, scale=scale)
        out[index] = attended.transpose(1, 2).reshape(-1, heads, dim)
    return out


def _attention(attn: nn.Module, hidden: torch.Tensor, segments: dict[int, torch.Tensor],
               cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """What the tower's vision attention `forward` computes, with `segment_attention` for the slices."""
    rotary = importlib.import_module(type(attn).__module__).apply_rotary_pos_emb_vision  # the family's own

    length = hidden.shape[0]
    query, key, value = attn.qkv(hidden).reshape(length, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    query, key = rotary(query, key, cos, sin)
    out = segment_attention(query, key, value, segments, attn.scaling)
    return attn.proj(out.reshape(length, -1))


def _patch_embed(embed: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """The patch embedding as one matrix product: its Conv3d's kernel equals its stride, so each
    output is the dot product of one flattened patch with one flattened filter, plus the bias
    (CPU convolution kernels are several times slower at this shape)."""
    proj = embed.proj
    if tuple(proj.stride) != tuple(proj.weight.shape[2:]):
        return embed(pixel_values)
    weight = proj.weight.reshape(proj.weight.shape[0], -1)
    patches = pixel_values.reshape(-1, weight.shape[1]).to(weight.dtype)
    return F.linear(patches, weight, proj.bias)


def vision_features(visual: nn.Module, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
    """Merged vision tokens `[sum(t*h*w) / merge^2, out_hidden]` of every image / video, in input order.

    The same values as `visual(pixel_values, grid_thw=grid_thw).pooler_output`.
    """
    return vision_outputs(visual, pixel_values, grid_thw)[0]


def vision_outputs(visual: nn.Module, pixel_values: torch.Tensor, grid_thw: torch.Tensor
                   ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """`(merged tokens, deepstack features)`: the tower's `pooler_output` and, for Qwen3-VL, its
    `deepstack_features` (one `[tokens, out_hidden]` tensor per deepstack block; [] for the others)."""
    if not supports_batched_vision(visual):
        raise TypeError(f"{type(visual).__name__}: batched vision features support Qwen2-VL, Qwen2.5-VL and "
                        "Qwen3-VL towers only")
    merge = visual.spatial_merge_size
    windowed = _windowed(visual)
    window = (visual.window_size, visual.patch_size) if windowed else None
    layouts = [_grid_layout(int(t), int(h), int(w), merge, window) for t, h, w in grid_thw.tolist()]
    device = pixel_values.device
    positions = torch.cat([layout.rope_positions for layout in layouts]).to(device)
    frames = _segments_by_length([n for layout in layouts for n in layout.frame_lengths])

    hidden = _patch_embed(visual.patch_embed, pixel_values.type(visual.dtype))
    if hasattr(visual, "pos_embed"):  # Qwen3-VL: a learned grid resampled to each image's grid
        hidden = hidden + _learned_positions(visual, grid_thw).to(hidden.dtype)
    cos, sin = visual.rotary_pos_emb(hidden, positions)
    block_segments = [frames] * len(visual.blocks)
    window_index = None
    if windowed:  # reorder patches window by window; full-attention blocks still attend per frame
        window_parts, offset = [], 0  # window indices count merged tokens, offset per grid
        for layout in layouts:
            window_parts.append(layout.window_index + offset)
            offset += len(layout.window_index)
        window_index = torch.cat(window_parts).to(device)
        windows = _segments_by_length([n for layout in layouts for n in layout.window_lengths])
        block_segments = [frames if number in visual.fullatt_block_indexes else windows
                          for number in range(len(visual.blocks))]
        length, unit = hidden.shape[0], visual.spatial_merge_unit
        hidden, cos, sin = (x.reshape(length // unit, unit, -1)[window_index].reshape(length, -1)
                            for x in (hidden, cos, sin))

    deepstack_blocks = list(getattr(visual, "deepstack_visual_indexes", ()))  # Qwen3-VL only
    deepstack = []
    for number, (block, segments) in enumerate(zip(visual.blocks, block_segments)):
        hidden = hidden + _attention(block.attn, block.norm1(hidden), segments, cos, sin)
        hidden = hidden + block.mlp(block.norm2(hidden))
        if number in deepstack_blocks:
            deepstack.append(visual.deepstack_merger_list[deepstack_blocks.index(number)](hidden))
    merged = visual.merger(hidden)
    return (merged if window_index is None else merged[torch.argsort(window_index)]), deepstack


def _learned_positions(visual: nn.Module, grid_thw: torch.Tensor) -> torch.Tensor:
    """Qwen3-VL's position embedding of every patch, as its tower's forward computes it."""
    from transformers.vision_utils import get_vision_interpolation_indices_and_weights

    indices, weights = get_vision_interpolation_indices_and_weights(
        grid_thw, num_grid_per_side=visual.num_grid_per_side, mode=visual.interpolation_mode,
        align_corners=visual.interpolation_align_corners, spatial_merge_size=visual.config.spatial_merge_size,
    )
    return (visual.pos_embed(indices) * weights[:, :, None]).sum(1)
