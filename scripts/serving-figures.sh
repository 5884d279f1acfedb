#!/usr/bin/env bash
# Measure again, in one window, every serving figure the README and docs/performance.md quote.
#
#   scripts/serving-figures.sh                  # `make serving-figures`: ~40 min on 2 cores
#   STEPS="lone workers" scripts/serving-figures.sh   # some steps only
#
# On models/ (REPO), the steps (STEPS, all by default):
#   vs-raw    the largest model, its int8 variant and the smallest student against raw ONNX
#             Runtime (loadtest.served_vs_raw, the three interleaved, two rounds)
#   ramp      routing under load at a 20 ms budget (loadtest.ramp)
#   sweep     the concurrency sweep of the largest and smallest (loadtest.bench)
#   overload  the overload scenario, also with a 5 s keep-alive and with max_in_flight 128
#   routing   the routing cost (loadtest.router_cost) and a request's metric updates
#             (loadtest.metrics_cost)
#   lone      where a lone request's time goes, the largest and the smallest (two runs)
#   inline    the largest model alone with lone calls inline up to 5 ms and 2 ms (the default),
#             three interleaved rounds at concurrency 1, 2 and 4
#   workers   the smallest served alone by one process and by `auto` (interleaved), and the
#             smallest and the int8 teacher against raw with one and two processes
#   profile   py-spy on the service serving the smallest at concurrency 64
#   threads   ORT's default threads with and without spinning against `auto`, two models
#   locust    locust's default scenarios (every model, 1-4 images, multipart and JSON), 32 users
#   protocols the smallest over REST (/predict, v2 image, v2 tensor) and gRPC (image, tensor),
#             interleaved rounds at concurrency 1, 8 and 64 (loadtest.protocols)
# The raw outputs replace those in loadtest/results/ (RESULTS); each names the machine and its
# load. A benchmark beside training measures the training, so a running zoo's lanes (ZOO_DIR) are
# paused for it and continued after. QUICK=1 shortens every step to seconds (for tests; its
# figures mean nothing).
set -euo pipefail

PY=${PY:-.venv/bin/python}
REPO=${REPO:-models}
RESULTS=${RESULTS:-loadtest/results}
ZOO_DIR=${ZOO_DIR:-$HOME/.cache/rocketserve/cifar10-zoo}
TAG=${TAG:-cifar10}
# The models by role, unless given: read from REPO's cards (export/report.py, serving_roles): the
# teacher (the model the others name as theirs), its int8 variant and the smallest int8 student
# (of equal MACs, the most accurate).
roles=$("$PY" - "$REPO" <<'EOF'
import sys
from pathlib import Path

from export.report import serving_roles
from export.repository import load_cards

for role, name in serving_roles(load_cards(Path(sys.argv[1]))).items():
    print(f"role_{role}={name}")
EOF
)
eval "$roles"
LARGEST=${LARGEST:-${role_LARGEST:-}}
HEAVY_INT8=${HEAVY_INT8:-${role_HEAVY_INT8:-}}
SMALLEST=${SMALLEST:-${role_SMALLEST:-}}
echo "models by role: LARGEST=${LARGEST:-none} HEAVY_INT8=${HEAVY_INT8:-none} SMALLEST=${SMALLEST:-none}"
if [ -n "$LARGEST" ] && [ -n "$HEAVY_INT8" ] && [ -n "$SMALLEST" ]; then
    AGAINST_RAW=${AGAINST_RAW:-$LARGEST $HEAVY_INT8 $SMALLEST}
fi
if [ -n "$LARGEST" ] && [ -n "$SMALLEST" ]; then
    SWEEP=${SWEEP:-$LARGEST,$SMALLEST}
fi
AGAINST_RAW=${AGAINST_RAW:-}
SWEEP=${SWEEP:-}
# A step that measures a role stops the script when REPO's cards fill none and no variable does.
need() {
    local var
    for var; do
        if [ -z "${!var}" ]; then
            echo "error: $REPO has no model for $var (see the roles above): set $var" >&2
            exit 2
        fi
    done
}
STEPS=${STEPS:-vs-raw ramp sweep overload routing lone inline workers profile threads locust protocols}
QUICK=${QUICK:-0}

