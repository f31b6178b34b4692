#!/usr/bin/env bash
# The GPU runs of issue 18 (the engines' own kernels), one H200; each phase fits the device's 10-minute limit.
#   bash scripts/gpu_engines.sh tests-vllm   ENGINES OUT  build vllm (qwen3.5-9b TP 1,2), then
#                                                         tests/gpu/test_engines.py for it: install() and register(),
#                                                         varlen T=1..32768, vLLM's jit_monitor with and without cache
#   bash scripts/gpu_engines.sh tests-sglang ENGINES OUT  the same for sglang (qwen3.5-27b TP 1,2)
#   bash scripts/gpu_engines.sh modes-vllm   ENGINES OUT  scripts/bench_modes.py (ours vs first-config vs warmup vs
#   bash scripts/gpu_engines.sh modes-sglang ENGINES OUT  cold, jit_monitor on), qwen3.5-9b / qwen3.5-27b TP 1
#   bash scripts/gpu_engines.sh winners      ENGINES OUT  scripts/bench_winners.py --baseline first-config, fla + vllm
# ENGINES: a copy of ../shared/engines-py312 (vllm/sglang source tarballs and py312 wheels, its README); the
# wheels of ../shared/wheels-py312 in .whl/ as for every GPU run. Caches are kept in out/engines/ (ignored) so
# later phases reuse the builds of the first; a phase builds what is missing. Results land in OUT.
set -uo pipefail
phase=${1:?tests-vllm|tests-sglang|modes-vllm|modes-sglang|winners}; engines=${2:?ENGINES dir}; out=${3:?OUT}
site=$(mktemp -d); vsrc=$(mktemp -d); ssrc=$(mktemp -d)
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$site" .whl/*.whl "$engines"/*.whl \
    || exit 1
tar -xzf "$engines"/vllm-0.33.0-py-sources.tgz -C "$vsrc" && tar -xzf "$engines"/sglang-0.5.23-py-sources.tgz -C "$ssrc" \
    || exit 1
export PYTHONPATH="$site:$PWD:$PWD/tests:$vsrc:$ssrc" PYTHONUNBUFFERED=1
export AUTOTUNE_CACHE_GPU_DIR="$PWD/out/engines"
mkdir -p "$AUTOTUNE_CACHE_GPU_DIR" "$out"
{ nvidia-smi -L; nproc; python3 -c "import sys, torch, triton; print(sys.version.split()[0], torch.__version__, triton.__version__)"; } | tee "$out/card.txt"
SECONDS=0
left() { echo $(( SECONDS < 584 ? 585 - SECONDS : 1 )); }
built() {   # target model [tp]: build into out/engines/<target> unless done (the GPU test builds TP 1,2)
    [ -f "$AUTOTUNE_CACHE_GPU_DIR/$1/manifest.json" ] && return 0
    timeout "$(left)" python3 -m autotune_cache build --target "$1" --model "$2" --tp "${3:-1,2}" \
        --cache-dir "$AUTOTUNE_CACHE_GPU_DIR/$1" --no-progress 2>&1 | tail -4 | tee -a "$out/builds.log"
}

case "$phase" in
    *-vllm) target=vllm model=qwen3.5-9b ;;
    *-sglang) target=sglang model=qwen3.5-27b ;;
esac
if [ "${phase%-*}" = tests ]; then
    timeout "$(left)" python3 -m pytest -q -x -s -p no:cacheprovider tests/gpu/test_engines.py -k "$target" 2>&1 \
        | tee "$out/test_engines_$target.log" | grep -E "passed|failed|error|^(vllm|sglang) TP|Error" | tail -40
    echo "GPU tests $target at ${SECONDS} s"
elif [ "${phase%-*}" = modes ]; then
    built "$target" "$model" 1
    timeout "$(left)" python3 scripts/bench_modes.py --cache-dir "$AUTOTUNE_CACHE_GPU_DIR/$target" --target "$target" \
        --model "$model" --tp 1 --jit-monitor --no-cold-timing --timeout 300 --json-out "$out/bench_modes_$target.json" 2>&1 \
        | tee "$out/bench_modes_$target.txt" | tail -30
    echo "modes $target rc=$? at ${SECONDS} s"
elif [ "$phase" = winners ]; then
    built vllm qwen3.5-9b
    [ -f "$AUTOTUNE_CACHE_GPU_DIR/fla/manifest.json" ] || timeout "$(left)" python3 -m autotune_cache build \
        --model qwen3.5-9b --tp 1 --cache-dir "$AUTOTUNE_CACHE_GPU_DIR/fla" --no-progress 2>&1 | tail -2
    for t in fla vllm; do
        timeout "$(left)" python3 scripts/bench_winners.py --ours "$AUTOTUNE_CACHE_GPU_DIR/$t" --baseline first-config \
            --target "$t" --model qwen3.5-9b --tp 1 --tokens 512,2048,4096,16384 --repeats 5 \
            --json-out "$out/bench_winners_first_$t.json" 2>&1 | tee "$out/bench_winners_first_$t.txt" | tail -40
        echo "winners $t rc=$? at ${SECONDS} s"
    done
else
    echo "unknown phase $phase (tests-vllm|tests-sglang|modes-vllm|modes-sglang|winners)" >&2; exit 2
fi
