"""Ways to run a Qwen-VL backbone for rewards, besides `RewardModel.forward` itself:

- `batched`: inference rewards of large batches with `RewardModel.score`'s values and less
  per-sequence work (vectorised M-RoPE, length groups without masks, the last layer only at the
  read positions), used by evaluation, one-call scoring and reward functions;
- `vision`: the vision towers' windows and frames batched by length (used by `batched`);
- `packed`: the shared-prefix pair form for training on response pairs (one sequence per pair).
"""
