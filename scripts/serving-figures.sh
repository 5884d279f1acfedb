#!/usr/bin/env bash
# Measure again, in one window, every serving figure the README and docs/performance.md quote.
#
#   scripts/serving-figures.sh            # `make serving-figures`: ~25 min on 2 cores
#
# On models/ (REPO): the largest model, its int8 variant and the smallest student against raw ONNX
# Runtime (loadtest.served_vs_raw, the three interleaved, two rounds), routing under load at a
# 20 ms budget (loadtest.ramp), the concurrency sweep of the largest and smallest (loadtest.bench),
# the overload scenario and the routing cost. The raw outputs replace those in loadtest/results/
# (RESULTS); each names the machine and its load. A benchmark beside training measures the
# training, so a running zoo's lanes (ZOO_DIR) are paused for it and continued after.
# QUICK=1 shortens every step to seconds (for tests; its figures mean nothing).
set -euo pipefail

PY=${PY:-.venv/bin/python}
REPO=${REPO:-models}
RESULTS=${RESULTS:-loadtest/results}
ZOO_DIR=${ZOO_DIR:-$HOME/.cache/rocketserve/cifar10-zoo}
TAG=${TAG:-cifar10}
AGAINST_RAW=${AGAINST_RAW:-cifar10-teacher-wrn-40-2 cifar10-teacher-wrn-40-2-int8 cifar10-rocket-kd-wrn-16-1-int8}
SWEEP=${SWEEP:-cifar10-teacher-wrn-40-2,cifar10-rocket-kd-wrn-16-1-int8}
QUICK=${QUICK:-0}

if [ "$QUICK" = 1 ]; then
    rounds=1
    vs_raw=(--concurrency 1 4 --seconds 0.3 --raw-seconds 0.1)
    ramp=(--quick)
    sweep=(--quick)
    overload=(--quick)
    routing=(--requests 200)
else
    rounds=2
    vs_raw=()
    ramp=(--concurrency 1,2,3,4,6,8,12,16,24 --step-seconds 8)
    sweep=(--duration 3 --warmup 1)
    overload=()
    routing=()
fi

mkdir -p "$RESULTS"
scratch=$(mktemp -d)
paused=0
if [ -d "$ZOO_DIR/.work" ] && "$PY" -m export zoo-pause --out "$ZOO_DIR"; then
    paused=1
fi
finish() {
    rm -rf "$scratch"
    if [ "$paused" = 1 ]; then
        "$PY" -m export zoo-continue --out "$ZOO_DIR" || true
    fi
}
trap finish EXIT
start=$(date +%s)

echo "== served against raw: ${AGAINST_RAW} (${rounds} round(s), interleaved)"
for round in $(seq "$rounds"); do
    for model in $AGAINST_RAW; do
        out="$RESULTS/served-vs-raw-$model.txt"
        [ "$round" = 1 ] && : > "$out"
        echo "-- round $round" >> "$out"
        "$PY" -m loadtest.served_vs_raw --model-repository "$REPO" --model "$model" "${vs_raw[@]}" \
            | tee -a "$out"
    done
done

echo "== routing under load, latency budget 20 ms"
"$PY" -m loadtest.ramp --model-repository "$REPO" --latency-budget-ms 20 "${ramp[@]}" \
    --out "$scratch/ramp"
for ext in md csv json png; do
    cp "$scratch/ramp/ramp.$ext" "$RESULTS/ramp-$TAG-budget-20ms.$ext"
done

echo "== concurrency sweep: $SWEEP"
"$PY" -m loadtest.bench --model-repository "$REPO" --models "$SWEEP" "${sweep[@]}" \
    --out "$scratch/bench"
cp "$scratch/bench/bench.csv" "$scratch"/bench/*.png "$RESULTS/"
"$PY" -m loadtest.table "$RESULTS/bench.csv" --concurrency 1,2,8,32,64,128

echo "== overload (4x capacity)"
# A failed criterion is a figure to read in the report, not a reason to stop measuring.
"$PY" -m loadtest.bench --model-repository "$REPO" --overload "${overload[@]}" \
    --out "$scratch/overload" || echo "overload: a criterion failed (see overload-$TAG.json)"
cp "$scratch/overload/overload.json" "$RESULTS/overload-$TAG.json"

echo "== routing cost"
"$PY" -m loadtest.router_cost --model-repository "$REPO" "${routing[@]}" \
    | tee "$RESULTS/router-cost-$TAG.txt"

echo "serving figures measured in $(( ($(date +%s) - start) / 60 )) min into $RESULTS"