if [ "$QUICK" = 1 ]; then
    rounds=1
    vs_raw=(--concurrency 1 4 --seconds 0.3 --raw-seconds 0.1)
    ramp=(--quick)
    sweep=(--quick)
    overload=(--quick)
    routing=(--requests 200)
    metrics=(--requests 200 --rounds 1)
    protocols=(--concurrency 1 4 --seconds 0.3 --warmup 0.1 --rounds 1)
    point=(--duration 0.3 --warmup 0.1 --raw-time 0.05)
    vs_raw_workers=(--concurrency 1 4 --seconds 0.3 --raw-seconds 0.05)
    runs=1
    worker_order="auto 1"
    thread_settings=("0 true" "auto false")
    locust_seconds=3
else
    rounds=2
    vs_raw=()
    ramp=(--concurrency 1,2,3,4,6,8,12,16,24 --step-seconds 8)
    sweep=(--duration 3 --warmup 1)
    overload=()
    routing=()
    metrics=()
    protocols=(--concurrency 1 8 64 --seconds 5 --warmup 1 --rounds 3)
    point=(--duration 5 --warmup 1 --raw-time 0.5)
    vs_raw_workers=(--concurrency 1 64)
    runs=2
    worker_order="auto 1 1 auto"
    thread_settings=("0 true" "0 false" "auto false")
    locust_seconds=30
fi
wants() { [[ " $STEPS " == *" $1 "* ]]; }

# Every requested step's models are known before the zoo is paused and anything runs.
step_needs() {
    case $1 in
        vs-raw) echo AGAINST_RAW ;;
        sweep) echo SWEEP ;;
        lone) echo LARGEST SMALLEST ;;
        inline) echo LARGEST ;;
        workers | threads) echo SMALLEST HEAVY_INT8 ;;
        profile | protocols) echo SMALLEST ;;
    esac
}
for step in $STEPS; do
    # shellcheck disable=SC2046  # one variable name per word
    need $(step_needs "$step")
done

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

if wants vs-raw; then
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
fi

if wants ramp; then
echo "== routing under load, latency budget 20 ms"
"$PY" -m loadtest.ramp --model-repository "$REPO" --latency-budget-ms 20 "${ramp[@]}" \
    --out "$scratch/ramp"
for ext in md csv json png; do
    cp "$scratch/ramp/ramp.$ext" "$RESULTS/ramp-$TAG-budget-20ms.$ext"
done
fi

if wants sweep; then
echo "== concurrency sweep: $SWEEP"
"$PY" -m loadtest.bench --model-repository "$REPO" --models "$SWEEP" "${sweep[@]}" \
    --out "$scratch/bench"
