"""The build parent: locks the cache dir and runs a build, composed of the children it supervises
(supervisor.py), the manifest it keeps (ledger.py) and what it shows (view.py). Never imports torch or triton."""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

from rich.console import Console

from ..autotuner import versions
from ..cache import location
from ..cache.files import Created
from ..cache.fingerprint import Fingerprint
from ..cache.location import CacheDir
from ..cache.lock import locked
from ..cache.manifest import Manifest
from ..errors import BuildFailedError, CacheDirError, NoGPUError
from . import gpus
from .ledger import Ledger
from .plan import Plan
from .protocol import (
    Binaries,
    ChildOptions,
    ChildUnit,
    Done,
    Go,
    Hello,
    LookedUp,
    NoGPU,
    NoLookup,
    Stop,
    UnitDone,
    UnitFailed,
    UnitStart,
)
from .shard import Part, ShardPlan, plan_parts
from .spec import Unit
from .supervisor import Child, Supervisor
from .timeline import Timeline
from .view import View

# Below this much free space a build does not start: one FLA unit writes about 30 MB (BENCHMARKS.md), and a disk
# that fills up in the middle fails the unit at hand (its files are Triton's atomic writes, never half files).
MIN_FREE_BYTES = 64 << 20


def prepare_cache_dir(path: str | os.PathLike | None, created: Created | None = None) -> CacheDir:
    """Absolute, existing, writable directory with room to build, or CacheDirError (UnsupportedTritonError: the
    Triton here cannot build) before any work starts
    (and then no directory this call created is left behind). The dirs it creates are of mode 0755 whatever the
    umask (files.make_dirs): a server of another user reads them, and trust refuses a dir others may write.
    `created`: where the dirs it made are recorded for the caller's own cleanup (files.Created)."""
    if path is None:
        raise CacheDirError("a cache dir is needed (--cache-dir DIR)")
    versions.require()   # an unsupported Triton: a child could only fail every unit
    root = location.normalize(path)
    if root.exists() and not root.is_dir():
        raise CacheDirError(f"cache dir {root} exists and is not a directory")
    made = Created()   # the directories mkdir created: gone again if the dir cannot take a build
    try:
        made.dirs(root)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".write-test.") as f:
            f.write(b"\0" * 4096)   # an empty file is created even on a full disk: write (and sync) a block
            f.flush()
            os.fsync(f.fileno())
        free = shutil.disk_usage(root).free
        if free < MIN_FREE_BYTES:
            raise CacheDirError(f"cache dir {root} has {free / 1e6:.1f} MB free; a build needs at least "
                                f"{MIN_FREE_BYTES / 1e6:.0f} MB (an FLA unit writes about 30 MB)")
    except (OSError, CacheDirError) as e:
        made.undo()
        if isinstance(e, CacheDirError):
            raise
        raise CacheDirError(f"cache dir {root} is not writable: {e.strerror or e}") from None
    if created is not None:
        created.take(made)
    return root


