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
from typing import NoReturn

from . import triton_env
from .lifetime import die_with
from .protocol import (
    Binaries,
    ChildOptions,
    Done,
    Go,
    Hello,
    LookedUp,
    NoGPU,
    NoLookup,
    UnitDone,
    UnitFailed,
    UnitStart,
)
from .spec import ReplayUnit, Unit

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


def _imports(get, unit: Unit) -> tuple[str, ...]:
    if isinstance(unit, ReplayUnit):   # its kernel's module
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
    """The child's loop: get ready, say Hello, and on Go drive each unit, reporting what it reaches."""
    if not _ready(out, options):
        return
    from ..autotuner import disk
    from ..cache import fingerprint
    from . import precompile, selection
    if pool is None:
        precompile.use_threads(options.compile_workers)
    selection.use(options.selection)
    out.put(Hello(fingerprint=fingerprint.collect(emulated=options.emulate).model_dump(), pid=os.getpid()))
    if not isinstance(control.get(), Go):
        return
    if pool is not None:
        pool.go()
    reports = _Reports(out, Path(options.cache_dir))
    disk.add_launch_listener(reports.on_launch)
    disk.add_pruned_listener(reports.on_pruned)
    with disk.listening(reports.on_lookup):
        for index, planned in enumerate(options.units):
            _build_unit(out, options, pool, reports, index, planned)
    out.put(Done())
    out.close()
    out.join_thread()


def _ready(out, options: ChildOptions) -> bool:
    """A GPU (or the fake one), the other shards' keys launching untuned, the kernel modules imported; False (and
    NoGPU sent) without a GPU."""
    if options.emulate:
        from . import emulation
        emulation.fake_gpu()
    else:
        import torch
        if not torch.cuda.is_available():
            out.put(NoGPU("no CUDA GPU visible to the build child "
                          f"(torch {torch.__version__}, CUDA {torch.version.cuda}); building needs one"))
            return False
    if options.foreign:
        _launch_foreign_untuned(options.foreign)
    import importlib

    from ..targets import get
    # The kernel modules (FLA: ~10 s) now, while the compile pool imports them too; imported by the first unit's
    # call instead, they came after the wait for the pool. A module that fails to import fails that unit, named.
    for name in dict.fromkeys(m for u in options.units for m in _imports(get, u.unit)):
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - the unit's own import raises it again, reported with the unit
            pass
    return True


class _Reports:
    """What the child tells the parent about the keys a unit reaches. A lookup is sent once its call has launched,
    with the winner's compiled dirs: prune keeps exactly those. So is a key whose configs pruned to one where Triton
    (3.8+) makes no lookup: a NoLookup, with its one config's dirs."""

    def __init__(self, out, root: Path) -> None:
        from ..autotuner import compiles
        self.out, self.root = out, root
        self.unit: str = ""
        self.tokens: int | None = None   # the token count of the call running now
        self.pending: dict[tuple, LookedUp | NoLookup] = {}          # (kernel, key) -> awaiting its launch
        self.reported: dict[tuple, tuple[LookedUp | NoLookup, set]] = {}   # (kernel, key) -> (message, dirs sent)
        self.compiled = compiles.count()   # None where Triton cannot count compiles

    def start(self, unit_id: str) -> None:
        self.unit, self.tokens = unit_id, None
        self.reported.clear()

    def on_lookup(self, lookup) -> None:
        from ..cache.files import sha256_file
        from ..cache.layout import read_autotune
        from . import selection
        fields = dict(unit=self.unit, tokens=self.tokens, kernel=lookup.kernel, key=tuple(lookup.key),
                      hit=lookup.hit, configs=lookup.configs)
        if lookup.path is not None and lookup.path.exists():
            parsed = read_autotune(lookup.path)
            fields.update(file=lookup.path.relative_to(self.root).as_posix(), sha256=sha256_file(lookup.path),
                          size=lookup.path.stat().st_size, winner=parsed.winner, best=parsed.best,
                          margin=parsed.margin, configs=len(parsed.timings),
                          selection=selection.decisions.pop((lookup.kernel, tuple(lookup.key)), None))
        self.pending[(lookup.kernel, lookup.key)] = LookedUp(**fields)

    def on_pruned(self, pruned) -> None:   # no lookup follows (Triton 3.8+): reported as reached, without an entry
        self.pending[(pruned.kernel, pruned.key)] = NoLookup(unit=self.unit, tokens=self.tokens,
                                                             kernel=pruned.kernel, key=tuple(pruned.key))

    def on_launch(self, launch) -> None:
        from ..autotuner import disk
        if disk.is_dry():   # a probe pass: its lookups were not reported either
            return
        dirs = {d.relative_to(self.root).as_posix() for d in launch.binaries if d.is_relative_to(self.root)}
        msg = self.pending.pop((launch.kernel, launch.key), None)
        if msg is not None:
            self.out.put(replace(msg, binaries=tuple(sorted(dirs))))
            if isinstance(msg, NoLookup) or msg.file is not None:
                self.reported[(launch.kernel, launch.key)] = (msg, dirs)
        elif (launch.kernel, launch.key) in self.reported:   # the key again, from memory: maybe another variant
            first, sent = self.reported[(launch.kernel, launch.key)]
            if not dirs <= sent:
                sent |= dirs
                if isinstance(first, NoLookup):
                    self.out.put(replace(first, binaries=tuple(sorted(sent))))
                elif first.file is not None:
                    self.out.put(Binaries(unit=self.unit, file=first.file, binaries=tuple(sorted(sent))))

    def flush(self) -> None:   # lookups whose call never returned (it raised): reported without binaries
        for msg in self.pending.values():
            self.out.put(msg)
        self.pending.clear()


