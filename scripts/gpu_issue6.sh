#!/usr/bin/env bash
# The GPU runs of issue 6 on a 2-GPU host (each phase under the device's 10-minute limit).
#   bash scripts/gpu_issue6.sh build OUT   (b) build time: serial in-process vs build on 1 and 2 GPUs, (d) over
#                                          those two builds and a third; GPU tests
#   bash scripts/gpu_issue6.sh winners OUT (c) winner quality vs T=64-tuned winners; (d) stability over 3 builds
#   bash scripts/gpu_issue6.sh all OUT     (b), then (c) on the 1-GPU build, then (d) over both builds and a third
#   bash scripts/gpu_issue6.sh one OUT     one-GPU host: (b) serial vs build, then the GPU tests
#   bash scripts/gpu_issue6.sh quality OUT one-GPU host: 3 builds, (d) over them, (c) of the first vs T=64-tuned
# Wheels the host lacks in .whl/ (device README). Results land in OUT; BENCHMARKS.md records them.
set -uo pipefail
phase=${1:?build|winners}; out=${2:?OUT}
site=$(mktemp -d)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .whl/*.whl || exit 1
export PYTHONPATH="$site:$PWD:$PWD/tests" PYTHONUNBUFFERED=1
ac() { python3 -m autotune_cache "$@"; }
{ nvidia-smi -L; nproc; python3 -c "import sys, torch, triton; print(sys.version.split()[0], torch.__version__, triton.__version__)"; } | tee "$out/card.txt"
work=$(mktemp -d)

if [ "$phase" = build ]; then
    SECONDS=0
    timeout 420 python3 scripts/bench_build.py --model qwen3.5-9b --tp 1,2,4,8 --gpus 1,2 --cpus-per-gpu 16 \
        --json-out "$out/bench_build.json"
    echo "bench_build rc=$? in ${SECONDS} s"
    python3 - "$out/bench_build.json" "$out/build_units.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
units = {}
for b in r["builds"]:
    m = json.load(open(b["dir"] + "/manifest.json"))
    units[f"gpus{b['gpus']}"] = {u["id"]: {k: u.get(k) for k in ("gpu", "seconds", "bench_seconds", "precompile",
                                 "compiles", "hits")} | {"entries": len(u["entries"])} for u in m["units"].values()}
json.dump(units, open(sys.argv[2], "w"), indent=1)
PY
    dirs=$(python3 -c "import json; print(' '.join(b['dir'] for b in json.load(open('$out/bench_build.json'))['builds']))")
    timeout 100 python3 -m autotune_cache build --model qwen3.5-9b --tp 1,2,4,8 --gpus 2 --cache-dir "$work/b3" \
        --no-progress --json > /dev/null 2> "$out/build3.log"
    echo "build 3 rc=$? at ${SECONDS} s"
    # shellcheck disable=SC2086  # one argument per build dir
    timeout 60 python3 scripts/bench_stability.py --dirs $dirs "$work/b3" --json-out "$out/bench_stability.json" | tail -12
    echo "stability rc=$? at ${SECONDS} s"
    echo "== GPU tests"
    timeout 150 python3 -m pytest -q -x -p no:cacheprovider tests/gpu/test_build_gpu.py 2>&1 | tail -15 | tee "$out/gpu_tests.log"
    echo "GPU tests at ${SECONDS} s"
elif [ "$phase" = all ]; then
    SECONDS=0
    left() { echo $(( SECONDS < 584 ? 585 - SECONDS : 1 )); }
    timeout "$(left)" python3 scripts/bench_build.py --model qwen3.5-9b --tp 1,2,4,8 --gpus 1,2 --cpus-per-gpu 16 \
        --json-out "$out/bench_build.json"
    echo "bench_build rc=$? at ${SECONDS} s"
    read -r b1 b2 < <(python3 -c "import json; print(*(b['dir'] for b in json.load(open('$out/bench_build.json'))['builds']))")
    timeout "$(left)" python3 -m autotune_cache build --model qwen3.5-9b --tp 1 --max-tokens 64 --selection triton \
        --cache-dir "$work/t64" --no-progress --json > /dev/null 2> "$out/build_t64.log"
    echo "build t64 rc=$? at ${SECONDS} s"
    timeout "$(left)" python3 scripts/bench_winners.py --ours "$b1" --baseline "$work/t64" --baseline-label tuned@T64 \
        --model qwen3.5-9b --tp 1 --json-out "$out/bench_winners.json" | tail -30
    echo "winners rc=$? at ${SECONDS} s"
    timeout "$(left)" python3 -m autotune_cache build --model qwen3.5-9b --tp 1,2,4,8 --gpus 2 --cache-dir "$work/b3" \
        --no-progress --json > /dev/null 2> "$out/build3.log"
    echo "build 3 rc=$? at ${SECONDS} s"
    timeout "$(left)" python3 scripts/bench_stability.py --dirs "$b1" "$b2" "$work/b3" --retime \
        --json-out "$out/bench_stability.json" | tail -40
    echo "stability rc=$? at ${SECONDS} s"
elif [ "$phase" = one ]; then
    SECONDS=0
    left() { echo $(( SECONDS < 584 ? 585 - SECONDS : 1 )); }
    timeout "$(left)" python3 scripts/bench_build.py --model qwen3.5-9b --tp 1,2,4,8 --gpus 1 \
        --json-out "$out/bench_build.json"
    echo "bench_build rc=$? at ${SECONDS} s"
    echo "== GPU tests"
    timeout "$(left)" python3 -m pytest -q -x -p no:cacheprovider tests/gpu 2>&1 | tail -15 | tee "$out/gpu_tests.log"
    echo "GPU tests at ${SECONDS} s"
elif [ "$phase" = quality ]; then
    SECONDS=0
    left() { echo $(( SECONDS < 584 ? 585 - SECONDS : 1 )); }
    for i in 1 2 3; do
        timeout "$(left)" python3 -m autotune_cache build --model qwen3.5-9b --tp 1,2,4,8 --cache-dir "$work/b$i" \
            --no-progress --json > "$out/build$i.json" 2> "$out/build$i.log"; echo "build $i rc=$? at ${SECONDS} s"
    done
    timeout "$(left)" python3 -m autotune_cache build --model qwen3.5-9b --tp 1 --max-tokens 64 --selection triton \
        --cache-dir "$work/t64" --no-progress --json > /dev/null 2> "$out/build_t64.log"
    echo "build t64 rc=$? at ${SECONDS} s"
    cp "$work/b1/manifest.json" "$out/manifest_b1.json"
    timeout "$(left)" python3 scripts/bench_stability.py --dirs "$work/b1" "$work/b2" "$work/b3" --retime \
        --json-out "$out/bench_stability.json" | tail -40
    echo "stability rc=$? at ${SECONDS} s"
    timeout "$(left)" python3 scripts/bench_winners.py --ours "$work/b1" --baseline "$work/t64" \
        --baseline-label tuned@T64 --model qwen3.5-9b --tp 1 --tokens 512,2048,4096,16384 \
        --json-out "$out/bench_winners.json" | tail -45
    echo "winners rc=$? at ${SECONDS} s"
elif [ "$phase" = stability ]; then   # (d) alone: 3 sharded builds, then compare
    SECONDS=0
    for i in 1 2 3; do
        timeout 100 python3 -m autotune_cache build --model qwen3.5-9b --tp 1,2,4,8 --gpus 2 --cache-dir "$work/b$i" \
            --no-progress --json > /dev/null 2> "$out/build$i.log"; echo "build $i rc=$? at ${SECONDS} s"
    done
    timeout 90 python3 scripts/bench_stability.py --dirs "$work/b1" "$work/b2" "$work/b3" --retime \
        --json-out "$out/bench_stability.json" | tail -40
    echo "stability rc=$? at ${SECONDS} s"
else
    SECONDS=0
    for i in 1 2 3; do
        ac build --model qwen3.5-9b --tp 1,2,4,8 --gpus 2 --cache-dir "$work/b$i" --no-progress --json > /dev/null \
            2> "$out/build$i.log"; echo "build $i rc=$? at ${SECONDS} s"
    done
    ac build --model qwen3.5-9b --tp 1 --max-tokens 64 --selection triton --cache-dir "$work/t64" --no-progress \
        --json > /dev/null 2> "$out/build_t64.log"; echo "build t64 rc=$? at ${SECONDS} s"
    timeout 120 python3 scripts/bench_stability.py --dirs "$work/b1" "$work/b2" "$work/b3" --retime \
        --json-out "$out/bench_stability.json" | tail -40
    echo "stability done at ${SECONDS} s"
    timeout 240 python3 scripts/bench_winners.py --ours "$work/b1" --baseline "$work/t64" --baseline-label tuned@T64 \
        --model qwen3.5-9b --tp 1 --json-out "$out/bench_winners.json" | tail -40
    echo "winners done at ${SECONDS} s"
fi
