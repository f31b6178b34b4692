"""What a build shows while it runs, in one of three modes: "tty", one rich progress bar per unit (keys reached,
what it is doing, on which GPU), redrawn in place; "plain", one line when a unit starts and one when it is done (a
log or a pipe: no bars, no redraws); "none"."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from .plan import Plan
from .spec import ReplayUnit, Unit

MODES = ("tty", "plain", "none")


def mode_of(progress: bool | str) -> str:
    """A mode from MODES; True (the Python API's default) is bars on a terminal, plain lines elsewhere."""
    if progress is True:
        return "auto"
    if progress is False or progress is None:
        return "none"
    if progress not in MODES + ("auto",):
        raise ValueError(f"progress must be one of {', '.join(MODES)} or auto, got {progress!r}")
    return progress


class View:
    """`gpu_of(unit id)`: the GPU of the unit's last attempt, named in its label in a build over several GPUs.
    `progress`: a mode (MODES, or "auto": tty on a terminal, else plain; True: auto, False: none)."""

    def __init__(self, console: Console, plan: Plan, devices: tuple[str | None, ...], progress: bool | str,
                 gpu_of: Callable[[str], str | None]):
        self.console = console
        self.units = {u.id: u for u in plan.units}
        self.devices = devices
        mode = mode_of(progress)
        self.mode = ("tty" if console.is_terminal else "plain") if mode == "auto" else mode
        self.show_progress = self.mode == "tty"
        self.gpu_of = gpu_of
        self._progress: Progress | None = None
        self._tasks: dict[str, TaskID] = {}   # unit id -> its bar (only with bars: _progress)

    @contextmanager
    def live(self, units: list[Unit]) -> Iterator[None]:
        """Draw a bar for each of `units` (those not done yet) while the block runs."""
        progress = (Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("keys"), TimeElapsedColumn(), console=self.console, transient=False)
                    if self.show_progress else None)
        with progress or nullcontext():
            self._progress = progress
            if progress is not None:
                for unit in units:
                    self._tasks[unit.id] = progress.add_task(self._label(unit.id, "waiting"), total=len(unit.keys))
            yield

    def _label(self, unit_id: str, what: str) -> str:
        unit = self.units[unit_id]
        gpu = self.gpu_of(unit_id) if self.devices != (None,) else None
        where = "" if gpu is None else f"GPU {gpu} "
        if isinstance(unit, ReplayUnit):   # one recorded kernel
            return f"{unit.kernel.qualname} [dim]{where}{what}[/dim]"
        s = unit.shape
        return f"{unit.target} tp{','.join(map(str, unit.tp))} H{s.H}/HV{s.HV} [dim]{where}{what}[/dim]"

    def _line(self, unit_id: str, what: str) -> None:
        if self.mode == "plain":
            self.console.print(self._label(unit_id, what).replace("[dim]", "").replace("[/dim]", ""), markup=False,
                               soft_wrap=True)

    def starting(self, unit_id: str) -> None:
        self._line(unit_id, "starting")
        if self._progress is not None and unit_id in self._tasks:
            self._progress.reset(self._tasks[unit_id], description=self._label(unit_id, "starting"))

    def reached(self, unit_id: str, kernel: str) -> None:
        """The unit reached a key of `kernel` it had not reached before."""
        if self._progress is not None and unit_id in self._tasks:
            self._progress.update(self._tasks[unit_id], advance=1, description=self._label(unit_id, kernel))

    def done(self, unit_id: str, seconds: float) -> None:
        self._line(unit_id, f"done in {seconds:.1f} s")
        if self._progress is not None and unit_id in self._tasks:
            task = self._tasks[unit_id]
            self._progress.update(task, completed=self._progress.tasks[task].total,
                                  description=self._label(unit_id, f"done in {seconds:.1f} s"))

