"""What runs inside the build child. Imports nothing heavy at module level: the env must be set first.

What it sends the parent, and when: protocol.py. Its one extension point: `add_unit_hook` (a function run at the
start of each unit; the tests' fault injection, tests/faults.py, registers itself there).
"""
from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from . import triton_env
from .lifetime import die_with
from .protocol import (
    Binaries,
    ChildOptions,
    Done,
    Go,
    Hello,
    Lookup,
    NoGPU,
    NoLookup,
    UnitDone,
    UnitFailed,
    UnitStart,
)

UnitHook = Callable[[int, int, bool], None]
_unit_hooks: list[UnitHook] = []


def add_unit_hook(hook: UnitHook) -> None:
    """Run `hook(index, attempt, emulated)` in the build child at the start of every unit, before its calls: `index`
    is the unit's position in the whole plan (not in this child's share, which shrinks on a retry), `attempt` counts
    from 1, `emulated` says the child runs on the fake GPU. What the hook raises fails the unit as the unit's own
    error would; it may also crash, hang or exhaust memory, which is what it is for: the tests register their fault
    injection here (tests/faults.py). A hook must be added in the process the child is forked from, the build's
    fork server, right when it imports this module (supervisor.PRELOAD): tests/boot/sitecustomize.py does it with an
    import hook in every process the tests start; a call in the build's own process would reach no child."""
    _unit_hooks.append(hook)


def _die_with_build(build: int | None) -> None:
    """The build child: after setsid() no terminal signal reaches it, so a build process killed by SIGKILL (or
    SIGTERM) would otherwise leave it tuning, unlocked, forever. Its parent is the fork server (supervisor.py),
    which outlives the build process while any child it forked runs: so the child watches the build process itself
    (a pidfd, on a thread) and, when it ends, kills its own process group (itself and every compiler it started);
    and dies with the fork server too (PR_SET_PDEATHSIG)."""
    import select
    import signal
    import threading
    die_with(os.getppid())
    if build is None:
        return
    try:
        watched = os.pidfd_open(build)
    except ProcessLookupError:   # gone already
        os._exit(1)
    except (OSError, AttributeError):   # no pidfd (Linux < 5.3): the fork server's end is all there is
        return

    def watch() -> None:
        select.select([watched], [], [])   # readable once the process has ended
        os.killpg(0, signal.SIGKILL)
    threading.Thread(target=watch, name="autotune-cache-build-watch", daemon=True).start()


def _take_parents_environment(options: ChildOptions) -> None:
    """The build process's environment and working dir as they were when it started this child: the fork server
    this child comes from has them as they were when it started (the build's first child, or that of another build
    of the same process running at the same time)."""
    if options.environ is not None:
        os.environ.clear()
        os.environ.update(options.environ)
    if options.cwd is not None:
        try:
            os.chdir(options.cwd)
        except OSError:   # removed since: paths in the options are absolute
            pass


def _imports(get, unit) -> tuple[str, ...]:
    if unit.kernel is not None:   # a replay unit: its kernel's module
        return (unit.kernel.module,)
    target = unit.target
    try:
        return get(target).imports
    except Exception:  # noqa: BLE001 - an unknown target fails its unit, with the reason
        return ()


def _launch_foreign_untuned(foreign: frozenset) -> None:
    """Keys another child owns (shard.py) launch with their first config (after pruning, as Triton would time it
    first): no disk lookup, no benchmark, no file, nothing for the lookup listeners. Their owner tunes and reports
    them; here they only carry the serving call on to the keys this child owns. The first config is picked by
    Triton's own prune_configs, without the side effects of the other phases' hooks on it (compile threads,
    selection, recorder): the "foreign" phase comes first (hooks.PHASES)."""
    from ..autotuner import hooks
    from ..autotuner.kernels import innermost_jit
    from ..autotuner.keys import tuning_key
    prune = hooks.triton("prune_configs")
    names: dict[int, str] = {}   # id(autotuner) -> its kernel's name

    def run_foreign_first(run, tuner, *args, **kwargs):
        if len(tuner.configs) > 1:
            key = tuning_key(tuner, args, kwargs)
            name = names.get(id(tuner)) or names.setdefault(id(tuner), innermost_jit(tuner.fn).__name__)
            if key not in tuner.cache and (name, key) in foreign:
                tuner.nargs = dict(zip(tuner.arg_names, args, strict=False))
                try:
                    tuner.cache[key] = prune(tuner, kwargs)[0]
                finally:
                    tuner.nargs = None
        return run(tuner, *args, **kwargs)

    hooks.add("foreign", "run", run_foreign_first)


