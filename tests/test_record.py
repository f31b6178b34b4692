"""Records (autotune_cache/record/): a live process's autotune lookups written as lines, read back, merged, and built
out of process with `build --from-record`. Real Triton kernels (record_kernels.py) compiled for the fake sm_90 GPU
(FACTS.md §2), real subprocesses, the real CLI."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import TESTS, run_cli

from autotune_cache.record import read
from autotune_cache.record.schema import KernelId, Record
from autotune_cache.record.store import parse_line

RUN = TESTS / "record_run.py"
WORK = ("scale:300", "scale:300", "scale:100:32", "copy:1000")


def run(*args):
    proc = subprocess.run([sys.executable, str(RUN), *map(str, args)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def autotune_files(root) -> dict:
    """relative path -> (key, config dicts) of every autotune file under root: the timings left out, they are fake."""
    return {p.relative_to(root).as_posix(): (json.loads(p.read_text())["key"],
                                            [c for c, _ in json.loads(p.read_text())["configs_timings"]])
            for p in Path(root).rglob("*.autotune.json")}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """The workload run under `autotune-cache record -- CMD`, with the disk cache on (files named in the record)."""
    d = tmp_path_factory.mktemp("recorded")
    rec = d / "run.jsonl"
    proc = run_cli("record", "--out", rec, "--", sys.executable, RUN, "--cache", d / "cache", "--autotuning", *WORK)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "3 lookup line(s) appended" in proc.stderr
    return d / "cache", rec


@pytest.fixture(scope="module")
def built(recorded, tmp_path_factory):
    _, rec = recorded
    cache = tmp_path_factory.mktemp("built") / "cache"
    proc = run_cli("build", "--from-record", rec, "--cache-dir", cache, "--emulate", "--no-progress", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cache, json.loads(proc.stdout)


def test_each_distinct_lookup_is_one_line_with_a_replayable_call(recorded):
    cache, rec = recorded
    lines = rec.read_text().splitlines()
    assert len(lines) == 3   # scale:300 twice: one lookup
    records = [parse_line(line.encode()) for line in lines]
    by_key = {(r.kernel.qualname, r.key): r for r in records}
    scale = by_key[("record_scale_kernel", (64, "torch.float32", "torch.float32", "torch.int32"))]
    assert (scale.kernel.module, scale.kernel.name) == ("record_kernels", "record_scale_kernel")
    assert scale.kernel.file.endswith("record_kernels.py") and len(scale.kernel.source_sha256) == 64
    x, y, cu_seqlens, n, factor = scale.call.args
    assert (x.shape, x.stride, x.storage, x.values) == ((308, 32), (64, 1), 308 * 64, None)   # a strided view
    assert cu_seqlens.values == (0, 100, 300) and cu_seqlens.dtype == "torch.int32"
    assert (n.value, factor.value) == (300 * 32, 0.5) and scale.call.kwargs["D"].value == 64
    # the grid of every config, evaluated on its meta-parameters
    assert [(g.meta, g.grid) for g in scale.call.grids] == [({"BLOCK": b}, (math.ceil(300 * 32 / b),))
                                                          for b in (32, 64, 128)]
    assert all(r.outcome == "miss" and r.disk_cache and r.configs == len(r.call.grids) for r in records)
    assert all((cache / r.file).is_file() for r in records)
    assert by_key.keys() >= {("record_scale_kernel", (32, "torch.float32", "torch.float32", "torch.int32")),
                             ("record_copy_kernel", (1000, "torch.float32", "torch.float32"))}


def test_a_record_round_trips_through_its_line():
    k = KernelId(module="m", qualname="C.k", name="k", source_sha256="a" * 64, configs_sha256="b" * 64)
    rec = Record(kernel=k, key=(True, 1, 1.5, "torch.int32", None), configs=2, pruned_sha256="c" * 64,
                 call={"args": [{"kind": "value", "value": float("inf")}, {"kind": "dtype", "of": "triton",
                                                                           "name": "fp32"},
                                {"kind": "tuple", "items": [{"kind": "value", "value": 3}]}]})
    again = parse_line(rec.model_dump_json().encode())
    assert again == rec
    assert [type(v) for v in again.key] == [bool, int, float, str, type(None)]   # True stays apart from 1
    with pytest.raises(ValueError, match="schema version 2"):
        parse_line(rec.model_dump_json().replace('"version":1', '"version":2').encode())


APPENDER = """
import sys
from autotune_cache.record import store
from autotune_cache.record.schema import KernelId, Record
k = KernelId(module="m", qualname="k", name="k", source_sha256="a" * 64, configs_sha256="b" * 64)
me = int(sys.argv[2])
for i in range(int(sys.argv[3])):
    big = {"kind": "tensor", "dtype": "torch.int64", "shape": [50000], "stride": [1], "storage": 50000,
           "values": [me] * 50000}
    store.append(store.open_for_append(sys.argv[1]),
                 Record(kernel=k, key=(me, i), configs=2, pruned_sha256="c", call={"args": [big]}))
