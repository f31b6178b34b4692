"""One vLLM process's start, for test_plugin_concurrency: the engine core or a TP worker loading general plugins.

    python plugin_worker.py GO_FILE TOKENS

On the fake sm_90 GPU (vLLM loads plugins before device init, and so does this), it says it is ready
(GO_FILE.ready.<pid>) and waits until GO_FILE exists so
that every process calls the plugin's register() at once, as vLLM's processes start together; then it serves the
toy kernel (the stand-in for the GDN kernels: its module is added to the served prefixes, as install(modules=...)
adds one) at TOKENS (comma-separated). AUTOTUNE_CACHE_DIR, _STRICT, ... come from the environment. Prints one JSON
line: the loader report, the error register() raised ("Type: message", then exit 1: vLLM does not catch it and the
process dies), Triton's cache env, and per lookup (kernel, key, hit, the winner in the file it used)."""
import json
import os
import sys
import time

from autotune_cache.builder import emulation

emulation.fake_gpu()
go, tokens = sys.argv[1], [int(t) for t in sys.argv[2].split(",")]
open(f"{go}.ready.{os.getpid()}", "w").close()
deadline = time.monotonic() + 120
while not os.path.exists(go) and time.monotonic() < deadline:
    time.sleep(0.005)

from autotune_cache.errors import AutotuneCacheError  # noqa: E402
from autotune_cache.integrations.vllm_plugin import register  # noqa: E402 - the entry point vLLM loads

env_keys = ("TRITON_CACHE_DIR", "TRITON_CACHE_MANAGER", "AUTOTUNE_CACHE_BASE")
try:
    register()
except AutotuneCacheError as e:
    print(json.dumps({"error": f"{type(e).__name__}: {e}", "report": None}))
    sys.exit(1)

from autotune_cache.autotuner import disk  # noqa: E402
from autotune_cache.cache.layout import read_autotune  # noqa: E402
from autotune_cache.serve import loader  # noqa: E402
from autotune_cache.shapes import preset  # noqa: E402

report = loader.report()
report.prefixes += ("toy_kernels",)
seen = []
disk.add_listener(lambda lk: seen.append({"kernel": lk.kernel, "key": list(lk.key), "hit": lk.hit,
                                              "winner": str(read_autotune(lk.path).winner) if lk.path else None}))
import toy_kernels  # noqa: E402 - imported after the plugin, as vLLM imports the model's kernels

for t in tokens:
    toy_kernels.run(preset("qwen3.5-9b").per_rank(1), {"act": "bfloat16"}, t, "cpu")
print(json.dumps({"error": None, "report": report.as_dict(), "env": {k: os.environ.get(k) for k in env_keys},
                  "lookups": seen, "benchmarked": emulation.bench_calls}))
