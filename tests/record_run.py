"""A process whose autotune lookups the record tests record, replay or serve (test_record*.py). On the fake GPU.

    python record_run.py --cache DIR [--install] [--record P] [--misses P] [--autotuning] WORK...

WORK: scale:T[:D] and copy:N (record_kernels.py), fla:T (the fla target's serving call, H=16 HV=32 fp32 state).
--install serves DIR with autotune_cache.install() (no module named: the loader must find the recorded kernels'
modules in the manifest); --autotuning sets TRITON_CACHE_AUTOTUNING=1 (every autotuner reads and writes DIR).
Prints JSON: configs benchmarked, and the loader's totals."""
import argparse
import json
import os

ap = argparse.ArgumentParser()
ap.add_argument("--cache", required=True)
ap.add_argument("--install", action="store_true")
ap.add_argument("--record")
ap.add_argument("--misses")
ap.add_argument("--autotuning", action="store_true")
ap.add_argument("work", nargs="*")
args = ap.parse_args()
if not args.install:
    os.environ["TRITON_CACHE_DIR"] = os.path.abspath(args.cache)
if args.autotuning:
    os.environ["TRITON_CACHE_AUTOTUNING"] = "1"

from autotune_cache.builder import emulation  # noqa: E402

emulation.fake_gpu()
import autotune_cache  # noqa: E402

report = None
if args.install:
    report = autotune_cache.install(args.cache, record=args.record, misses=args.misses)
elif args.record or args.misses:
    from autotune_cache import record
    for path, misses in ((args.record, False), (args.misses, True)):
        if path:
            record.start(path, misses=misses)

for item in args.work:
    kind, *numbers = item.split(":")
    numbers = list(map(int, numbers))
    if kind == "scale":
        import record_kernels
        record_kernels.scale(*numbers)
    elif kind == "copy":
        import record_kernels
        record_kernels.copy(*numbers)
    elif kind == "fla":
        from autotune_cache.shapes import preset
        from autotune_cache.targets import fla
        shape = preset("qwen3.5-9b").per_rank(1)
        fla.run(shape, fla.default_dtypes(shape), numbers[0], "cpu")
    else:
        raise SystemExit(f"unknown work {item}")
print(json.dumps({"bench_calls": emulation.bench_calls, "totals": report.totals if report else None,
                  "flipped": report.flipped if report else None}))
