"""One fleet job on its node (what a Ray task runs; plain Python, no Ray here): skip it if the registry holds a
bundle for this node's fingerprint and the job's units, else today's build (builder/: a child process per GPU,
timeouts, retries, manifest) into a temp dir, prune, sign if asked, publish, remove the temp dir. Returns a
JobResult; a failure is a result, never an exception (the other jobs go on)."""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from ..errors import AutotuneCacheError
from .matrix import Job


class JobResult(BaseModel):
    """Example: job 3, H200, built in 34.2 s, 9 entries, bundle 3.5 MB published."""
    job: int
    gpu_type: str
    status: Literal["built", "skipped", "failed", "no-node"]
    seconds: float = 0.0
    node: str | None = None          # the host that ran it
    gpu_name: str | None = None      # what the build's fingerprint says the GPU was
    entries: int | None = None
    bundle_sha256: str | None = None
    bundle_bytes: int | None = None
    error: str | None = None


def _node_machine(emulate: bool):
    """This node's GPU as the build child will see it: the real device 0 (Ray set CUDA_VISIBLE_DEVICES), or the
    emulated default."""
    from ..builder import device
    from ..registry.select import Machine
    p = device.H100 if emulate else device.read()
    if p is None:
        return None
    return Machine(gpu_name=p.name, capability=f"{p.major}.{p.minor}", allow_emulated=emulate)


def held(url: str, job: Job) -> str | None:
    """The sha256 of a published bundle that serves this job on this node, else None."""
    from ..registry import index
    from ..registry.machine import Here
    from ..registry.store import open_store
    machine = _node_machine(job.spec.emulate)
    if machine is None:
        return None
    here, need = Here(), set(job.units)
    for r in index.scan(open_store(url), job.gpu_type).records:
        if (r.gpu_type == job.gpu_type and need <= set(r.units) and r.fingerprint.emulated == job.spec.emulate
                and r.fingerprint.capability == machine.capability and not here.misses(r)):
            return r.bundle_sha256
    return None


def run_job(job: Job, url: str, key: str | None = None, compile_processes: int | None = None) -> JobResult:
    """`compile_processes`: this job's share of its node's cores (Ray starts one job per GPU; each build would
    otherwise start a compile worker per core of the whole node)."""
    import socket

    from .. import settings
    # the env var, where set, stays the node's own choice
    share = compile_processes if settings.current().compile_processes is None else None

    from ..cache.prune import plan_prune
    from ..cache.scan import scan
    from ..operations import build_into
    from ..registry.publish import publish
    from ..registry.select import gpu_type_of

    started = time.monotonic()
    base = dict(job=job.index, gpu_type=job.gpu_type, node=socket.gethostname())
    tmp = Path(tempfile.mkdtemp(prefix="autotune-cache-fleet-"))
    try:
        sha = held(url, job)
        if sha is not None:
            return JobResult(status="skipped", bundle_sha256=sha, seconds=time.monotonic() - started, **base)
        cache = tmp / "cache"
        m = build_into(job.spec.model_copy(update={"compile_processes": share or None}), cache,
                       progress=False).manifest
        gpu_name = m.fingerprint.gpu_name if m.fingerprint is not None else None   # None: no child said hello
        if not job.spec.emulate and gpu_type_of(gpu_name or "").lower() != job.gpu_type.lower():
            return JobResult(status="failed", gpu_name=gpu_name, seconds=time.monotonic() - started,
                             error=f"the node is labelled {job.gpu_type}, its GPU is {gpu_name}: not published",
                             **base)
        plan_prune(scan(cache)).execute()
        if key:
            from ..cache.signing import sign
            sign(cache, key)
        model = job.label if len(job.label) <= 200 else job.label[:197] + "..."
        r = publish(cache, url, gpu_type=job.gpu_type, model=model).record
        return JobResult(status="built", gpu_name=gpu_name, entries=r.entries, bundle_sha256=r.bundle_sha256,
                         bundle_bytes=r.bundle_bytes, seconds=time.monotonic() - started, **base)
    except AutotuneCacheError as e:
        return JobResult(status="failed", error=str(e).splitlines()[0][:500], seconds=time.monotonic() - started,
                         **base)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
