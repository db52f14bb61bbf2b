#!/usr/bin/env bash
# VR-Thinker on the synthetic videos, every stage reading the previous stage's directory through its manifest:
#   1. cold-start SFT on teacher traces            -> $RUNS/sft          (train/vrt_sft.py)
#   2. rejection sampling with the SFT model       -> $RUNS/rejection    (train/vrt_rejection.py)
#   3. SFT on the kept traces, from the SFT model  -> $RUNS/sft2         (train/vrt_sft.py)
#   4. GRPO from the second SFT model              -> $RUNS/grpo         (train/vrt_grpo.py)
#
#   bash train/vr_thinker.sh [RUNS_DIR]          # default runs/vr_thinker; CPU, tiny random model
#
# CPU-sized on purpose: a one-layer tiny model, short episodes (one-line system prompt, one initial frame per video,
# brief teacher reasoning) and few pairs, so each stage finishes in minutes. Every stage is resumable: rerunning the
# script continues a killed stage (SFT restarts). A real run uses the stage configs as they are, with --model_path
# pointing at a checkpoint (e.g. Qwen2.5-VL-7B-Instruct) and the record files of a real dataset.
# Environment: PYTHON (default: .venv/bin/python if it exists, else python), VIDEO_SIZES (synthetic train,val,test
# pairs, default 32,8,0), SFT_EPOCHS (default 6), GRPO_STEPS (default 20).
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${1:-runs/vr_thinker}
if [[ -n "${PYTHON:-}" ]]; then PY=$PYTHON; elif [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python; fi
export FORCE_QWENVL_VIDEO_READER=decord TOKENIZERS_PARALLELISM=false TRL_EXPERIMENTAL_SILENCE=1
DATA=$RUNS/synthetic
VAL=$DATA/videos/val.jsonl

echo "== data: synthetic videos -> $DATA"
"$PY" data/make_synthetic.py --out "$DATA" --seed 0 --image-sizes 0,0,0 --video-sizes "${VIDEO_SIZES:-32,8,0}"
echo "== base model: one-layer tiny VLM (random weights) -> $RUNS/base"
"$PY" -c "import sys; from mmreward.backbones.tiny import build_tiny_vlm; build_tiny_vlm(sys.argv[1], num_layers=1)" \
    "$RUNS/base"

echo "== 1/4 cold-start SFT"
"$PY" train/vrt_sft.py --config train/configs/vrt_sft.yaml --model_path "$RUNS/base" --data "$DATA" \
    --output_dir "$RUNS/sft" --teacher_style brief --system_prompt "Judge." --initial_frames 1 \
    --num_train_epochs "${SFT_EPOCHS:-6}" --learning_rate 5e-3 --warmup_steps 5 --eval_pairs 8 --eval_before true \
    --eval_max_new_tokens 160

echo "== 2/4 rejection sampling"
"$PY" train/vrt_rejection.py --config train/configs/vrt_rejection.yaml --model_path "$RUNS/sft" --data "$DATA" \
    --output_dir "$RUNS/rejection" --samples_per_pair 8 --max_new_tokens 160 --dtype float32

echo "== 3/4 SFT on the kept traces"
"$PY" train/vrt_sft.py --config train/configs/vrt_sft.yaml --model_path "$RUNS/sft" --data "$RUNS/rejection" \
    --output_dir "$RUNS/sft2" --num_train_epochs 2 --learning_rate 1e-3 --warmup_steps 0 --eval_records "$VAL" \
    --eval_pairs 8 --eval_before true --eval_max_new_tokens 160

echo "== 4/4 GRPO"
"$PY" train/vrt_grpo.py --config train/configs/vrt_grpo.yaml --model_path "$RUNS/sft2" --data "$DATA" \
    --output_dir "$RUNS/grpo" --max_steps "${GRPO_STEPS:-20}" --max_new_tokens 160 --eval_pairs 8 --eval_steps 10 \
    --save_steps 10 --learning_rate 1e-3 --temperature 0.7

"$PY" - "$RUNS" <<'EOF'
import json, sys
from pathlib import Path
runs = Path(sys.argv[1])
rows = []
for stage in ("sft", "sft2"):
    metrics = json.loads((runs / stage / "metrics.json").read_text())
    for key in ("eval_before", "eval_after"):
        if key in metrics:
            m = metrics[key]
            rows.append((f"{stage}:{key}", m["format_valid_rate"], m["overall_accuracy"], m["mean_accuracy_reward"]))
rejection = json.loads((runs / "rejection" / "metrics.json").read_text())
grpo = json.loads((runs / "grpo" / "metrics.json").read_text())
for key in ("eval_start", "eval_end"):
    m = grpo[key]
    rows.append((f"grpo:{key}", m["eval/format_valid"], m["eval/accuracy/overall"], m["eval/reward"]))
print(f"{'stage':22s} {'format':>7s} {'overall':>8s} {'reward':>7s}   (SFT: accuracy reward; GRPO: total reward)")
for name, fmt, acc, reward in rows:
    print(f"{name:22s} {fmt:7.3f} {acc:8.3f} {reward:7.3f}")
print(f"rejection sampling: acceptance {rejection['acceptance_rate']:.3f}, kept traces {rejection['kept_traces']}, "
      f"tool calls per trace {rejection['tool_calls_per_trace']}")
EOF
