"""`python count_compiles.py <probe args>`: autotune_cache.serve.probe in this process, plus how many kernels Triton
compiled and how many it loaded from the cache (its compilation listener, FACTS.md §1). Prints the probe's JSON
report with "compiles" and "loaded" added."""
import contextlib
import io
import json
import sys

import triton

counts = {"compiles": 0, "loaded": 0}


def listener(**kwargs):
    counts["loaded" if kwargs.get("cache_hit") else "compiles"] += 1


triton.knobs.compilation.listener = listener

from autotune_cache.serve import probe  # noqa: E402

buf = io.StringIO()
with contextlib.redirect_stdout(buf):
    probe.main(sys.argv[1:] + ["--json"])
report = json.loads(buf.getvalue().strip().splitlines()[-1])
report.update(counts)
print(json.dumps(report))
