"""`python count_compiles.py <stand_in args>`: autotune_cache.serve.stand_in in this process, plus how many kernels
Triton compiled and how many it loaded from the cache (its compilation listener, FACTS.md §1). Prints the stand-in's
JSON report with "compiles" and "loaded" added."""
import contextlib
import io
import json
import sys

import triton

counts = {"compiles": 0, "loaded": 0}


def listener(**kwargs):
    counts["loaded" if kwargs.get("cache_hit") else "compiles"] += 1


triton.knobs.compilation.listener = listener

from autotune_cache.serve import stand_in  # noqa: E402

buf = io.StringIO()
with contextlib.redirect_stdout(buf):
    stand_in.main(sys.argv[1:] + ["--json"])
report = json.loads(buf.getvalue().strip().splitlines()[-1])
report.update(counts)
print(json.dumps(report))
