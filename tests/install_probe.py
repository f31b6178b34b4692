"""A server's start, for trust tests: install() (or the vLLM plugin's register()) on a cache dir in a fresh process.

    python install_probe.py CACHE_DIR [--strict] [--plugin] [--public-key PUB.pem] [--no-copy]
--plugin: AUTOTUNE_CACHE_DIR=CACHE_DIR and the vLLM entry point's register(), as vLLM calls it. Prints one JSON line:
the loader report (None if none), the error install()/register() raised as "Type: message" (None if none), Triton's
cache env vars after it, and the names in the temp dir (TMPDIR: give each test its own)."""
import json
import os
import sys
import tempfile

cache_dir = sys.argv[1]
strict = "--strict" in sys.argv
key = sys.argv[sys.argv.index("--public-key") + 1] if "--public-key" in sys.argv else None
from autotune_cache.errors import AutotuneCacheError  # noqa: E402
from autotune_cache.serve import loader  # noqa: E402

error = None
try:
    if "--plugin" in sys.argv:
        os.environ["AUTOTUNE_CACHE_DIR"] = cache_dir
        os.environ["AUTOTUNE_CACHE_STRICT"] = "1" if strict else "0"
        from autotune_cache.integrations.vllm_plugin import register
        register()
    else:
        loader.install(cache_dir, strict=strict, targets=(), public_key=key,
                       **({"copy": False} if "--no-copy" in sys.argv else {}))
except AutotuneCacheError as e:   # anything else is a traceback and a non-zero exit: what the tests forbid
    error = f"{type(e).__name__}: {e}"
report = loader.report()
print(json.dumps({"report": report.as_dict() if report else None, "error": error,
                  "env": {k: os.environ.get(k) for k in ("TRITON_CACHE_DIR", "TRITON_CACHE_MANAGER",
                                                         "AUTOTUNE_CACHE_BASE")},
                  "tmp": sorted(os.listdir(tempfile.gettempdir()))}))
