"""The build children, as processes: start one per shard (shard.py: its parts of units), watch them all at once,
hold them to their deadlines, kill them (with every compiler they spawned), charge how each ended (to the part it
was in, or the next), clean up after them. What a child says is handed to the caller (`on_message`); what it was
charged goes to the ledger.

What the children print (torch's and Triton's warnings, third-party log lines, a kernel's own prints) is not the
user's: it goes to the build's log (`ChildOutput`), never onto the terminal under the progress bar or into a
`-q`/`--json` run's output. The log is kept, and named in the build's error, when units stayed failed."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import multiprocess
from multiprocess.connection import wait

from ..cache.layout import TMP_PREFIX
from .channel import Channel
from .ledger import Ledger
from .protocol import ChildOptions
from .shard import Part

STARTUP_TIMEOUT_S = 600.0   # imports + driver init of a child, before its first unit
EXIT_GRACE_S = 30.0         # a child that said done (or failed) and has not exited by then is killed


def _signal_name(exitcode: int | None) -> str:
    if exitcode is None:
        return "still running"
    if exitcode == -signal.SIGKILL:   # not by us: we say "timed out" for our own kills
        return "killed by SIGKILL (out of memory? the kernel's OOM killer sends SIGKILL)"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exited with status {exitcode}"


class State(Enum):
    """Where a child stands. STARTING, IN_UNIT, BETWEEN_UNITS: its run goes on, and `deadline` is when it must
    speak next. ENDED, LOST: its run is over, and `deadline` is when it must have exited (else it is killed)."""
    STARTING = "starting"             # spawned, no unit begun: the startup deadline runs
    IN_UNIT = "in a unit"             # in `current`: the unit timeout runs
    BETWEEN_UNITS = "between units"   # the unit timeout runs until the next unit starts
    ENDED = "ended"                   # said done, failed a unit, or timed out: how it ended is charged already
    LOST = "lost"                     # its pipe closed without a last word (exited, crashed, killed): see `lost_in`
    CLOSED = "closed"                 # its pipe and temp dirs are cleaned up


RUNNING = (State.STARTING, State.IN_UNIT, State.BETWEEN_UNITS)


@dataclass(eq=False)
class Child:
    """One build child and where it stands: the parts of units it was given, the one it is in, when it must speak
    next."""
    proc: Any                     # multiprocess.Process (forkserver; the package has no stubs)
    link: Channel                 # the parent's end of its pipe
    theirs: Any                   # the child's end (a multiprocess Connection), closed here once it started
    gpu: str | None               # its CUDA_VISIBLE_DEVICES; None: it sees every visible GPU (a one-child build)
    todo: list[Part]
    deadline: float               # time.monotonic(): see State
    state: State = State.STARTING
    current: Part | None = None   # the part it is in
    shard: int = 0                # which shard's parts it runs
    lost_in: State | None = None  # LOST: the state it was in when its pipe closed

    @property
    def running(self) -> bool:
        return self.state in RUNNING

    def begin(self, part: Part, timeout_s: float) -> None:
        self.state, self.current, self.deadline = State.IN_UNIT, part, time.monotonic() + timeout_s

    def between_units(self, timeout_s: float) -> None:
        self.state, self.current, self.deadline = State.BETWEEN_UNITS, None, time.monotonic() + timeout_s

    def end(self, grace_s: float = EXIT_GRACE_S) -> None:
        """Its run is over and how it ended is charged (it exits after done and after a failed unit)."""
        self.state, self.current, self.deadline = State.ENDED, None, time.monotonic() + grace_s

    def lose(self) -> None:
        """Its pipe closed with nothing charged yet: that waits for its exit code (_finish)."""
        self.lost_in, self.state, self.deadline = self.state, State.LOST, time.monotonic() + EXIT_GRACE_S

    def tell(self, msg) -> None:
        try:
            self.link.put(msg)
        except OSError:   # it died just after hello: the end of file comes next
            pass


# What every build child imports first, whatever it builds: imported once per build by a fork server
# (multiprocessing's forkserver), which forks each child from there: a second child of the build (a retry, another
# GPU's shard) starts at once instead of importing torch and Triton again (1.2 s of a toy child's 1.6 s start on
# the CPU; seconds on a GPU host). Nothing here initializes CUDA: each child does, after its fork, with its own
# CUDA_VISIBLE_DEVICES. The kernel modules are not preloaded: importing them constructs their autotuners, which
# must meet the child's hooks. The server is stopped when the children of the process's last running build are done
# (_fork_server_in_use): a build leaves no process behind, also in a process that goes on (a server that ensured its
# cache, a fleet worker).
PRELOAD = ["torch", "triton", "triton.language", "autotune_cache.builder.child"]


def _context() -> Any:
    """multiprocess's forkserver context, preloading PRELOAD; spawn where there is no fork server (not POSIX)."""
    try:
        ctx = multiprocess.get_context("forkserver")
    except ValueError:
        return multiprocess.get_context("spawn")
    ctx.set_forkserver_preload(PRELOAD)   # read when the server starts: at the build's first child
    return ctx


