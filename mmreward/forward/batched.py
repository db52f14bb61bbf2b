"""Inference rewards for large batches of Qwen2-VL / Qwen2.5-VL / Qwen3-VL inputs: the same values
as `RewardModel.score`, computed without its per-sequence and per-image work.

`RewardModel.score` runs the transformers model as is. For a batch of B sequences that costs:
`get_rope_index` loops over the sequences in Python; the vision tower attends one window at a
time; and a padded batch builds a `[B, 1, L, L]` mask that sends every attention layer down the
masked (slower) kernel. `batched_rewards` does the same computation with:

- M-RoPE positions from `rope_positions`, vectorised over the batch (the rules of
  `get_rope_index`: text advances by one per token, a vision run is laid out on its (t, h, w)
  grid from the current position, and the text after it continues at `start + max(h, w) / merge`;
  Qwen2.5-VL spaces a video's temporal patches by their duration, Qwen2-VL by one position, and
  Qwen3-VL lays out each frame as its own run between timestamp tokens);
- vision features from `mmreward.forward.vision` (windows of equal length share one call), each
  distinct image / video encoded once (both sides of a response pair usually show the same one);
- right padding and no attention mask in the language model: with every row's padding at its
  end, causal attention alone keeps real tokens from seeing padding, so the language model takes
  its unmasked causal kernel. Left-padded rows are shifted to the right first;
- rows run in length groups (`length_groups`), each padded only to its own longest row;
- the last decoder layer computes queries, attention and MLP only at the head's read positions
  (keys and values still for every token): no other position's output reaches the reward;
- Qwen3-VL's deepstack features are added to the media tokens' hidden states after the first
  layers, as its language model does.

Positions are always passed to the language model explicitly (a forward from `inputs_embeds`
alone would fall back to plain 1-D positions for the media tokens); a model whose settings ask for
"sequential" positions (VideoAlign's checkpoints) gets exactly those.

Qwen2-VL, Qwen2.5-VL and Qwen3-VL backbones qualify (`supports_batched_rewards`); the evaluation
scorer uses `RewardModel.score` for the others.
"""

from __future__ import annotations

import importlib
from typing import Any, Mapping

import torch
import torch.nn.functional as F

from mmreward.backbones.vlm import unwrap_peft
from mmreward.forward.vision import supports_batched_vision, vision_outputs
from mmreward.model import sequential_positions

__all__ = ["supports_batched_rewards", "rope_positions", "right_align", "length_groups", "CALL_COST_TOKENS",
           "unique_media", "batched_rewards"]


def _inner(model: Any) -> torch.nn.Module:
    return unwrap_peft(model.backbone).model


def supports_batched_rewards(model: Any) -> bool:
    """True when `batched_rewards` reproduces `model.score` (a Qwen2-VL, Qwen2.5-VL or Qwen3-VL backbone)."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLModel
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLModel
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLModel

    inner = _inner(model)
    if type(inner) not in (Qwen2_5_VLModel, Qwen2VLModel, Qwen3VLModel) or not supports_batched_vision(inner.visual):
        return False
    text = inner.language_model.config
    # The language model runs without a mask (sdpa's causal kernel) and its last layer is computed
    # here for one query per row: full causal attention in every layer only.
    return (text._attn_implementation == "sdpa"
            and all(t == "full_attention" for t in (getattr(text, "layer_types", None) or ()))
            and not getattr(text, "use_sliding_window", False))


def right_align(inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`inputs` with every row's real tokens moved to the front (right padding); media keys untouched."""
    mask = inputs["attention_mask"].bool()
    if not (mask[:, 1:] & ~mask[:, :-1]).any():  # no real token after a pad: already right-aligned
        return dict(inputs)
    # Stable sort on "is padding" moves real tokens first and keeps their order.
    order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices
    out = dict(inputs)
    for name in ("input_ids", "attention_mask", "mm_token_type_ids"):
        if name in inputs:
            out[name] = inputs[name].gather(1, order)
    return out


