#!/usr/bin/env bash
# GPU validation in one go (about 4 minutes on one H100, before the sharded steps were added): the `gpu`-marked
# tests, the reward stage in bf16 on one GPU (plain, and through the FSDP2 and DeepSpeed accelerate configs), the
# VR-Thinker SFT stage through ZeRO-3 and FSDP2, and the benchmarks on CUDA,
# including pair training on a random model with Qwen2.5-VL-3B's shapes in bf16.
#
#   bash bench/gpu_check.sh [OUT_DIR]          # default OUT_DIR: runs/gpu_check
#
# Each step's full log goes to OUT_DIR/<step>.log; the console gets each step's exit status, time
# and RESULT lines, and summary.txt collects them. A failing step does not stop the later ones;
# the script's exit status is the number of failed steps. PYTHON overrides the interpreter
# (default: python3); STEP_TIMEOUT (seconds, default 300) bounds each step.
set -u
PY=${PYTHON:-python3}
OUT=${1:-runs/gpu_check}
STEP_TIMEOUT=${STEP_TIMEOUT:-300}
mkdir -p "$OUT"
export FORCE_QWENVL_VIDEO_READER=decord TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
failed=0

step() {  # step NAME COMMAND...: run with a time limit, log it, keep going on failure
    local name=$1 start rc
    shift
    start=$(date +%s)
    timeout "$STEP_TIMEOUT" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    [ "$rc" -ne 0 ] && failed=$((failed + 1)) && tail -n 25 "$OUT/$name.log"
    grep -hE "^RESULT|passed|failed|skipped|error" "$OUT/$name.log" | tail -n 3
    echo "step $name: exit $rc, $(($(date +%s) - start)) s" | tee -a "$OUT/summary.txt"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/summary.txt"
$PY -c "import torch, transformers, trl, peft, accelerate, importlib.util as u; print('torch', torch.__version__, \
'transformers', transformers.__version__, 'trl', trl.__version__, 'peft', peft.__version__, 'accelerate', \
accelerate.__version__, 'flash_attn', u.find_spec('flash_attn') is not None, 'vllm', u.find_spec('vllm') is not None)" \
    | tee -a "$OUT/summary.txt"

step gpu_tests $PY -m pytest -m gpu -q -p no:cacheprovider --import-mode=importlib tests/gpu tests/vr_thinker/test_rollout.py
step pair_training_3b_short $PY bench/pair_training.py --preset 3b --device cuda --dtype bfloat16 --steps 10
step pair_training_3b_long $PY bench/pair_training.py --preset 3b --device cuda --dtype bfloat16 --steps 10 \
    --response_words 40 40
# (4 pairs per step does not fit the naive form on an 80 GB card with full fine-tuning: out of memory.)

# The reward stage on a GPU: bf16 weights, SDPA, then the same through the FSDP2 config (1 process).
step synthetic_data $PY data/make_synthetic.py --out "$OUT/synthetic" --image-sizes 256,64,0 --video-sizes 8,4,0
stage_args=(--config train/configs/reward_image.yaml --train_file "$OUT/synthetic/images/train.jsonl"
            --val_file "$OUT/synthetic/images/val.jsonl" --max_steps 60 --eval_steps 30 --save_steps 30
            --curriculum_steps 0 --torch_threads 0)
step reward_stage_bf16 $PY -m accelerate.commands.launch --num_processes 1 --num_machines 1 --mixed_precision no \
    --dynamo_backend no train/reward.py "${stage_args[@]}" --dtype bfloat16 --output_dir "$OUT/reward_bf16"
step reward_stage_fsdp $PY -m accelerate.commands.launch --config_file train/accelerate/fsdp.yaml --num_processes 1 \
    train/reward.py "${stage_args[@]}" --dtype float32 --output_dir "$OUT/reward_fsdp"
# The sharded configs on one GPU (1 process each, their bf16; the CPU tests run them with 2 processes).
for mode in deepspeed_zero2 deepspeed_zero3 deepspeed_zero3_offload; do
    step "reward_stage_$mode" $PY -m accelerate.commands.launch --config_file "train/accelerate/$mode.yaml" \
        --num_processes 1 train/reward.py "${stage_args[@]}" --dtype float32 --output_dir "$OUT/reward_$mode"
done
sft_args=(--config train/configs/vrt_sft.yaml --model_path tiny --data "$OUT/synthetic_videos" --max_pairs 8 --max_steps 20
          --eval_pairs 0 --eval_before false --save_strategy steps --save_steps 10 --report_to none)
step synthetic_videos $PY data/make_synthetic.py --out "$OUT/synthetic_videos" --image-sizes 0,0,0 --video-sizes 16,4,0
for mode in deepspeed_zero3 fsdp; do
    step "vrt_sft_$mode" $PY -m accelerate.commands.launch --config_file "train/accelerate/$mode.yaml" \
        --num_processes 1 train/vrt_sft.py "${sft_args[@]}" --output_dir "$OUT/vrt_sft_$mode"
done
step yes_token_scoring $PY bench/yes_token_scoring.py --device cuda --threads 0
step eval_throughput $PY bench/eval_throughput.py --device cuda --threads 8 --pairs 384
step eval_throughput_workers $PY bench/eval_throughput.py --device cuda --threads 8 --pairs 384 --num-workers 4
step eval_throughput_shared_image $PY bench/eval_throughput.py --device cuda --threads 8 --pairs 384 --num-workers 4 --shared-image

for run in reward_bf16 reward_fsdp reward_deepspeed_zero2 reward_deepspeed_zero3 reward_deepspeed_zero3_offload \
           vrt_sft_deepspeed_zero3 vrt_sft_fsdp; do
    [ -f "$OUT/$run/manifest.json" ] && $PY -c "import json,sys; m=json.load(open(sys.argv[1])); \
print(sys.argv[2], 'distributed', m.get('distributed'), 'metrics', m.get('metrics'))" "$OUT/$run/manifest.json" "$run" \
        | tee -a "$OUT/summary.txt"
done

echo "failed steps: $failed" | tee -a "$OUT/summary.txt"
exit "$failed"
