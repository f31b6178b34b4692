"""What runs inside the build child. Imports nothing heavy at module level: the env must be set first.

Protocol (child -> parent, dicts on a Channel (channel.py: a pipe, written synchronously), in this order):
  hello {fingerprint}                       after the kernel sources' env is set and the driver is up
  no_gpu {message}                          instead of hello when there is no CUDA GPU (and no emulation)
  unit_start {unit}                         before driving a unit
  lookup {unit, tokens, kernel, key, hit, configs, file, sha256, size, winner, best, margin, selection, binaries}
                                            sent after the call that made it returned: binaries = compiled-kernel
                                            dirs (relative) the winning config launched
  binaries {unit, file, binaries}           a later call of the same key launched another compiled variant
  unit_done {unit, seconds, bench_seconds, precompile, compiles} | unit_failed {unit, error}   a failed unit ends the child: CUDA may be unusable
  done
Parent -> child, on the same Channel after hello: "go" or "stop".
A unit's probe passes (selection.py: its call at each probe token count, dry, before its own calls) send nothing.
"""
from __future__ import annotations

import os
import sys
import time
import traceback
from pathlib import Path

from . import faults
from .lifetime import die_with


def _die_with_parent() -> None:
    """The build child: after setsid() no terminal signal reaches it, so a parent killed by SIGKILL (or SIGTERM)
    would otherwise leave it tuning, unlocked, forever."""
    import multiprocess
    parent = multiprocess.parent_process()
    die_with(parent.pid if parent is not None else None)


def _imports(get, target: str) -> tuple[str, ...]:
    try:
        return get(target).imports
    except Exception:  # noqa: BLE001 - an unknown target fails its unit, with the reason
        return ()


def _count_compiles() -> dict | None:
    """Kernels this process compiled (not loaded from the cache): with compile workers, about none should be.
    Triton's compilation listener (3.5+); None without one (the count is unknown)."""
    counts = {"compiled": 0}
    try:
        import triton
        knobs = triton.knobs.compilation
    except AttributeError:
        return None
    previous = getattr(knobs, "listener", None)

    def listener(**kwargs):
        if not kwargs.get("cache_hit"):
            counts["compiled"] += 1
        if previous is not None:
            previous(**kwargs)

    knobs.listener = listener
    return counts


def main(out, control, cache_dir: str, units: list[dict], emulate: bool, attempt: dict[str, int],
         options: dict | None = None) -> None:
    """`options`: "gpu" (a physical GPU index: this child sees only that one), "compile_processes" (precompile
    worker processes; default AUTOTUNE_CACHE_COMPILE_PROCESSES, else every core but one), "selection"
    (selection.Settings as a dict: how winners are chosen), "overlap_compile" (benchmark a unit once its own configs
    are compiled, not every unit's)."""
    options = options or {}
    os.setsid()  # own process group: the parent can kill us and every compiler we spawned at once
    _die_with_parent()
    if options.get("gpu") is not None:   # before torch initializes CUDA: one child per GPU of a sharded build
        os.environ["CUDA_VISIBLE_DEVICES"] = str(options["gpu"])
    os.environ["TRITON_CACHE_DIR"] = cache_dir
    os.environ["TRITON_CACHE_AUTOTUNING"] = "1"
    from . import device, precompile   # light: the heavy imports come after the pool is started
    # Compile the configs of all units in worker processes (AUTOTUNE_CACHE_COMPILE_PROCESSES, default every core
    # but the one this child benchmarks on), else on threads (AUTOTUNE_CACHE_COMPILE_WORKERS); 1 and 1 = compile
    # while benchmarking, as Triton. Emulated builds (tests, key checks) default to threads: a worker's start
    # (torch + kernel imports) costs more than the few configs of a test kernel, and would eat small unit timeouts.
    # The workers emulate this GPU (device.py); without a readable NVIDIA GPU there is none to emulate: threads.
    n_processes = options.get("compile_processes") or precompile.processes(default=1 if emulate else None)
    profile = None if emulate else device.read()
    pool = None
    if n_processes > 1 and (emulate or profile is not None):
        pool = precompile.Pool(cache_dir, units, n_processes, profile.to_dict() if profile else None)
    try:
        _main(out, control, cache_dir, units, emulate, attempt, options, pool)
    finally:
        if pool is not None:
            pool.close()