class ChildOutput:
    """The build's log: a file in the temp dir that the fork server, and so every child it forks and every
    compiler those start, has as its stdout and stderr. Removed after the build unless `keep()` was called (units
    stayed failed: their children's last words are there)."""

    def __init__(self) -> None:
        try:
            fd, name = tempfile.mkstemp(prefix="autotune-cache-build-", suffix=".log")   # mode 0600: ours alone
            os.close(fd)
            self.path = Path(name)
        except OSError:   # no temp dir to write: the output is dropped, the build goes on
            self.path = Path(os.devnull)
        self.kept = False

    def keep(self) -> None:
        """Kept only where a child wrote to it: an empty log (a build with no GPU to start on) tells nothing."""
        try:
            self.kept = self.path != Path(os.devnull) and self.path.stat().st_size > 0
        except OSError:
            self.kept = False

    def close(self) -> None:
        if not self.kept and self.path != Path(os.devnull):
            self.path.unlink(missing_ok=True)


def _start_fork_server(log: Path) -> None:
    """Start the fork server with `log` as its stdout and stderr: it inherits this process's fds 1 and 2 when it
    is spawned (multiprocessing has no option for them), so they point at the log for that moment only. Its
    children are forked from it and inherit them in turn. Without a fork server (not POSIX): nothing to do."""
    try:
        from multiprocess import forkserver
    except ImportError:
        return
    _context()   # the preload list, read when the server starts
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = [os.dup(1), os.dup(2)]
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        forkserver.ensure_running()
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (fd, *saved):
            os.close(f)


_running_lock = threading.Lock()
_running = 0   # Supervisor.run calls of this process under way: the fork server is theirs to share


@contextlib.contextmanager
def _fork_server_in_use(log: Path) -> Iterator[None]:
    """Around one build's children: the fork server is started with `log` as its output by the first build of this
    process that uses it, and stopped when the last such build is done. Builds on several threads share it
    (and so the first one's log): stopped under another build, it would make that build's next child start a new
    server (and the stop itself waits until the children it forked let go of its pipe)."""
    global _running
    with _running_lock:
        if _running == 0:
            _start_fork_server(log)
        _running += 1
    interrupted = False
    try:
        yield
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        with _running_lock:
            _running -= 1
            if _running == 0:
                _stop_fork_server(kill=interrupted)


def _stop_fork_server(kill: bool = False) -> None:
    """Stop the fork server. Private (ForkServer._stop, "used by unit tests" in multiprocessing): the module has no
    public way to stop it, and a server left running would keep torch imported in an idle process for as long as
    the build's process lives. `kill`: after an interrupt, SIGKILL it first: a child it forked for a start the
    interrupt cut short (no pid known here, so never killed) holds the server's alive pipe and waits for this
    process, and the server would wait for that child: the stop hung forever (Ctrl-C early in a build). That child
    reads end of file when this process exits, and exits too."""
    try:
        from multiprocess import forkserver
        pid = forkserver._forkserver._forkserver_pid
        if kill and pid is not None:
            os.kill(pid, signal.SIGKILL)
        forkserver._forkserver._stop()
    except (ImportError, AttributeError, OSError, ChildProcessError):
        pass