cp "$scratch/bench/bench.csv" "$scratch"/bench/*.png "$RESULTS/"
"$PY" -m loadtest.table "$RESULTS/bench.csv" --concurrency 1,2,8,32,64,128
fi

if wants overload; then
echo "== overload (4x capacity)"
# A failed criterion is a figure to read in the report, not a reason to stop measuring.
"$PY" -m loadtest.bench --model-repository "$REPO" --overload "${overload[@]}" \
    --out "$scratch/overload" || echo "overload: a criterion failed (see overload-$TAG.json)"
cp "$scratch/overload/overload.json" "$RESULTS/overload-$TAG.json"
echo "== overload with uvicorn's 5 s keep-alive"
ROCKETSERVE_KEEP_ALIVE_S=5 "$PY" -m loadtest.bench --model-repository "$REPO" --overload \
    "${overload[@]}" --out "$scratch/overload-ka" || echo "overload, 5 s keep-alive: a criterion failed"
cp "$scratch/overload-ka/overload.json" "$RESULTS/overload-$TAG-keep-alive-5s.json"
echo "== overload with max_in_flight 128"
"$PY" -m loadtest.bench --model-repository "$REPO" --overload --max-in-flight 128 \
    "${overload[@]}" --out "$scratch/overload-mif" || echo "overload, max_in_flight 128: a criterion failed"
cp "$scratch/overload-mif/overload.json" "$RESULTS/overload-$TAG-max-in-flight-128.json"
fi

if wants routing; then
echo "== routing cost"
"$PY" -m loadtest.router_cost --model-repository "$REPO" "${routing[@]}" \
    | tee "$RESULTS/router-cost-$TAG.txt"
echo "== metric updates per request"
"$PY" -m loadtest.metrics_cost "${metrics[@]}" | tee "$RESULTS/metrics-cost.txt"
fi

# A repository of one model: links to its folder in REPO.
only() {
    local dir="$scratch/only-$1"
    mkdir -p "$dir"
    ln -sfn "$(cd "$REPO" && pwd)/$1" "$dir/$1"
    echo "$dir"
}

if wants lone; then
echo "== a lone request: $LARGEST, $SMALLEST ($runs run(s))"
out="$RESULTS/lone-request-$TAG.txt"
: > "$out"
for round in $(seq "$runs"); do
    echo "-- run $round" >> "$out"
    "$PY" -m loadtest.bench --model-repository "$REPO" --models "$LARGEST,$SMALLEST" \
        --concurrency 1 --batching on "${point[@]}" --out "$scratch/lone" | tee -a "$out"
done
fi

if wants inline; then
inline_rounds=$(( runs == 1 ? 1 : 3 ))
echo "== $LARGEST with lone calls inline up to 5 ms and 2 ms, the default ($inline_rounds round(s), interleaved)"
out="$RESULTS/inline-$TAG.txt"
: > "$out"
for round in $(seq "$inline_rounds"); do
    for inline in 5 2; do
        echo "-- round $round: ROCKETSERVE_INLINE_INFERENCE_MAX_MS=$inline" >> "$out"
        ROCKETSERVE_INLINE_INFERENCE_MAX_MS=$inline "$PY" -m loadtest.bench \
            --model-repository "$(only "$LARGEST")" --concurrency 1,2,4 --batching on "${point[@]}" \
            --out "$scratch/inline" | tee -a "$out"
    done
done
fi

if wants workers; then
echo "== worker processes: $SMALLEST alone, auto against 1 (interleaved); against raw"
out="$RESULTS/workers-$TAG.txt"
: > "$out"
for workers in $worker_order; do
    echo "-- $SMALLEST alone, --workers $workers" >> "$out"
    "$PY" -m loadtest.bench --model-repository "$(only "$SMALLEST")" --concurrency 1,64 \
        --batching on --workers "$workers" "${point[@]}" --out "$scratch/workers" | tee -a "$out"
done
for model in "$SMALLEST" "$HEAVY_INT8"; do
    for workers in 1 2; do
        echo "-- $model against raw, --workers $workers" >> "$out"
        # served_vs_raw serves the one model; the whole repository gives it its targets' role
        "$PY" -m loadtest.served_vs_raw --model-repository "$REPO" --model "$model" \
            --workers "$workers" "${vs_raw_workers[@]}" | tee -a "$out"
    done
done
fi

if wants profile; then
echo "== where the service's time goes: $SMALLEST at concurrency 64 (py-spy)"
# py-spy needs leave to read another process (ptrace); where it has none, say so and go on.
"$PY" -m loadtest.bench --model-repository "$REPO" --models "$SMALLEST" --concurrency 64 \
    --batching on "${point[@]}" --profile --out "$scratch/profile" \
    | tee "$RESULTS/profile-$TAG-c64.txt" || echo "profile: py-spy could not sample the service"
fi

if wants threads; then
echo "== ORT threads: ORT's default (0) with and without spinning against auto"
out="$RESULTS/ort-threads-$TAG.txt"
: > "$out"
for round in $(seq "$runs"); do
    for setting in "${thread_settings[@]}"; do
        read -r threads spinning <<< "$setting"
        echo "-- round $round: ROCKETSERVE_INTRA_OP_THREADS=$threads" \
            "ROCKETSERVE_INTRA_OP_SPINNING=$spinning" >> "$out"
        ROCKETSERVE_INTRA_OP_SPINNING=$spinning "$PY" -m loadtest.bench --model-repository "$REPO" \
            --models "$HEAVY_INT8,$SMALLEST" --ort-threads "$threads" --concurrency 1,64 \
            --batching on "${point[@]}" --out "$scratch/threads" | tee -a "$out"
    done
done
fi

if wants locust; then
echo "== locust: 32 users for ${locust_seconds} s against every model"
"$PY" -m loadtest.locust_run --model-repository "$REPO" --seconds "$locust_seconds" \
    --out "$scratch/locust" || echo "locust: some requests failed (see locust-$TAG.txt)"
cp "$scratch/locust/locust_stats.csv" "$RESULTS/locust-$TAG.csv"
cp "$scratch/locust/locust-summary.txt" "$RESULTS/locust-$TAG.txt"
fi

if wants protocols; then
echo "== REST and gRPC: $SMALLEST"
"$PY" -m loadtest.protocols --model-repository "$REPO" --model "$SMALLEST" "${protocols[@]}" \
    | tee "$RESULTS/protocols-$TAG.txt" || echo "protocols: some requests failed"
fi

echo "serving figures measured in $(( ($(date +%s) - start) / 60 )) min into $RESULTS"
