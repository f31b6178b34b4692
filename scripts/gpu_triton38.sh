#!/usr/bin/env bash
# Issue 24, on the GPU host (which has Triton 3.6 under torch 2.11): the same build and serving checks on Triton
# 3.8.0, the engines' Triton. Its cp312 wheel (248 MB) does not fit one device call (64 MiB), so it travels in
# parts over consecutive calls of one warm machine and is put first on PYTHONPATH here.
#
# Here, once: pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --platform manylinux_2_28_x86_64 triton==3.8.0; copy the wheel to t38.zip and drop what no build or serving
#     call loads (zip -d: triton/backends/nvidia/lib/cupti*, bin/ptxas-blackwell, bin/nvdisasm, _C/libproton.so;
#     158 MB left); split -b 53M t38.zip .t38/part- (.t38/ is in .git/info/exclude).
# On the device, one call per part, chained while the machine is warm (idle release: 30 s):
#     bash scripts/gpu_triton38.sh stash .t38/part-aa     (carry .t38/part-aa), then -ab, then
#     bash scripts/gpu_triton38.sh run SHA256 "$OUT"       (carry .t38/part-ac and .whl)
# `run` stashes the parts it was given too, checks the reassembled zip's sha256, unpacks it to /tmp/t38site and runs
# the checks with that Triton first on the path: versions, a qwen3.5-9b TP 1,2 build of the fla target, a fresh
# serving process per TP (0 benchmarks, 0 compiles expected), the host's Triton identity and FLA disk keys
# (scripts/gpu_host_keys.py), and with FIRST_CALL=1 the first call cold vs built.
set -uo pipefail
stash=/tmp/t38
mkdir -p "$stash"
case "${1:?stash|run}" in
stash)
    shift
    for part in "$@"; do cp "$part" "$stash/"; done
    ls -la "$stash"
    exit 0 ;;
run)
    want=${2:?SHA256}; out=${3:?OUT}
    for part in .t38/part-*; do [ -f "$part" ] && cp "$part" "$stash/"; done
    ls -la "$stash"
    cat "$stash"/part-* > /tmp/t38.zip
    got=$(sha256sum /tmp/t38.zip | cut -d' ' -f1)
    [ "$got" = "$want" ] || { echo "reassembled zip: sha256 $got, expected $want"; exit 1; } ;;
*) echo "stash|run"; exit 2 ;;
esac

rm -rf /tmp/t38site && mkdir -p /tmp/t38site
python3 -c "import zipfile, sys; zipfile.ZipFile('/tmp/t38.zip').extractall('/tmp/t38site')"
chmod +x /tmp/t38site/triton/backends/nvidia/bin/* 2>/dev/null   # zipfile drops the exec bits
# shellcheck disable=SC1091
ENGINE=none source scripts/gpu_env.sh
export PYTHONPATH="/tmp/t38site:$PYTHONPATH"
nvidia-smi -L | tee "$out/card.txt"
python3 -c "import sys, torch, triton; print(sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, triton.__file__)" \
    2>&1 | tee -a "$out/card.txt"

ac() { python3 -m autotune_cache "$@"; }
cache=/tmp/t38cache
rm -rf "$cache"
echo "== build qwen3.5-9b TP 1,2 (fla) on Triton 3.8"
SECONDS=0
ac build --model qwen3.5-9b --tp 1,2 --cache-dir "$cache" --no-progress --json > "$out/build.json" 2> "$out/build.log"
echo "build rc=$? in ${SECONDS} s"; tail -c 1500 "$out/build.json"; echo; tail -20 "$out/build.log"
ac verify "$cache" --model qwen3.5-9b --tp 1,2 > "$out/verify.txt" 2>&1; echo "verify rc=$?"; tail -8 "$out/verify.txt"
for tp in 1 2; do
    echo "== fresh serving process, TP $tp, install() only (Triton's compilation listener counts compiles)"
    python3 tests/count_compiles.py --cache-dir "$cache" --loader --tp "$tp" --tokens 16,512,4096,16384 \
        > "$out/serve_tp$tp.json" 2> "$out/serve_tp$tp.log"; echo "rc=$?"; tail -6 "$out/serve_tp$tp.log"
    python3 -c "import json, sys; r = json.load(open(sys.argv[1])); print({k: r.get(k) for k in
        ('lookups', 'hits', 'benchmarks', 'compiles', 'loaded')})" "$out/serve_tp$tp.json"
done
echo "== the GPU host's Triton 3.8 identity and FLA disk keys (tests/data/gpu-host-triton-3.8.0-keys.json)"
python3 scripts/gpu_host_keys.py --out "$out/gpu-host-triton-3.8.0-keys.json" | tail -c 900; echo
if [ "${FIRST_CALL:-0}" = 1 ]; then
    echo "== first call: cold vs built (Triton 3.8)"
    python3 scripts/bench_first_call.py --cache-dir "$cache" --tp 1 --tokens 4096 --runs 1 \
        --json-out "$out/bench_first_call.json" 2>&1 | tail -12
fi