def _main(out, control, cache_dir, units, emulate, attempt, options, pool) -> None:
    if emulate:
        os.environ["AUTOTUNE_CACHE_EMULATE"] = "1"
        from . import emulation
        emulation.install()
    else:
        import torch
        if not torch.cuda.is_available():
            out.put({"type": "no_gpu", "message": "no CUDA GPU visible to the build child "
                     f"(torch {torch.__version__}, CUDA {torch.version.cuda}); building needs one"})
            return
    from ..cache import fingerprint, lookups
    from . import precompile, selection
    from ..models import RankShape
    from ..targets import get
    from ..cache.layout import read_autotune
    from ..cache.files import sha256_file

    # The kernel modules (FLA: ~10 s) now, while the compile pool imports them too; imported by the first unit's
    # call instead, they came after the wait for the pool. A module that fails to import fails that unit, named.
    import importlib
    for name in dict.fromkeys(m for raw in units for m in _imports(get, raw["target"])):
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - the unit's own import raises it again, reported with the unit
            pass
    if pool is None:
        precompile.install()
    settings = selection.Settings(**options.get("selection", {}))
    selection.install(settings)
    probe_tokens = settings.probe_tokens if settings.mode == "robust" else ()
    out.put({"type": "hello", "fingerprint": fingerprint.collect(emulated=emulate).model_dump(), "pid": os.getpid()})
    if control.get() != "go":
        return
    if pool is not None:
        pool.go()
    device = "cpu" if emulate else "cuda"
    root = Path(cache_dir)
    current = {}
    # A lookup is sent once its call has launched, with the winner's compiled dirs: prune keeps exactly those.
    pending, reported = {}, {}   # (kernel, key) -> lookup message; (kernel, key) -> (file, binaries sent)
    compiles = _count_compiles()

    def on_lookup(lookup):
        msg = {"type": "lookup", "unit": current["unit"], "tokens": current["tokens"], "kernel": lookup.kernel,
               "key": list(lookup.key), "hit": lookup.hit, "configs": lookup.configs, "file": None, "binaries": []}
        if lookup.path is not None and lookup.path.exists():
            parsed = read_autotune(lookup.path)
            msg.update(file=lookup.path.relative_to(root).as_posix(), sha256=sha256_file(lookup.path),
                       size=lookup.path.stat().st_size, winner=parsed.winner, best=parsed.best, margin=parsed.margin,
                       configs=len(parsed.timings),
                       selection=selection.decisions.pop((lookup.kernel, tuple(lookup.key)), None))
        pending[(lookup.kernel, lookup.key)] = msg

    def on_launch(launch):
        if lookups.is_dry():   # a probe pass: its lookups were not reported either
            return
        dirs = {d.relative_to(root).as_posix() for d in launch.binaries if d.is_relative_to(root)}
        msg = pending.pop((launch.kernel, launch.key), None)
        if msg is not None:
            msg["binaries"] = sorted(dirs)
            out.put(msg)
            if msg["file"] is not None:
                reported[(launch.kernel, launch.key)] = (msg["file"], dirs)
        elif (launch.kernel, launch.key) in reported:   # the key again, from memory: maybe another variant
            file, sent = reported[(launch.kernel, launch.key)]
            if not dirs <= sent:
                sent |= dirs
                out.put({"type": "binaries", "unit": current["unit"], "file": file, "binaries": sorted(sent)})

    def flush():   # lookups whose call never returned (it raised): report them without binaries
        for msg in pending.values():
            out.put(msg)
        pending.clear()

    lookups.add_launch_listener(on_launch)
    with lookups.recording(on_lookup):
        for index, raw in enumerate(units):
            unit_id = raw["id"]
            current.update(unit=unit_id, tokens=None)
            reported.clear()
            out.put({"type": "unit_start", "unit": unit_id})
            start, bench_start = time.monotonic(), lookups.bench_seconds
            compiles_start = compiles["compiled"] if compiles is not None else None
            compiled = None
            try:
                faults.inject(os.environ.get("AUTOTUNE_CACHE_FAULT"), raw.get("index", index), attempt.get(unit_id, 1))
                lookups.forget_in_memory()
                if pool is not None and options.get("overlap_compile"):   # this unit's configs; workers go on
                    compiled = pool.ready(index)
                elif pool is not None and index == 0:   # every unit's configs, before the first timing
                    compiled = pool.ready(len(units) - 1)
                target = get(raw["target"])
                shape = RankShape(**raw["shape"])
                selection.probes.clear()
                for tokens in (t for t in probe_tokens if t < max(raw["tokens"])):
                    current["tokens"] = tokens
                    with selection.probing(tokens):   # screen the unit's keys at a small size, write nothing
                        target.run(shape, raw["dtypes"], tokens, device)
                    lookups.forget_in_memory()   # the probe's winners: the next call of each key must miss
                for tokens in raw["tokens"]:
                    current["tokens"] = tokens
                    target.run(shape, raw["dtypes"], tokens, device)
                selection.probes.clear()   # the probe calls' tensors
                if device == "cuda":
                    import torch
                    torch.cuda.synchronize()
            except BaseException as e:  # noqa: BLE001 - report everything, the parent decides
                flush()
                # The first line names the fault ("AcceleratorError: CUDA error: an illegal memory access was
                # encountered"); torch's advice lines after it would flood the one-line summary.
                out.put({"type": "unit_failed", "unit": unit_id,
                         "error": f"{type(e).__name__}: {e}".strip().splitlines()[0][:1000],
                         "traceback": traceback.format_exc()[-4000:]})
                out.close()
                out.join_thread()
                sys.stdout.flush()
                sys.stderr.flush()
                if pool is not None:
                    pool.close()
                os._exit(1)   # no interpreter teardown: after a GPU fault CUDA's own can hang or crash
            flush()
            out.put({"type": "unit_done", "unit": unit_id, "seconds": time.monotonic() - start,
                     "bench_seconds": lookups.bench_seconds - bench_start,
                     "precompile": compiled,
                     "compiles": compiles["compiled"] - compiles_start if compiles is not None else None})
    out.put({"type": "done"})
    out.close()
    out.join_thread()
