#!/usr/bin/env bash
# The GPU runs recorded in BENCHMARKS.md (one H100, 16 CPU cores), in phases that fit 10-minute calls:
#   bench/gpu.sh accuracy SECONDS   # all accuracy experiments, seeds 0 and 1, 3 parallel groups per seed;
#                                   # stops after SECONDS and resumes where it stopped when run again
#   bench/gpu.sh speed              # speed benchmarks on a quiet GPU
# Results: bench-runs/accuracy/results.jsonl and bench-runs/speed-gpu.jsonl.
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
*)
    echo "usage: bench/gpu.sh accuracy SECONDS | speed" >&2; exit 2;;
esac