def main(out, control, options: ChildOptions) -> None:
    """Build `options.units` into `options.cache_dir`, reporting on `out` (protocol.py); `control` says go."""
    os.setsid()  # own process group: the parent can kill us and every compiler we spawned at once
    _die_with_build(options.build_pid)
    _take_parents_environment(options)
    # Triton (and the compile workers this child starts) write the cache with the process umask: under 0002 or 0
    # the files would be group- or world-writable, and the loader and `verify` refuse such a cache.
    os.umask(0o022)
    # The server's values of Triton's cache-invalidating env vars where the request names them: before Triton reads
    # them (at each compile and disk lookup, not at import: the fork server imported Triton already), and inherited
    # by the compile workers, whose compiled-kernel keys must be this child's.
    triton_env.apply(options.triton_env)
    if options.gpu is not None:   # before torch initializes CUDA: one child per GPU of a sharded build
        os.environ["CUDA_VISIBLE_DEVICES"] = str(options.gpu)
    os.environ["TRITON_CACHE_DIR"] = options.cache_dir
    os.environ["TRITON_CACHE_AUTOTUNING"] = "1"
    from . import device, precompile  # light: the heavy imports come after the pool is started
    # Compile the configs of all units in worker processes (AUTOTUNE_CACHE_COMPILE_PROCESSES, default every core
    # but the one this child benchmarks on), else on threads (AUTOTUNE_CACHE_COMPILE_WORKERS); 1 and 1 = compile
    # while benchmarking, as Triton. Emulated builds (tests, key checks) default to threads: a worker's start
    # (torch + kernel imports) costs more than the few configs of a test kernel, and would eat small unit timeouts.
    # The workers emulate this GPU (device.py); without a readable NVIDIA GPU there is none to emulate: threads.
    n_processes = options.compile_processes or precompile.processes(default=1 if options.emulate else None)
    profile = None if options.emulate else device.read()
    pool = None
    if n_processes > 1 and (options.emulate or profile is not None):
        # plain JSON: the zygote's argv; each unit at the token counts this child drives it at, after the probe
        # passes the child makes first (precompile.probe_counts)
        probes = options.selection.probe_tokens if options.selection.mode == "robust" else ()
        units = [dict(u.unit.model_dump(mode="json"), tokens=list(u.calls),
                      probes=precompile.probe_counts(u.unit.tokens, probes)) for u in options.units]
        pool = precompile.Pool(options.cache_dir, units, n_processes, profile.to_dict() if profile else None,
                               foreign=[[kernel, list(key)] for kernel, key in sorted(options.foreign, key=repr)])
    try:
        _main(out, control, options, pool)
    finally:
        if pool is not None:
            pool.close()