def rope_positions(
    input_ids: torch.Tensor,
    mm_token_type_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    spatial_merge_size: int,
    tokens_per_second: float,
    image_grid_thw: torch.Tensor | None = None,
    video_grid_thw: torch.Tensor | None = None,
    second_per_grid_ts: torch.Tensor | None = None,
) -> torch.Tensor:
    """`[3, B, L]` M-RoPE positions of right-padded rows (padding gets 0), as `get_rope_index` gives.

    mm_token_type_ids: 0 text, 1 image, 2 video; each run of equal non-zero types is one image /
    video, matched in order (row by row) with `image_grid_thw` / `video_grid_thw`. A video's
    temporal patches lie `tokens_per_second * second_per_grid_ts` positions apart (Qwen2.5-VL;
    seconds default to 1); Qwen2-VL's one position apart is `tokens_per_second=1` without seconds.
    """
    batch, length = input_ids.shape
    device = input_ids.device
    mask = attention_mask.bool()
    types = torch.where(mask, mm_token_type_ids.long(), 0)
    vision = types > 0
    previous = F.pad(types[:, :-1], (1, 0), value=0)
    starts_flat = (vision & (types != previous)).reshape(-1)
    run_start = starts_flat.nonzero().squeeze(1)  # flat index of each vision run's first token
    run_type = types.reshape(-1)[run_start]

    # Grid and temporal spacing of each run, in order of appearance.
    grids = torch.zeros(len(run_start), 3, dtype=torch.long, device=device)
    interval_dtype = second_per_grid_ts.dtype if second_per_grid_ts is not None else torch.float32
    interval = torch.ones(len(run_start), dtype=interval_dtype, device=device)
    for kind, thw in ((1, image_grid_thw), (2, video_grid_thw)):
        runs = run_type == kind
        count = int(runs.sum())
        given = 0 if thw is None else len(thw)
        if count != given:
            name = "image" if kind == 1 else "video"
            raise ValueError(f"{count} {name} token runs in the batch but {given} {name} grids")
        if count:
            grids[runs] = thw.to(device=device, dtype=torch.long)
        if kind == 2 and count:
            seconds = (second_per_grid_ts.to(device) if second_per_grid_ts is not None
                       else torch.ones(count, device=device))
            interval[runs] = (tokens_per_second * seconds).to(interval_dtype)
    merge = spatial_merge_size
    grid_t, grid_h, grid_w = grids[:, 0], grids[:, 1] // merge, grids[:, 2] // merge
    advance = torch.maximum(grids[:, 1], grids[:, 2]) // merge  # text after the run continues here

    # Exclusive running shift: each vision token adds 1, each run gives back its advance.
    delta = vision.long().reshape(-1)
    delta[run_start] -= advance
    delta = delta.view(batch, length)
    shift = delta.cumsum(dim=1) - delta
    index = torch.arange(length, device=device).expand(batch, length)
    text_pos = index - shift

    if not len(run_start):
        return torch.where(mask, text_pos, 0).expand(3, batch, length).to(input_ids.dtype)
    run_of = (starts_flat.long().cumsum(0) - 1).clamp(min=0).view(batch, length)  # run of each vision token
    found = torch.bincount(run_of[vision], minlength=len(run_start))
    if not torch.equal(found, grid_t * grid_h * grid_w):
        raise ValueError(f"vision token runs of {found.tolist()} tokens for grids of "
                         f"{(grid_t * grid_h * grid_w).tolist()} merged patches")
    offset = torch.arange(batch * length, device=device).view(batch, length) - run_start[run_of]
    start_pos = text_pos.reshape(-1)[run_start][run_of]
    plane, width = (grid_h * grid_w)[run_of], grid_w[run_of]
    t_pos = start_pos + (torch.div(offset, plane, rounding_mode="floor").to(interval_dtype) * interval[run_of]).long()
    h_pos = start_pos + torch.div(offset, width, rounding_mode="floor") % grid_h[run_of]
    w_pos = start_pos + offset % width
    positions = torch.where(vision, torch.stack([t_pos, h_pos, w_pos]), text_pos)
    return torch.where(mask, positions, 0).to(input_ids.dtype)


# A language-model call costs about as much as this many more padded tokens (Python and kernel
# launch overhead); `length_groups` splits a batch only where that saves more padding.
CALL_COST_TOKENS = 256


