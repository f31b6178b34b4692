"""`python precompile_check.py CACHE_DIR WORKERS [PROCESSES]`: the toy kernel tuned in this process (fake sm_90
GPU) with parallel precompilation on WORKERS threads, after PROCESSES worker processes compiled the unit into the
cache; prints JSON: Triton's compiles and loads (its compilation listener), configs benchmarked, what the
precompilers handled."""
import json
import os
import sys

os.environ["TRITON_CACHE_DIR"] = sys.argv[1]
os.environ["TRITON_CACHE_AUTOTUNING"] = "1"
from autotune_cache.builder import emulation, precompile  # noqa: E402

emulation.fake_gpu()
import triton  # noqa: E402

from autotune_cache.shapes import preset  # noqa: E402

workers = {"workers": 0, "failed": 0, "import_s": None, "compile_s": None, "compiled": []}
if len(sys.argv) > 3:
    unit = {"target": "toy_target", "shape": preset("qwen3.5-9b").per_rank(1).model_dump(),
            "dtypes": {"act": "bfloat16"}, "tokens": [2000]}
    workers = precompile.compile_in_processes(sys.argv[1], [unit], int(sys.argv[3]))
compiles = []
triton.knobs.compilation.listener = lambda **kw: compiles.append(bool(kw.get("cache_hit")))
enabled = precompile.use_threads(int(sys.argv[2]))
import toy_kernels  # noqa: E402

toy_kernels.run(preset("qwen3.5-9b").per_rank(1), {"act": "bfloat16"}, 2000, "cpu")
print(json.dumps({"enabled": enabled, "compiles": compiles.count(False), "loaded": compiles.count(True),
                  "benchmarked": emulation.bench_calls, "precompiled": precompile.stats, "processes": workers}))