"""


def test_many_processes_append_whole_lines(tmp_path):
    path = tmp_path / "shared.jsonl"
    procs = [subprocess.Popen([sys.executable, "-c", APPENDER, str(path), str(me), "15"]) for me in range(6)]
    assert [p.wait(timeout=300) for p in procs] == [0] * 6
    loaded = read([path])
    assert loaded.warnings == () and loaded.lines == 90 and len(loaded.records) == 90
    # each line is one writer's: its key and its 50,000 values agree (lines of 350 KB, far past a pipe's atomic size)
    assert all(set(r.call.args[0].values) == {r.key[0]} for r in loaded.records)


def test_records_of_many_runs_merge(recorded, tmp_path):
    _, rec = recorded
    lines = rec.read_text().splitlines()
    other = tmp_path / "other.jsonl"
    hit = json.loads(lines[0]) | {"outcome": "hit", "pid": 1}
    other.write_text(json.dumps(hit) + "\nnot json\n" + lines[1] + "\n")
    loaded = read([rec, other])
    assert loaded.lines == 6 and len(loaded.records) == 3
    assert len(loaded.warnings) == 1 and "other.jsonl:2" in loaded.warnings[0]
    assert all(r.outcome == "miss" for r in loaded.records)   # a miss anywhere stays a miss


def test_replay_build_makes_exactly_the_recorded_disk_keys(recorded, built):
    """The product's claim: the build from a record writes the very autotune files the recorded process looked up.
    "Same" under the fake GPU: the same file names (dir = disk key) with the same key and config list; the timings
    (and so the winner) are the fake benchmarker's."""
    recorded_cache, rec = recorded
    cache, summary = built
    assert summary["same_file"] == 3 and summary["other_file"] == [] and summary["unreplayable"] == []
    assert autotune_files(cache) == autotune_files(recorded_cache)
    manifest = json.loads((cache / "manifest.json").read_text())
    assert sorted(manifest["entries"]) == sorted(autotune_files(recorded_cache))
    assert {u["target"] for u in manifest["units"].values()} == {"record"}


def test_plan_from_record(recorded):
    _, rec = recorded
    proc = run_cli("plan", "--from-record", rec, rec, "--json", check=0)
    plan = json.loads(proc.stdout)
    assert plan["lines"] == 6 and plan["records"] == 3 and plan["unreplayable"] == []
    assert sorted((u["kernel"]["qualname"], len(u["keys"]), u["configs"]) for u in plan["units"]) == [
        ("record_copy_kernel", 1, 2), ("record_scale_kernel", 2, 6)]


