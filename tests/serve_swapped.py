"""A stand-in server whose cache is swapped after install(): fake sm_90 GPU, the toy kernel (as serve_with_loader.py).

    python serve_swapped.py CACHE_DIR TOKENS [--no-copy]
install(), then every autotune JSON of CACHE_DIR overwritten with garbage and every group file deleted (what whoever
can write the dir could do between the check and Triton's reads), then the kernel called at each token count.
Prints one JSON line: the loader report, configs benchmarked, and Triton's compiles and cache loads."""
import json
import os
import sys
from pathlib import Path

cache_dir, tokens = Path(sys.argv[1]), [int(t) for t in sys.argv[2].split(",")]
os.environ.pop("TRITON_CACHE_AUTOTUNING", None)

import triton  # noqa: E402

from autotune_cache.builder import emulation  # noqa: E402

counts = {"compiles": 0, "loaded": 0}


def listener(**kwargs):
    counts["loaded" if kwargs.get("cache_hit") else "compiles"] += 1


triton.knobs.compilation.listener = listener
emulation.fake_gpu()
import autotune_cache  # noqa: E402
from autotune_cache.shapes import preset  # noqa: E402

report = autotune_cache.install(cache_dir, targets=(), modules=("toy_kernels",),
                                **({"copy": False} if "--no-copy" in sys.argv else {}))
for path in cache_dir.rglob("*.autotune.json"):
    path.write_text("{")
for path in cache_dir.rglob("__grp__*.json"):
    path.unlink()
import toy_kernels  # noqa: E402

for t in tokens:
    toy_kernels.run(preset("qwen3.5-9b").per_rank(1), {"act": "bfloat16"}, t, "cpu")
print(json.dumps({"report": report.as_dict(), "configs_benchmarked": emulation.bench_calls, **counts}))