def _main(out, control, options: ChildOptions, pool) -> None:
    emulate, units = options.emulate, options.units
    if emulate:
        from . import emulation
        emulation.install()
    else:
        import torch
        if not torch.cuda.is_available():
            out.put(NoGPU("no CUDA GPU visible to the build child "
                          f"(torch {torch.__version__}, CUDA {torch.version.cuda}); building needs one"))
            return
    if options.foreign:
        _launch_foreign_untuned(options.foreign)
    import importlib

    from ..autotuner import compiles, disk
    from ..cache import fingerprint
    from ..cache.files import sha256_file
    from ..cache.layout import read_autotune
    from ..targets import get
    from . import precompile, selection

    # The kernel modules (FLA: ~10 s) now, while the compile pool imports them too; imported by the first unit's
    # call instead, they came after the wait for the pool. A module that fails to import fails that unit, named.
    for name in dict.fromkeys(m for u in units for m in _imports(get, u.unit)):
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - the unit's own import raises it again, reported with the unit
            pass
    if pool is None:
        precompile.install()
    settings = options.selection
    selection.install(settings)
    probe_tokens = settings.probe_tokens if settings.mode == "robust" else ()
    out.put(Hello(fingerprint=fingerprint.collect(emulated=emulate).model_dump(), pid=os.getpid()))
    if not isinstance(control.get(), Go):
        return
    if pool is not None:
        pool.go()
    device = "cpu" if emulate else "cuda"
    root = Path(options.cache_dir)
    current: dict[str, Any] = {}   # the unit and token count of the call running now
    # A lookup is sent once its call has launched, with the winner's compiled dirs: prune keeps exactly those. So is
    # a key whose configs pruned to one where Triton (3.8+) makes no lookup: a NoLookup, with its one config's dirs.
    pending: dict[tuple, Lookup | NoLookup] = {}          # (kernel, key) -> the message awaiting its launch
    reported: dict[tuple, tuple[Lookup | NoLookup, set]] = {}   # (kernel, key) -> (message, binaries sent)
    compiled_here = compiles.count()

    def on_lookup(lookup):
        fields = dict(unit=current["unit"], tokens=current["tokens"], kernel=lookup.kernel, key=tuple(lookup.key),
                      hit=lookup.hit, configs=lookup.configs)
        if lookup.path is not None and lookup.path.exists():
            parsed = read_autotune(lookup.path)
            fields.update(file=lookup.path.relative_to(root).as_posix(), sha256=sha256_file(lookup.path),
                          size=lookup.path.stat().st_size, winner=parsed.winner, best=parsed.best,
                          margin=parsed.margin, configs=len(parsed.timings),
                          selection=selection.decisions.pop((lookup.kernel, tuple(lookup.key)), None))
        pending[(lookup.kernel, lookup.key)] = Lookup(**fields)

    def on_pruned(pruned):   # no lookup follows (Triton 3.8+): reported as reached, without an entry
        pending[(pruned.kernel, pruned.key)] = NoLookup(unit=current["unit"], tokens=current["tokens"],
                                                        kernel=pruned.kernel, key=tuple(pruned.key))

    def on_launch(launch):
        if disk.is_dry():   # a probe pass: its lookups were not reported either
            return
        dirs = {d.relative_to(root).as_posix() for d in launch.binaries if d.is_relative_to(root)}
        msg = pending.pop((launch.kernel, launch.key), None)
        if msg is not None:
            out.put(replace(msg, binaries=tuple(sorted(dirs))))
            if isinstance(msg, NoLookup) or msg.file is not None:
                reported[(launch.kernel, launch.key)] = (msg, dirs)
        elif (launch.kernel, launch.key) in reported:   # the key again, from memory: maybe another variant
            first, sent = reported[(launch.kernel, launch.key)]
            if not dirs <= sent:
                sent |= dirs
                if isinstance(first, NoLookup):
                    out.put(replace(first, binaries=tuple(sorted(sent))))
                elif first.file is not None:
                    out.put(Binaries(unit=current["unit"], file=first.file, binaries=tuple(sorted(sent))))

    def flush():   # lookups whose call never returned (it raised): report them without binaries
        for msg in pending.values():
            out.put(msg)
        pending.clear()

    disk.add_launch_listener(on_launch)
    disk.add_pruned_listener(on_pruned)
    with disk.listening(on_lookup):
        for index, planned in enumerate(units):
            unit = planned.unit
            current.update(unit=unit.id, tokens=None)
            reported.clear()
            out.put(UnitStart(unit.id))
            start, bench_start = time.monotonic(), disk.bench_seconds
            compiles_start = compiled_here["compiled"] if compiled_here is not None else 0
            compiled = None
            try:
                for hook in _unit_hooks:
                    hook(planned.index, planned.attempt, emulate)
                disk.forget_in_memory()
                if pool is not None and options.overlap_compile:   # this unit's configs; workers go on
                    compiled = pool.ready(index)
                elif pool is not None and index == 0:   # every unit's configs, before the first timing
                    compiled = pool.ready(len(units) - 1)
                if unit.replay:   # recorded calls of one kernel, made again (record/replay.py): no token counts
                    from ..record.replay import replay_all
                    replay_all(unit.replay, device)
                else:
                    target = get(unit.target)
                    selection.probes.clear()
                    for tokens in precompile.probe_counts(unit.tokens, probe_tokens):
                        current["tokens"] = tokens
                        with selection.probing(tokens):   # screen the unit's keys at a small size, write nothing
                            target.run(unit.shape, unit.dtypes, tokens, device)
                        disk.forget_in_memory()   # the probe's winners: the next call of each key must miss
                    for tokens in planned.calls:   # a sharded build: maybe a tail of them (shard.Part)
                        current["tokens"] = tokens
                        target.run(unit.shape, unit.dtypes, tokens, device)
                selection.probes.clear()   # the probe calls' tensors
                if device == "cuda":
                    import torch
                    torch.cuda.synchronize()
            except BaseException as e:  # noqa: BLE001 - report everything, the parent decides
                flush()
                # The first line names the fault ("AcceleratorError: CUDA error: an illegal memory access was
                # encountered"); torch's advice lines after it would flood the one-line summary.
                from ..errors import UnreplayableError
                out.put(UnitFailed(unit=unit.id, error=f"{type(e).__name__}: {e}".strip().splitlines()[0][:1000],
                                   traceback=traceback.format_exc()[-4000:],
                                   retry=not isinstance(e, UnreplayableError)))
                out.close()
                out.join_thread()
                sys.stdout.flush()
                sys.stderr.flush()
                if pool is not None:
                    pool.close()
                os._exit(1)   # no interpreter teardown: after a GPU fault CUDA's own can hang or crash
            flush()
            out.put(UnitDone(unit=unit.id, seconds=time.monotonic() - start,
                             bench_seconds=disk.bench_seconds - bench_start, precompile=compiled,
                             compiles=compiled_here["compiled"] - compiles_start if compiled_here else None))
    out.put(Done())
    out.close()
    out.join_thread()