def test_unreplayable_records_are_reported_per_kernel(recorded, tmp_path):
    _, rec = recorded
    scale_64, scale_32, copy = (json.loads(line) for line in rec.read_text().splitlines())
    scale_64["kernel"]["module"] = "no_such_module_anywhere"          # its module is gone
    copy["kernel"]["source_sha256"] = "0" * 64                        # the kernel was edited since
    scale_32["call"]["args"][3] = {"kind": "opaque", "type": "mylib.Handle"}   # an argument not described
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in (scale_64, scale_32, copy)))
    plan = json.loads(run_cli("plan", "--from-record", bad, "--json", check=0).stdout)
    assert [(x["kernel"], x["keys"]) for x in plan["unreplayable"]] == [("record_kernels.record_scale_kernel", 1)]
    assert "mylib.Handle" in plan["unreplayable"][0]["reason"] and len(plan["units"]) == 2
    proc = run_cli("build", "--from-record", bad, "--cache-dir", tmp_path / "cache", "--emulate", "--no-progress",
                   "--json")
    assert proc.returncode == 1, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    errors = {f["unit"].split("/")[1]: f["error"] for f in summary["failed"]}
    assert "does not import here" in errors["no_such_module_anywhere.record_scale_kernel"]
    assert "source changed since the record" in errors["record_kernels.record_copy_kernel"]
    assert len(summary["unreplayable"]) == 1 and summary["units"] == 0
    assert "attempt 2" not in proc.stderr   # another attempt would fail alike: none is made


def test_a_servers_misses_are_a_record_to_build(recorded, tmp_path):
    """misses -> build --from-record -> hit: the server's miss report is itself a record."""
    _, rec = recorded
    cache, misses, again = tmp_path / "cache", tmp_path / "misses.jsonl", tmp_path / "misses-again.jsonl"
    first = tmp_path / "scale64.jsonl"
    first.write_text(rec.read_text().splitlines()[0] + "\n")   # a cache of scale:300 only
    run_cli("build", "--from-record", first, "--cache-dir", cache, "--emulate", "--no-progress", check=0)
    served = run("--cache", cache, "--install", "--misses", misses, "scale:300", "copy:1000")
    # the recorded kernel's module (from the manifest) reads the cache: copy, in the same module, misses there
    assert served["totals"] == {"lookups": 2, "hits": 1, "misses": 1} and served["bench_calls"] == 2
    assert any("record_scale_kernel" in f for f in served["flipped"])
    (missed,) = read([misses]).records
    assert (missed.kernel.qualname, missed.outcome) == ("record_copy_kernel", "miss")
    proc = run_cli("build", "--from-record", misses, "--cache-dir", cache, "--emulate", "--no-progress", "--json",
                   check=0)
    assert json.loads(proc.stdout)["units"] == 1
    served = run("--cache", cache, "--install", "--misses", again, "scale:300", "copy:1000")
    assert served["totals"] == {"lookups": 2, "hits": 2, "misses": 0} and served["bench_calls"] == 0
    assert not again.exists() or again.read_text() == ""


OVERHEAD = """
import json, os, sys
os.environ["TRITON_CACHE_DIR"] = sys.argv[1]
from autotune_cache.builder import emulation
emulation.fake_gpu()
import triton.runtime.autotuner as at
run_before = at.Autotuner.run
from autotune_cache.record import recorder
recorder.start(sys.argv[2])
described = []
real = recorder._describe
recorder._describe = lambda *a: described.append(1) or real(*a)
import record_kernels
for _ in range(5):
    record_kernels.scale(300)
print(json.dumps({"run_untouched": at.Autotuner.run is run_before, "described": len(described)}))
"""


def test_a_key_seen_before_costs_nothing_more(tmp_path):
    """Recording leaves Autotuner.run as it is: its hook is on prune_configs, which Triton calls on an in-memory
    miss only, so the calls after a key's first go through Triton's own dict lookup alone."""
    proc = subprocess.run([sys.executable, "-c", OVERHEAD, str(tmp_path / "c"), str(tmp_path / "r.jsonl")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"run_untouched": True, "described": 1}