def length_groups(lengths: list[int], call_cost: float = CALL_COST_TOKENS) -> list[list[int]]:
    """Row indices grouped by length so that `sum(call_cost + rows * longest)` over groups is minimal.

    Each group is a run of the rows sorted by length (shortest first); each is padded only to its
    own longest row.
    """
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    ordered = [lengths[i] for i in order]
    best = [0.0] + [float("inf")] * len(order)  # best[j]: cost of the j shortest rows
    cut = [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        for start in range(end):
            cost = best[start] + call_cost + (end - start) * ordered[end - 1]
            if cost < best[end]:
                best[end], cut[end] = cost, start
    groups, end = [], len(order)
    while end > 0:
        groups.append(order[cut[end]:end])
        end = cut[end]
    return groups[::-1]


def _read_hidden(language_model: torch.nn.Module, embeds: torch.Tensor, positions: torch.Tensor,
                 read: torch.Tensor, deepstack: list[torch.Tensor] = ()) -> torch.Tensor:
    """Final (normed) hidden states `[n, r, H]` at the indices `read` `[n, r]` of each right-padded row.

    Every layer but the last runs as transformers runs it, without a mask (right padding: causal
    attention alone keeps real tokens from seeing padding). The reward reads r positions per row,
    so the last layer computes keys and values for every token but queries, attention outputs and
    MLP only at those positions. `deepstack[i]` (`embeds`' shape, zero outside media tokens) is
    added after layer i (Qwen3-VL).
    """
    attn = language_model.layers[-1].self_attn
    family = importlib.import_module(type(attn).__module__)  # the backbone's own rotary and repeat_kv
    apply_rotary_pos_emb, repeat_kv = family.apply_rotary_pos_emb, family.repeat_kv

    cos, sin = language_model.rotary_emb(embeds, positions)
    hidden = embeds
    *layers, final = language_model.layers
    for number, layer in enumerate(layers):
        hidden = layer(hidden, attention_mask=None, position_embeddings=(cos, sin), use_cache=False)
        if number < len(deepstack):
            hidden = hidden + deepstack[number]
    rows = torch.arange(hidden.shape[0], device=hidden.device)[:, None]
    normed = final.input_layernorm(hidden)
    batch, length, _ = normed.shape
    reads = read.shape[1]
    # Qwen3 normalises each head's query and key before the rotation; the others do not.
    q_norm, k_norm = getattr(attn, "q_norm", torch.nn.Identity()), getattr(attn, "k_norm", torch.nn.Identity())
    key = k_norm(attn.k_proj(normed).view(batch, length, -1, attn.head_dim)).transpose(1, 2)
    value = attn.v_proj(normed).view(batch, length, -1, attn.head_dim).transpose(1, 2)
    query = q_norm(attn.q_proj(normed[rows, read]).view(batch, reads, -1, attn.head_dim)).transpose(1, 2)
    query, _ = apply_rotary_pos_emb(query, query, cos[rows, read], sin[rows, read])
    _, key = apply_rotary_pos_emb(key, key, cos, sin)
    visible = torch.arange(length, device=hidden.device)[None, None, :] <= read[:, :, None]  # causal, per query
    out = F.scaled_dot_product_attention(query, repeat_kv(key, attn.num_key_value_groups),
                                         repeat_kv(value, attn.num_key_value_groups),
                                         attn_mask=visible[:, None], scale=attn.scaling)
    out = attn.o_proj(out.transpose(1, 2).reshape(batch, reads, -1))
    state = hidden[rows, read] + out
    state = state + final.mlp(final.post_attention_layernorm(state))
    if len(layers) < len(deepstack):  # a deepstack feature after the last layer too
        state = state + deepstack[len(layers)][rows, read]
    return language_model.norm(state)


def unique_media(pixels: torch.Tensor, grid_thw: torch.Tensor) -> tuple[list[int], list[int]]:
    """Repeated images / videos in a batch (e.g. both sides of a response pair show one image).

    Returns `(keep, copy_of)`: the items to encode (first occurrences) and, for every item, the
    position in `keep` of the item with identical grid and pixels. Items with equal grid and pixel
    sum are candidates; all candidates are then checked for equality at once, so on a GPU the
    whole search waits for the device twice, not once per item.
    """
    sizes = grid_thw.prod(-1).tolist()
    grids = [tuple(g) for g in grid_thw.tolist()]
    chunks = torch.split(pixels, sizes)
    sums = torch.stack([chunk.sum(dtype=torch.float64) for chunk in chunks]).tolist()
    first: dict[tuple, int] = {}  # (grid, pixel sum) -> first item with it
    candidates: list[tuple[int, int]] = []  # (item, earlier item it may repeat)
    for i, key in enumerate(zip(grids, sums)):
        if key in first:
            candidates.append((i, first[key]))
        else:
            first[key] = i
    repeats: dict[int, int] = {}
    if candidates:
        equal = torch.stack([(chunks[i] == chunks[j]).all() for i, j in candidates]).tolist()
        if not all(equal):  # equal sums, different pixels (rare): compare against every earlier item
            return _unique_media_pairwise(chunks, grids, sums)
        repeats = dict(candidates)
    keep: list[int] = []
    copy_of: list[int] = []
    for i in range(len(sizes)):
        if i in repeats:
            copy_of.append(copy_of[repeats[i]])
        else:
            copy_of.append(len(keep))
            keep.append(i)
    return keep, copy_of


def _unique_media_pairwise(chunks: tuple[torch.Tensor, ...], grids: list[tuple], sums: list[float]
                           ) -> tuple[list[int], list[int]]:
    keep: list[int] = []
    copy_of: list[int] = []
    seen: dict[tuple, list[int]] = {}  # (grid, pixel sum) -> positions in keep; equality decides
    for i, key in enumerate(zip(grids, sums)):
        match = next((k for k in seen.get(key, []) if torch.equal(chunks[keep[k]], chunks[i])), None)
        if match is None:
            match = len(keep)
            seen.setdefault(key, []).append(match)
            keep.append(i)
        copy_of.append(match)
    return keep, copy_of


def _media_features(visual: torch.nn.Module, pixels: torch.Tensor, grid_thw: torch.Tensor
                    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """`vision_outputs` of every item (merged tokens, deepstack features), each distinct item encoded once."""
    keep, copy_of = unique_media(pixels, grid_thw)
    if len(keep) == len(copy_of):
        return vision_outputs(visual, pixels, grid_thw)
    chunks = torch.split(pixels, grid_thw.prod(-1).tolist())
    grid = grid_thw[keep]
    features, deepstack = vision_outputs(visual, torch.cat([chunks[i] for i in keep]), grid)
    sizes = (grid.prod(-1) // visual.spatial_merge_size ** 2).tolist()

    def per_item(x: torch.Tensor) -> torch.Tensor:
        parts = torch.split(x, sizes)
        return torch.cat([parts[k] for k in copy_of])

    return per_item(features), [per_item(x) for x in deepstack]


def _rope_video_args(inner: torch.nn.Module, inputs: Mapping[str, torch.Tensor]
                     ) -> tuple[float, torch.Tensor | None, torch.Tensor | None]:
    """`(tokens_per_second, second_per_grid_ts, video_grid_thw)` for `rope_positions`, as the backbone's
    `get_rope_index` lays out videos: temporal patches spaced by duration in Qwen2.5-VL, one position
    apart in Qwen2-VL, and in Qwen3-VL one run per frame (timestamp tokens separate the frames)."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLModel
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLModel

    grid = inputs.get("video_grid_thw")
    if type(inner) is Qwen2_5_VLModel:
        return inner.config.vision_config.tokens_per_second, inputs.get("second_per_grid_ts"), grid
    if type(inner) is Qwen3VLModel and grid is not None:
        grid = torch.repeat_interleave(grid, grid[:, 0], dim=0)
        grid[:, 0] = 1
    return 1.0, None, grid


def batched_rewards(model: Any, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Rewards `[N, k]` of a processor batch (`collate.encode_sides` layout): `model.score(inputs)`'s values."""
    if "segment_ids" in inputs:
        raise ValueError("batched_rewards takes one sequence per side, not packed pairs")
    if not supports_batched_rewards(model):
        raise TypeError("batched_rewards supports Qwen2-VL, Qwen2.5-VL and Qwen3-VL backbones only")
    inner = _inner(model)
    inputs = right_align(inputs)
    input_ids, mask = inputs["input_ids"], inputs["attention_mask"]
    mm_types = inputs.get("mm_token_type_ids")
    if mm_types is None:  # as RewardModel does: without types every token is positioned as text
        mm_types = torch.zeros_like(input_ids)
    config = inner.config
    if model.settings.positions == "sequential":
        positions = sequential_positions(mask)
    else:
        tokens_per_second, seconds, video_grid = _rope_video_args(inner, inputs)
        positions = rope_positions(
            input_ids, mm_types, mask, config.vision_config.spatial_merge_size, tokens_per_second,
            inputs.get("image_grid_thw"), video_grid, seconds,
        )
    embeds = inner.get_input_embeddings()(input_ids)
    deepstack: list[torch.Tensor] = []  # per deepstack layer: `embeds`' shape, zero outside media tokens
    for pixels_key, grid_key, token_id in (("pixel_values", "image_grid_thw", config.image_token_id),
                                           ("pixel_values_videos", "video_grid_thw", config.video_token_id)):
        if inputs.get(pixels_key) is None:
            continue
        features, extra = _media_features(inner.visual, inputs[pixels_key], inputs[grid_key])
        slots = (input_ids == token_id).unsqueeze(-1)
        if int(slots.sum()) != features.shape[0]:
            raise ValueError(f"{int(slots.sum())} {pixels_key} placeholder tokens for {features.shape[0]} features")
        embeds = embeds.masked_scatter(slots, features.to(embeds.dtype))
        if not deepstack:
            deepstack = [torch.zeros_like(embeds) for _ in extra]
        deepstack = [d.masked_scatter(slots, x.to(d.dtype)) for d, x in zip(deepstack, extra)]
    head = model.head
    read = head.read_positions(input_ids, mask)
    lengths = mask.sum(dim=1)
    row_lengths = lengths.tolist()  # one read-back; group widths come from this list
    hidden = embeds.new_empty(len(row_lengths), read.shape[1], embeds.shape[-1])
    for rows in length_groups(row_lengths):
        index = torch.tensor(rows, device=embeds.device)
        width = max(row_lengths[r] for r in rows)
        hidden[index] = _read_hidden(inner.language_model, embeds[index, :width], positions[:, index, :width],
                                     read[index], [d[index, :width] for d in deepstack])
    lm_head = unwrap_peft(model.backbone).get_output_embeddings() if head.uses_lm_head else None
    return head.to_reward(head(hidden, lm_head))
