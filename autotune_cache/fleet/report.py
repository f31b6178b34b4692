"""How a fleet build reads: one line per finished job (stderr, as they come) and one table per GPU type x model x
TP at the end (`--json`: the same rows)."""
from __future__ import annotations

from ..amounts import count, size
from .job import JobResult
from .ray_runner import FleetResult


def line(r: JobResult) -> str:
    # every status's text is made, the built one's numbers absent for the others
    what = {"built": f"built and published {r.bundle_sha256[:12] if r.bundle_sha256 else ''} "
                     f"({count(r.entries or 0, 'entry', 'entries')}, {size(r.bundle_bytes or 0)})",
            "skipped": f"skipped: the registry holds {r.bundle_sha256[:12] if r.bundle_sha256 else ''}",
            "failed": f"[red]failed[/red]: {r.error}", "no-node": f"[red]no node[/red]: {r.error}"}[r.status]
    return f"job {r.job} ({r.gpu_type}{', ' + r.node if r.node else ''}, {r.seconds:.1f} s): {what}"


def table(result: FleetResult):
    from rich.table import Table
    d = result.as_dict()
    t = Table(title=f"fleet build -> {result.url}: " + ", ".join(f"{v} {k}" for k, v in d["jobs"].items()) + " jobs")
    for col in ("GPU type", "model", "TP", "job", "status", "seconds", "entries", "bytes", "bundle", "note"):
        t.add_column(col)
    for row in sorted(d["rows"], key=lambda r: (r["gpu_type"], r["model"], r["tp"])):
        t.add_row(row["gpu_type"], row["model"], str(row["tp"]), str(row["job"]), row["status"],
                  f"{row['seconds']:.1f}", str(row["entries"] or "-"), str(row["bundle_bytes"] or "-"),
                  (row["bundle_sha256"] or "-")[:12], row["error"] or "")
    return t
