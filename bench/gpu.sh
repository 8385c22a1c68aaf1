#!/usr/bin/env bash
# The GPU runs recorded in BENCHMARKS.md (one H100, 16 CPU cores), in phases that fit 10-minute calls:
#   bench/gpu.sh accuracy SECONDS   # all accuracy experiments, seeds 0 and 1, 3 parallel groups per seed;
#                                   # stops after SECONDS and resumes where it stopped when run again
#   bench/gpu.sh speed              # speed benchmarks on a quiet GPU
#   bench/gpu.sh precision          # issue #31, about 5 minutes: float32 vs bfloat16 labeling (alternated),
#                                   # their agreement on a trained teacher, AMP float16 vs bfloat16 training
# Results: bench-runs/accuracy/results.jsonl, bench-runs/speed-gpu.jsonl, bench-runs/precision-gpu.jsonl.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} BENCH_LOADER_WORKERS=2 OMP_NUM_THREADS=2
py=${PYTHON:-python3}
case "${1:-}" in
accuracy)
    deadline=$2
    out=bench-runs/accuracy
    mkdir -p $out/logs
    # Data first, in one process (the groups below share it).
    $py -c "
from pathlib import Path
from bench.accuracy import SCALES, datasets
for task in ('keypoints', 'detection'):
    datasets(Path('$out'), task, SCALES['cpu'])
"
    pids=()
    for seed in 0 1; do
        for group in "semi schedule" "omni-same omni-dissimilar" "detection"; do
            log=$out/logs/$(echo "$group" | tr ' ' '+')-s$seed.log
            $py bench/accuracy.py run $group --seeds $seed --device cuda --out $out >>"$log" 2>&1 &
            pids+=($!)
        done
    done
    ( sleep "$deadline"; kill "${pids[@]}" 2>/dev/null ) &
    watchdog=$!
    wait "${pids[@]}" 2>/dev/null
    kill $watchdog 2>/dev/null
    $py bench/accuracy.py summarize --out $out
    ;;
speed)
    # The runs not yet recorded first, so a call cut short still brings them back.
    out=bench-runs/speed-gpu.jsonl
    mkdir -p bench-runs
    ck=${CHECKPOINT:-$(ls bench-runs/accuracy/runs/runs/semi-s0/teacher/model_*.pth 2>/dev/null | tail -1)}
    $py bench/speed.py gpu-train --preset r50-fpn --device cuda --steps 40 --batch 2 | tee -a $out
    if [ -n "$ck" ]; then
        $py bench/speed.py memory --checkpoint "$ck" --device cuda --images 1000 10000 --scales 128 \
            --out bench-runs/speed | tee -a $out
        $py bench/speed.py post --checkpoint "$ck" --device cuda --images 512 | tee -a $out
        $py bench/speed.py tta --checkpoint "$ck" --device cuda --images 64 --batch 8 | tee -a $out
    fi
    [ -n "${SKIP_TTA:-}" ] || $py bench/speed.py tta --preset r50-fpn --device cuda --size 640 --images 8 --batch 2 \
        --repeats 2 | tee -a $out
    ;;
precision)
    out=bench-runs/precision-gpu.jsonl
    mkdir -p bench-runs
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
    # 1. Labeling speed, ResNet-50-FPN at the paper's 18 transforms, float32 and bfloat16 alternated in one
    #    process (same shape as BENCHMARKS.md's GPU rows); then bfloat16 + channels-last against float32.
    timeout 150 $py bench/speed.py tta --preset r50-fpn --device cuda --size 640 --images 32 --batch 2 --repeats 3 \
        --precision float32 bfloat16 | tee -a $out
    timeout 120 $py bench/speed.py tta --preset r50-fpn --device cuda --size 640 --images 16 --batch 2 --repeats 3 \
        --precision float32 bfloat16 --channels-last | tee -a $out
    # 2. Agreement of bfloat16 pseudo-labels with float32's on CUDA, on a briefly trained slim teacher (trained
    #    on the CPU), and the AMP training tests (float16, bfloat16). The CPU cases run in `make test`.
    timeout 150 $py -m pytest -q -s -rs -k "cuda or amp" tests/tta/test_precision.py tests/train/test_amp.py 2>&1 \
        | grep -E "bfloat16 vs float32|passed|failed|skipped|Error" | tee -a bench-runs/precision-gpu.log
    # 3. Training iterations per second, our loop, AMP float16 vs bfloat16, alternated twice.
    timeout 150 $py bench/speed.py gpu-train --preset r50-fpn --device cuda --steps 40 --batch 2 \
        --amp-dtype float16 bfloat16 | tee -a $out
    $py -c "
import json
for line in open('$out'):
    r = json.loads(line)
    if 'images_per_s' in r:
        print('labeling', 'channels-last' if r['channels_last'] else '', r['images_per_s'], 'speedup', r['speedup_over_float32'],
              'agreement', r['agreement_with_float32'])
    elif 'it_per_s' in r:
        print('training it/s', r['it_per_s'], 'first round', r['first_round_it_per_s'])
"
    ;;
*)
    echo "usage: bench/gpu.sh accuracy SECONDS | speed | precision" >&2; exit 2;;
esac
