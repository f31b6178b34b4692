"""`fleet build`: every job of a matrix as one Ray task that asks for one GPU (`num_gpus=1`) of its type (Ray's
`accelerator_type` option: the node resource `accelerator_type:H200`, which Ray sets on GPU nodes by itself and a
test cluster declares). Ray places the tasks, sets CUDA_VISIBLE_DEVICES to the GPU it gave, and retries nothing
itself: the builder on the node already retries a failed unit in a fresh child. Each task publishes its own bundle
when it finishes (the bundle never travels through this process); this process only collects the small results.
A GPU type no node offers would wait forever in Ray's queue: its jobs are reported `no-node` instead.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..errors import AutotuneCacheError
from .job import JobResult, run_job
from .matrix import Job, Matrix
from .matrix import jobs as plan_jobs

OBJECT_STORE_BYTES = 100 << 20   # a local cluster started here only carries small results


@dataclass(frozen=True)
class FleetResult:
    url: str
    jobs: tuple[Job, ...]
    results: tuple[JobResult, ...]

    @property
    def ok(self) -> bool:
        return all(r.status in ("built", "skipped") for r in self.results)

    def rows(self) -> list[dict]:
        """One per GPU type x model x TP, with its job's result."""
        by_job = {r.job: r for r in self.results}
        return [{**row.model_dump(), **by_job[row.job].model_dump(exclude={"job", "gpu_type"})}
                for j in self.jobs for row in j.rows]

    def as_dict(self) -> dict:
        counts = {s: sum(r.status == s for r in self.results) for s in ("built", "skipped", "failed", "no-node")}
        return {"registry": self.url, "ok": self.ok, "jobs": counts, "rows": self.rows()}


def _ray():
    try:
        import ray
    except ImportError:
        raise AutotuneCacheError("fleet build needs Ray: pip install 'autotune-cache[fleet]'") from None
    return ray


def _connect(ray, address: str | None) -> None:
    if ray.is_initialized():
        return
    kwargs = dict(include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    try:
        ray.init(address=address, **kwargs)   # None: RAY_ADDRESS, else a running local cluster, else a new one
    except ConnectionError as e:
        raise AutotuneCacheError(f"no Ray cluster at {address}: {e}") from None
    except ValueError:   # no cluster to join: start one here, small
        ray.init(object_store_memory=OBJECT_STORE_BYTES, **kwargs)


def _cpus_per_gpu(ray) -> dict[str, int]:
    """Per GPU type, the cores each of its GPUs gets on the leanest node that has it (CPU // GPU, at least 1): what
    a job asks Ray for and uses as its compile processes."""
    out: dict[str, int] = {}
    for node in ray.nodes():
        res = node.get("Resources", {}) if node.get("Alive") else {}
        gpus = res.get("GPU", 0)
        for k in res:
            if k.startswith("accelerator_type:") and gpus:
                t = k.split(":", 1)[1]
                out[t] = min(out.get(t, 1 << 30), max(1, int(res.get("CPU", 1) // gpus)))
    return out


def run(matrix: Matrix, url: str, *, address: str | None = None, key: str | None = None,
        on_done: Callable[[JobResult], None] | None = None) -> FleetResult:
    from ..registry.store import open_store
    open_store(url)   # a URL fsspec cannot open is refused before anything starts
    js = plan_jobs(matrix)
    ray = _ray()
    _connect(ray, address)
    offered = {k.split(":", 1)[1] for k in ray.cluster_resources() if k.startswith("accelerator_type:")}
    task = ray.remote(run_job)
    share = _cpus_per_gpu(ray)
    pending, results = {}, []
    for j in js:
        if j.gpu_type not in offered:
            r = JobResult(job=j.index, gpu_type=j.gpu_type, status="no-node",
                          error=f"no node offers accelerator_type:{j.gpu_type} (cluster has: "
                                f"{', '.join(sorted(offered)) or 'none'})")
            results.append(r)
            if on_done:
                on_done(r)
            continue
        cpus = share.get(j.gpu_type, 1)
        ref = task.options(num_gpus=1, num_cpus=cpus, accelerator_type=j.gpu_type, max_retries=0,
                           name=f"autotune-cache {j.gpu_type} {j.label} tp{','.join(map(str, j.spec.tp))}"
                           ).remote(j, url, key, cpus)
        pending[ref] = j
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            j = pending.pop(ref)
            try:
                r = ray.get(ref)
            except Exception as e:  # noqa: BLE001 - the node died, the worker crashed: that job failed
                r = JobResult(job=j.index, gpu_type=j.gpu_type, status="failed",
                              error=f"Ray task failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}")
            results.append(r)
            if on_done:
                on_done(r)
    return FleetResult(url=url, jobs=tuple(js), results=tuple(sorted(results, key=lambda r: r.job)))