class Build:
    """One build of a plan into a cache dir. `run()` returns the manifest; units done are never redone.
    `progress`: what the build shows (view.mode_of): True, False, or a mode, "tty" / "plain" / "none" (the CLI's).

    `devices`: the GPU of each child that runs at once (gpus.for_build; default from the spec): (None,) is one
    child seeing every visible GPU; ("0", "1") shards the keys over two children, one per GPU (shard.py)."""

    def __init__(self, plan: Plan, cache_dir: Path, *, console: Console | None = None, progress: bool | str = True,
                 devices: tuple[str | None, ...] | None = None, created: Created | None = None) -> None:
        self.created = created   # where the lock file is recorded when this build creates it (files.Created)
        self.plan = plan
        self.spec = plan.spec
        self.cache_dir = cache_dir
        self.console = console or Console(stderr=True)
        self.devices = tuple(devices) if devices is not None else gpus.for_build(self.spec.gpus, self.spec.emulate)
        self.ledger = Ledger(plan, cache_dir, self.console)
        self.view = View(self.console, plan, self.devices, progress,
                         gpu_of=lambda unit_id: self.ledger.manifest.units[unit_id].gpu)
        self.supervisor = Supervisor(cache_dir, self.ledger, self.spec.unit_timeout_s, self._on_message)
        self.shards = ShardPlan(shards=(), owner={})   # set by run(): who tunes which key
        self.timeline = Timeline()
        self._started: set[str] = set()   # units with a part started in this build (their bar is reset once)

    @property
    def manifest(self) -> Manifest:
        """The ledger's manifest (once run() opened it)."""
        return self.ledger.manifest

    @staticmethod
    def compile_processes(children: int, emulate: bool) -> int | None:
        """Precompile workers per child of a sharded build: the cores this process may use shared out between the
        children that run at once, less the one each child benchmarks on, e.g. 16 cores, 4 GPUs -> 3 each. None
        (the child decides) where AUTOTUNE_CACHE_COMPILE_PROCESSES is set, or in emulated builds (threads, as in a
        one-child emulated build)."""
        from .. import settings
        from .precompile import cores
        if emulate or settings.current().compile_processes is not None:
            return None
        return max(1, cores() // children - 1)

    def _options(self, todo: list[Part], gpu: str | None, children: int) -> ChildOptions:
        index = {u.id: i for i, u in enumerate(self.plan.units)}   # the fault hook names units by plan position
        units = tuple(ChildUnit(unit=p.unit, index=index[p.id], attempt=self.ledger.parts[(p.id, p.shard)].attempts
                                + 1, tokens=p.tokens) for p in todo)
        shard = todo[0].shard
        self.timeline.spawning(shard)
        options = ChildOptions(cache_dir=str(self.cache_dir), units=units, emulate=self.spec.emulate,
                               selection=self.spec.selection, overlap_compile=self.spec.overlap_compile,
                               foreign=self.shards.foreign(shard), triton_env=self.spec.triton_env,
                               compile_processes=self.spec.compile_processes,
                               compile_workers=self.spec.compile_workers,
                               environ=tuple(os.environ.items()), cwd=os.getcwd(), build_pid=os.getpid())
        if gpu is not None:   # a child of a sharded build sees its GPU only, and its share of the cores
            options = replace(options, gpu=gpu, compile_processes=self.spec.compile_processes
                              or self.compile_processes(children, self.spec.emulate))
        return options

    def _on_message(self, c: Child, msg: object) -> None:
        """One message of a child (protocol.py): into the manifest, onto the screen, and the child's state on."""
        timeout = self.spec.unit_timeout_s
        match msg:
            case NoGPU():
                raise NoGPUError(msg.message)
            case Hello():
                self.timeline.hello(c)
                c.tell(Go() if self.ledger.on_hello(Fingerprint(**msg.fingerprint), c.gpu) else Stop())
            case UnitStart():
                part = _part_of(c, msg.unit)
                c.begin(part, timeout)
                self.ledger.on_unit_start(part, c.gpu)
                self.timeline.part_started(c, part)
                if msg.unit not in self._started:   # one bar per unit, over all its parts
                    self._started.add(msg.unit)
                    self.view.starting(msg.unit)
            case LookedUp():
                if self.ledger.on_lookup(msg, _part_of(c, msg.unit)):
                    self.view.reached(msg.unit, msg.kernel)
            case NoLookup():
                if self.ledger.on_no_lookup(msg, _part_of(c, msg.unit)):
                    self.view.reached(msg.unit, msg.kernel)
            case Binaries():
                self.ledger.on_binaries(msg)
            case UnitDone():
                rec = self.ledger.on_unit_done(msg, _part_of(c, msg.unit))
                self.timeline.part_done(c, msg)
                if rec.status == "done":   # its last part (the ledger set its seconds with the status)
                    self.view.done(rec.id, rec.seconds or 0.0)
                c.between_units(timeout)   # until the next UnitStart
            case UnitFailed():
                self.ledger.fail(_part_of(c, msg.unit), msg.error, count=False, retry=msg.retry)
                self.timeline.ended(c)
                c.end()   # the child exits after a failed unit
            case Done():
                self.timeline.ended(c)
                c.end()

    def run(self) -> Manifest:
        def waiting(lock_file: str) -> None:
            self.console.print(f"waiting for another build holding {lock_file} ...")

        if (newer := versions.support().warning) is not None:
            self.console.print(f"warning: {newer}")
        with locked(self.cache_dir, timeout=None, on_wait=waiting, created=self.created):
            self.ledger.open()
            with self.view.live(self.ledger.not_done()):
                todo = self.ledger.runnable(self.plan.units)
                try:
                    self._run_children(todo)
                except KeyboardInterrupt:   # every child is dead already (Supervisor.run kills them on any exception)
                    self.ledger.interrupted()
                    raise
            self.ledger.save()
            self.ledger.report()
            self.timeline.write(self.ledger.tuned)
        failed = [self.manifest.units[u.id] for u in self.ledger.not_done()]
        if failed:
            lines = "; ".join(f"{r.id}: {r.error}" for r in failed)
            output = self.supervisor.output
            log = f" (the build children's output: {output.path})" if output is not None and output.kept else ""
            raise BuildFailedError(f"{len(failed)} of {len(self.plan.units)} units failed after retries: {lines}{log}",
                                   self.manifest)
        return self.manifest

    def _run_children(self, todo: list[Unit]) -> None:
        """The keys of `todo` sharded over the devices (shard.plan_parts), one child per shard at a time."""
        self.shards = plan_parts(todo, len(self.devices))
        self.ledger.use(self.shards)
        n = len(self.shards.shards)
        if n > 1:
            self.ledger.sharded = True   # only keys the plan did not predict can be tuned twice now
            loads = ", ".join(f"GPU {g}: {c}" for g, c in zip(self.devices, self.shards.loads(), strict=False))
            self.console.print(f"sharding {len(self.shards.owner)} keys of {len(todo)} units over {n} GPUs, each "
                               f"key tuned by one of them (configs to benchmark: {loads})")
        self.supervisor.run([list(s) for s in self.shards.shards], self.devices,
                            lambda parts, gpu: self._options(parts, gpu, n))


def _part_of(c: Child, unit_id: str) -> Part:
    """The part of `unit_id` the child was given (a unit has at most one part per shard)."""
    return next(p for p in c.todo if p.id == unit_id)

