#!/usr/bin/env bash
# One GPU-host session: the steps docker/Dockerfile runs (build into the image path, prune, verify), a fresh
# serving process that only calls install() (writable, then read-only), the first-call benchmark, the GPU tests.
# Usage on the device (repo root, wheels in .whl/): bash scripts/gpu_check.sh OUT_DIR
set -uo pipefail
out=${1:?OUT_DIR}
site=$(mktemp -d)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .whl/*.whl || exit 1
export PYTHONPATH="$site:$PWD:$PWD/tests" PYTHONUNBUFFERED=1
ac() { python3 -m autotune_cache "$@"; }
cache=/opt/gdn-cache
nvidia-smi -L | tee "$out/card.txt"
python3 -c "import torch, triton, sys; print(sys.version.split()[0], torch.__version__, triton.__version__)" | tee -a "$out/card.txt"

echo "== docker steps: build, prune, verify at $cache"
rm -rf "$cache"
SECONDS=0
ac build --model qwen3.5-9b --tp 1 --cache-dir "$cache" --no-progress --json > "$out/build.json" 2> "$out/build.log"
echo "build rc=$? in ${SECONDS} s"; cat "$out/build.json"
du -sh "$cache"; ac prune "$cache" --json > "$out/prune.json"; echo "prune rc=$?"; du -sh "$cache"
ac verify "$cache" --model qwen3.5-9b --tp 1 > "$out/verify.txt" 2>&1; echo "verify rc=$?"; tail -5 "$out/verify.txt"
ac inspect "$cache" > "$out/inspect.txt" 2>&1
cp "$cache/manifest.json" "$out/manifest.json"

echo "== serving process with install() only (writable)"
python3 -m autotune_cache.serve.stand_in --cache-dir "$cache" --loader --tokens 16,64,512,4096,16384 --json \
    > "$out/loader_rw.json" 2> "$out/loader_rw.log"; echo "rc=$?"; tail -9 "$out/loader_rw.log"

echo "== serving process with install() only (read-only cache, root's write override dropped)"
chmod -R a-w "$cache"
drop=""; command -v setpriv >/dev/null && drop="setpriv --bounding-set=-dac_override,-dac_read_search,-fowner"
touch "$cache/.probe" 2>/dev/null && echo "note: still writable for root here" ; rm -f "$cache/.probe"
AUTOTUNE_CACHE_OVERLAY=/tmp/overlay $drop \
    python3 -m autotune_cache.serve.stand_in --cache-dir "$cache" --loader --tokens 16,64,512,4096,16384,20000 --json \
    > "$out/loader_ro.json" 2> "$out/loader_ro.log"; echo "rc=$?"; tail -9 "$out/loader_ro.log"
find /tmp/overlay -name "*.autotune.json" | wc -l
chmod -R u+w "$cache"

echo "== first call: cold vs built (pruned) vs hand-warmed"
python3 scripts/bench_first_call.py --cache-dir "$cache" --tp 1 --tokens 4096 --runs 1 --json-out "$out/bench_first_call.json"

if [ -n "${WITH_FAULTS:-}" ] && [ -f tests/gpu/test_faults_gpu.py ]; then
    echo "== GPU fault test"
    timeout 240 python3 -m pytest -q -s -p no:cacheprovider tests/gpu/test_faults_gpu.py -k gpu-fault 2>&1 | tail -30 | tee "$out/faults.log"
fi