def _build_unit(out, options: ChildOptions, pool, reports: _Reports, index: int, planned) -> None:
    """Drive one unit (its probe passes, then its token counts) and send UnitDone; on any failure send UnitFailed
    and exit the process."""
    from ..autotuner import disk
    unit = planned.unit
    reports.start(unit.id)
    out.put(UnitStart(unit.id))
    start, bench_start = time.monotonic(), disk.bench_seconds
    compiles_start = reports.compiled["compiled"] if reports.compiled is not None else 0
    compiled = None
    try:
        for hook in _unit_hooks:
            hook(planned.index, planned.attempt, options.emulate)
        disk.forget_in_memory()
        if pool is not None and options.overlap_compile:   # this unit's configs; workers go on
            compiled = pool.ready(index)
        elif pool is not None and index == 0:   # every unit's configs, before the first timing
            compiled = pool.ready(len(options.units) - 1)
        _drive(unit, planned.calls, options, reports)
    except BaseException as e:  # noqa: BLE001 - report everything, the parent decides
        _fail(out, reports, unit.id, e, pool)
    reports.flush()
    out.put(UnitDone(unit=unit.id, seconds=time.monotonic() - start,
                     bench_seconds=disk.bench_seconds - bench_start, precompile=compiled,
                     compiles=reports.compiled["compiled"] - compiles_start if reports.compiled else None))


def _drive(unit: Unit, calls, options: ChildOptions, reports: _Reports) -> None:
    """The unit's serving calls: a replay unit's recorded calls, or the target's call at each probe count (screening,
    nothing written) and then at each of `calls`."""
    from ..autotuner import disk
    from ..targets import get
    from . import precompile, selection
    device = "cpu" if options.emulate else "cuda"
    if isinstance(unit, ReplayUnit):   # recorded calls of one kernel, made again (record/replay.py)
        from ..record.replay import replay_all
        replay_all(unit.replay, device)
    else:
        target = get(unit.target)
        selection.probes.clear()
        probe_tokens = options.selection.probe_tokens if options.selection.mode == "robust" else ()
        for tokens in precompile.probe_counts(unit.tokens, probe_tokens):
            reports.tokens = tokens
            with selection.probing(tokens):   # screen the unit's keys at a small size, write nothing
                target.run(unit.shape, unit.dtypes, tokens, device)
            disk.forget_in_memory()   # the probe's winners: the next call of each key must miss
        for tokens in calls:   # a sharded build: maybe a tail of them (shard.Part)
            reports.tokens = tokens
            target.run(unit.shape, unit.dtypes, tokens, device)
    selection.probes.clear()   # the probe calls' tensors
    if device == "cuda":
        import torch
        torch.cuda.synchronize()


def _fail(out, reports: _Reports, unit_id: str, e: BaseException, pool) -> NoReturn:
    """Report the unit failed and exit at once: no interpreter teardown, after a GPU fault CUDA's own can hang or
    crash."""
    from ..errors import UnreplayableError
    reports.flush()
    # The first line names the fault ("AcceleratorError: CUDA error: an illegal memory access was encountered");
    # torch's advice lines after it would flood the one-line summary.
    out.put(UnitFailed(unit=unit_id, error=f"{type(e).__name__}: {e}".strip().splitlines()[0][:1000],
                       traceback=traceback.format_exc()[-4000:], retry=not isinstance(e, UnreplayableError)))
    out.close()
    out.join_thread()
    sys.stdout.flush()
    sys.stderr.flush()
    if pool is not None:
        pool.close()
    os._exit(1)
