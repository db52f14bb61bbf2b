#!/usr/bin/env bash
# VR-Thinker on the synthetic videos, every stage reading the previous stage's directory through its manifest:
#   1. cold-start SFT on teacher traces            -> $RUNS/sft          (train/vrt_sft.py)
#   2. rejection sampling with the SFT model       -> $RUNS/rejection    (train/vrt_rejection.py)
#   3. SFT on the kept traces, from the SFT model  -> $RUNS/sft2         (train/vrt_sft.py)
#   4. GRPO from the second SFT model              -> $RUNS/grpo         (train/vrt_grpo.py)
#
#   bash train/vr_thinker.sh [RUNS_DIR]          # default runs/vr_thinker; CPU, tiny random model
#
# Every stage speaks the vr-thinker protocol (vr_thinker/presets/vr-thinker.yaml: the paper's released checkpoint's
# tags, frame numbering, tool replies, limits, rewards and GRPO settings). CPU-sized on purpose, with the recipe under
# which the SFT stage teaches a tiny random model the format (see tests/train/test_vrt_sft.py): 48 px clips of
# 8 frames, a tiny VLM with eight attention heads, brief teacher traces and the CPU overrides of
# train/configs/vrt_sft.yaml (8 frames per video pool, 256 tokens per turn, short instruction texts), which every
# later stage inherits through the model directory's vr_thinker.json. Measured on 2 heavily loaded CPU cores: about 35 minutes,
# 25 of them the 600 cold-start SFT steps (about 0.2 CPU s per step, so roughly 10 minutes on quiet cores);
# held-out format-valid rate 0 -> 0.875 after SFT, rejection sampling keeps ~3% of the samples (the kept set
# is small, so the second SFT is short and gentle), GRPO reward 0.92 -> 1.08 in 20 steps.
# Rerunning the script continues a killed rejection-sampling or GRPO stage (SFT restarts). A real run uses the stage
# configs with --model_path pointing at a checkpoint (e.g. Qwen2.5-VL-7B-Instruct) and a real dataset's records.
# Environment: PYTHON (default: .venv/bin/python if it exists, else python), VIDEO_SIZES (synthetic train,val,test
# pairs, default 32,8,0), SFT_STEPS (cold start, default 600), GRPO_STEPS (default 20).
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${1:-runs/vr_thinker}
if [[ -n "${PYTHON:-}" ]]; then PY=$PYTHON; elif [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python; fi
export FORCE_QWENVL_VIDEO_READER=decord TOKENIZERS_PARALLELISM=false
DATA=$RUNS/synthetic
VAL=$DATA/videos/val.jsonl

echo "== data: synthetic videos (48 px, 8 frames) -> $DATA"
"$PY" - "$DATA" "${VIDEO_SIZES:-32,8,0}" <<'PYTHON'
import sys
from mmreward.data.synthetic import SplitSizes, SyntheticConfig, generate_synthetic
train, val, test = (int(v) for v in sys.argv[2].split(","))
config = SyntheticConfig(image_splits=SplitSizes(0, 0, 0), video_splits=SplitSizes(train, val, test), num_frames=8,
                         video_size=48)
generate_synthetic(sys.argv[1], seed=0, config=config)
PYTHON

echo "== base model: tiny VLM with random weights (8 heads) -> $RUNS/base"
"$PY" -c "import sys; from mmreward.backbones.tiny import build_tiny_vlm; build_tiny_vlm(sys.argv[1], num_heads=8, num_kv_heads=4)" \
    "$RUNS/base"

echo "== 1/4 cold-start SFT on teacher traces"
"$PY" train/vrt_sft.py --config train/configs/vrt_sft.yaml --model_path "$RUNS/base" --data "$DATA" \
    --output_dir "$RUNS/sft" --max_steps "${SFT_STEPS:-600}" --eval_pairs 8 --eval_before true

echo "== 2/4 rejection sampling"
"$PY" train/vrt_rejection.py --config train/configs/vrt_rejection.yaml --model_path "$RUNS/sft" --data "$DATA" \
    --output_dir "$RUNS/rejection" --samples_per_pair 8 --temperature 0.7 --dtype float32

echo "== 3/4 SFT on the kept traces"
"$PY" train/vrt_sft.py --config train/configs/vrt_sft.yaml --model_path "$RUNS/sft" --data "$RUNS/rejection" \
    --output_dir "$RUNS/sft2" --max_steps 30 --learning_rate 2e-4 --warmup_steps 0 --eval_records "$VAL" \
    --eval_pairs 8 --eval_before true

echo "== 4/4 GRPO"
"$PY" train/vrt_grpo.py --config train/configs/vrt_grpo.yaml --model_path "$RUNS/sft2" --data "$DATA" \
    --output_dir "$RUNS/grpo" --max_steps "${GRPO_STEPS:-20}" --eval_pairs 8 --eval_steps 10 \
    --save_steps 10 --learning_rate 3e-4

echo "== stage by stage (8 held-out pairs; SFT: greedy, accuracy reward; GRPO: greedy, total reward)"
"$PY" - "$RUNS" <<'PYTHON'
import json
import sys
from pathlib import Path

runs = Path(sys.argv[1])
rows = []
for stage in ("sft", "sft2"):
    metrics = json.loads((runs / stage / "metrics.json").read_text())
    for key in ("eval_before", "eval_after"):
        if key in metrics:
            m = metrics[key]
            rows.append((f"{stage}:{key}", m["format_valid_rate"], m["overall_accuracy"], m["mean_accuracy_reward"]))
grpo = json.loads((runs / "grpo" / "metrics.json").read_text())
overall = json.loads((runs / "grpo" / "vr_thinker.json").read_text())["preset"]["answer"]["overall_key"]
for key in ("eval_start", "eval_end"):
    m = grpo[key]
    rows.append((f"grpo:{key}", m["eval/format_valid"], m[f"eval/accuracy/{overall}"], m["eval/reward"]))
print(f"{'stage':18s} {'format':>7s} {'overall':>8s} {'reward':>7s}")
for name, fmt, acc, reward in rows:
    print(f"{name:18s} {fmt:7.3f} {acc:8.3f} {reward:7.3f}")
rejection = json.loads((runs / "rejection" / "metrics.json").read_text())
print(f"rejection sampling: acceptance {rejection['acceptance_rate']:.3f}, kept traces {rejection['kept_traces']}, "
      f"tool calls per trace {rejection['tool_calls_per_trace']}")
print(f"example trace: {runs / 'grpo' / 'example_trace.html'}")
PYTHON