class Supervisor:
    """Runs the children of one build into `cache_dir`, each message of theirs handed to `on_message(child, msg)`
    (which moves the child's state on), failures charged to `ledger`."""

    def __init__(self, cache_dir: Path, ledger: Ledger, unit_timeout_s: float,
                 on_message: Callable[[Child, object], None]):
        self.cache_dir = cache_dir
        self.ledger = ledger
        self.unit_timeout_s = unit_timeout_s
        self.on_message = on_message
        self.output: ChildOutput | None = None   # the children's log, while run() runs and after it when kept

    def start(self, options: ChildOptions, todo: list[Part], shard: int = 0) -> Child:
        ctx = _context()
        mine, theirs = ctx.Pipe()
        from . import child
        chan = Channel(theirs)
        name = "autotune-cache-child" if options.gpu is None else f"autotune-cache-gpu{options.gpu}"
        proc = ctx.Process(target=child.main, name=name, daemon=True, args=(chan, chan, options))
        c = Child(proc=proc, link=Channel(mine), theirs=theirs, gpu=options.gpu, todo=list(todo),
                  deadline=time.monotonic() + STARTUP_TIMEOUT_S, shard=shard)
        c.proc.start()
        c.theirs.close()   # the child holds the only write end now: its death reads as end of file
        return c

    def run(self, shards: list[list[Part]], devices: tuple[str | None, ...],
            options: Callable[[list[Part], str | None], ChildOptions]) -> None:
        """Run the shards (shard.plan_parts) until every part is done or out of attempts: one child per shard at
        a time, each on a GPU of its own (`devices`), all watched at once from this one thread. `options(parts,
        gpu)`: what a child is started with. A shard whose child ended with parts left starts a fresh child on a
        free GPU, another than the last one where there is a choice."""
        self.output = ChildOutput()
        try:
            with _fork_server_in_use(self.output.path):
                self._run(shards, devices, options)
            if self.ledger.not_done():
                self.output.keep()
        finally:
            self.output.close()

    def _run(self, shards: list[list[Part]], devices: tuple[str | None, ...],
             options: Callable[[list[Part], str | None], ChildOptions]) -> None:
        free = list(devices)
        last_gpu: dict[int, str | None] = {}
        running: dict[int, Child] = {}   # by shard
        try:
            while True:
                for i, shard in enumerate(shards):
                    left = self.ledger.runnable_parts(shard)
                    if i in running or not left or not free:
                        continue
                    gpu = next((g for g in free if g != last_gpu.get(i)), free[0])
                    free.remove(gpu)
                    running[i] = self.start(options(left, gpu), left, shard=i)
                if not running:
                    break
                ended = self._step(list(running.values()))
                for i, c in list(running.items()):
                    if c in ended:
                        del running[i]
                        free.append(c.gpu)
                        last_gpu[i] = c.gpu
        except BaseException:
            for c in running.values():
                _kill(c.proc)
            raise
        finally:
            for c in running.values():
                self._close(c)

    def _step(self, children: list[Child]) -> list[Child]:
        """Wait for the next message, exit or deadline of any child and handle it; returns the children whose end
        is now accounted for. A child that said done or failed, or whose pipe closed, is given
        EXIT_GRACE_S to exit while the others go on."""
        nearest = min(c.deadline for c in children)
        wait([c.link if c.running else c.proc.sentinel for c in children],
             timeout=min(max(0.0, nearest - time.monotonic()), 1.0))
        ended = []
        for c in children:
            if c.running:
                self._read(c)
                if c.running and time.monotonic() >= c.deadline and not c.link.poll():
                    self._timed_out(c)
            if not c.running and (not c.proc.is_alive() or time.monotonic() >= c.deadline):
                self._finish(c)
                ended.append(c)
        return ended

    def _read(self, c: Child) -> None:
        """Handle every message the child has sent so far, up to its last."""
        while c.running and c.link.poll():
            try:
                msg = c.link.get()
            except (EOFError, OSError):   # the child is gone: exited, crashed or killed
                c.lose()
                return
            self.on_message(c, msg)

    def _timed_out(self, c: Child) -> None:
        _kill(c.proc)
        if c.state is State.IN_UNIT:
            assert c.current is not None   # begin() set it with the state
            self.ledger.fail(c.current, f"timed out after {self.unit_timeout_s:g} s", count=False)
        elif c.state is State.STARTING:
            self.ledger.fail_next(c.todo, f"child did not start within {STARTUP_TIMEOUT_S:g} s")
        else:   # nothing is charged where its units are all done
            self.ledger.fail_next(c.todo, f"child hung between units for {self.unit_timeout_s:g} s")
        c.end(grace_s=0.0)

    def _finish(self, c: Child) -> None:
        """The child exited, or had its EXIT_GRACE_S: charge what it left unaccounted, then clean up after it."""
        if c.proc.is_alive() or c.state is State.LOST:
            _kill(c.proc)   # hung at exit, or died in a unit: take its compilers down too
        if c.state is State.LOST:
            died = f"child {_signal_name(c.proc.exitcode)}"
            if c.lost_in is State.IN_UNIT:   # the child died inside a unit
                assert c.current is not None   # begin() set it with the state, lose() kept it
                self.ledger.fail(c.current, died, count=False)
            else:   # died between units or before the first: charge the next unit, else we loop forever
                where = "between units" if c.lost_in is State.BETWEEN_UNITS else "before its first unit"
                self.ledger.fail_next(c.todo, f"{died} {where}")
        self._close(c)

    def _close(self, c: Child) -> None:
        if c.state is State.CLOSED:
            return
        c.state = State.CLOSED
        c.link.close()
        c.theirs.close()
        if c.proc.pid is not None:
            self._remove_temp_dirs(c.proc.pid)

    def _remove_temp_dirs(self, pid: int) -> None:
        """Triton writes each file into <hash dir>/tmp.pid_<pid>_<uuid>/ and then renames it into place: a child
        killed in between leaves that dir behind. Only the dead child's own are removed (a server may be writing)."""
        for tmp in self.cache_dir.glob(f"*/{TMP_PREFIX}{pid}_*"):
            shutil.rmtree(tmp, ignore_errors=True)


def _kill(proc) -> None:
    if proc.pid is None:
        return
    try:
        # The child and every compiler it spawned. Safe before the child is reaped: no other group can have
        # its pid as id. Before its setsid() there is no such group: then the child alone.
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        if proc.exitcode is None:
            proc.kill()
    proc.join(timeout=10)
