"""Fault tolerance of the build, on the CPU (toy target, emulated sm_90): a crash, hang, timeout or out-of-memory
in a unit, Ctrl-C, concurrent builders, a full or unwritable disk, corrupt and foreign cache files, bad input.

Faults come from AUTOTUNE_CACHE_FAULT="<unit index>:<kind>[:always]", read by tests/faults.py: a unit hook of the build
child (builder/child.py add_unit_hook) that tests/boot/sitecustomize.py registers in every process the tests start.
tp=(1, 2) gives 2 units: unit 0 tunes the 3 toy keys, unit 1 (same keys at another head count) finds them on disk.
"""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import helpers
import pytest
from helpers import run_cli, stand_in

from autotune_cache import BuildFailedError, build, shapes
from autotune_cache.builder import orchestrator
from autotune_cache.cache import manifest as manifest_mod
from autotune_cache.cache.files import sha256_file
from autotune_cache.cache.layout import read_autotune
from autotune_cache.errors import AutotuneCacheError, CacheDirError, ConfigError, SpecError, UnknownModelError

TAG = "AUTOTUNE_CACHE_TEST_TAG"   # set in a build's environment: every process it starts inherits it


def toy_spec(cache_dir, **kw):
    """helpers.toy_spec at TP 1+2, with a unit timeout and one retry (what the fault tests exercise)."""
    return helpers.toy_spec(cache_dir, **{"tp": (1, 2), "unit_timeout_s": 120.0, "retries": 1, **kw})


def toy_args(cache_dir, *extra):
    return ("build", "--target", "toy_target", "--tp", "1,2", "--max-tokens", "3000", "--cache-dir", cache_dir,
            "--emulate", "--no-progress", *extra)


def _ppid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def build_children(tag: str, cli: int) -> list[int]:
    """The build children of the CLI process `cli`: its tagged descendants but its own children (the fork server
    they are forked from, builder/supervisor.py, and the resource tracker that serves it)."""
    return [p for p in tagged_pids(tag) if p != cli and _ppid(p) != cli]


def tagged_pids(tag: str) -> list[int]:
    """Live processes (not zombies) started with TAG=tag in their environment, except multiprocess's resource
    tracker: one per parent process (pytest's lives as long as pytest), it exits with its parent."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            env = (d / "environ").read_bytes().split(b"\0")
            if f"{TAG}={tag}".encode() in env and b"resource_tracker" not in (d / "cmdline").read_bytes():
                found.append(int(d.name))
        except OSError:
            continue
    return found


def wait_until(predicate, timeout=60.0, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def assert_entries_intact(cache, m):
    """Every entry and every recorded file is on disk with the recorded bytes; every autotune file parses."""
    assert m.entries and m.files
    for name, entry in m.entries.items():
        assert sha256_file(cache / name) == entry.sha256
        assert list(read_autotune(cache / name).key) == entry.key
    for rel, rec in m.files.items():
        assert sha256_file(cache / rel) == rec.sha256, rel


def no_temp_files(cache):
    leftovers = [p for p in cache.rglob("*") if p.name.startswith(("tmp.pid_", ".manifest.", ".write-test."))]
    assert not leftovers, leftovers


@pytest.fixture(autouse=True)
def build_logs_kept_in_a_test_dir(tmp_path_factory, monkeypatch):
    """A build whose units stay failed keeps its children's log for the user, in the temp dir (and names it): these
    tests fail units on purpose, so their builds' temp dir is one of pytest's, not the machine's."""
    logs = tmp_path_factory.mktemp("tmp")
    monkeypatch.setattr(tempfile, "tempdir", str(logs))   # the in-process builds'
    monkeypatch.setenv("TMPDIR", str(logs))               # the CLI's in a process of its own
    return logs


@pytest.fixture
def tag(monkeypatch):
    value = uuid.uuid4().hex
    monkeypatch.setenv(TAG, value)
    yield value
    assert wait_until(lambda: not tagged_pids(value), 10, "the build's processes to exit") is True


# -- a crash, an out-of-memory, a hang in one unit: named, retried in a fresh child, the rest kept ----------------
CRASHES = {
    "raise": "RuntimeError: injected fault in unit",
    "segfault": "child killed by SIGSEGV",
    "exit": "child exited with status 3",
    "gpu-fault": "illegal memory access",   # emulated: the kernel compiles for sm_90, the CUDA error is raised
}


@pytest.mark.parametrize("kind", list(CRASHES))
def test_crash_in_a_unit_is_named_and_retried_keeping_the_other_unit(tmp_path, monkeypatch, tag, kind):
    monkeypatch.setenv("AUTOTUNE_CACHE_FAULT", f"1:{kind}")
    m = build(toy_spec(tmp_path), progress=False)
    u0, u1 = m.units.values()
    assert (u0.status, u1.status) == ("done", "done")
    # unit 0 finished before the crash and was kept: not blamed, not redone (a crash used to lose its unit_done)
    assert u0.attempts == 1 and not u0.failures and u0.hits == 0 and len(u0.entries) == 3
    assert u1.attempts == 2 and len(u1.failures) == 1 and CRASHES[kind] in u1.failures[0]
    assert u1.failures[0].startswith("attempt 1: ") and u1.error is None and u1.hits == 3
    assert_entries_intact(tmp_path, m)
    assert manifest_mod.load(tmp_path) == m
    no_temp_files(tmp_path)


def test_crash_in_first_unit_always_fails_it_and_still_builds_the_second(tmp_path, monkeypatch, tag):
    # ':always': every attempt of unit 0 segfaults. Unit 0 is named by its plan position, so the retry child
    # (whose share of the plan starts at unit 0 again) does not move the fault onto unit 1.
    monkeypatch.setenv("AUTOTUNE_CACHE_FAULT", "0:segfault:always")
    with pytest.raises(BuildFailedError, match="1 of 2 units failed after retries: .*killed by SIGSEGV") as e:
        build(toy_spec(tmp_path), progress=False)
    m = e.value.manifest
    u0, u1 = m.units.values()
    assert (u0.status, u0.attempts, u0.error) == ("failed", 2, "child killed by SIGSEGV")
    assert [f.split(":")[0] for f in u0.failures] == ["attempt 1", "attempt 2"]
    assert (u1.status, u1.attempts, u1.hits, len(u1.entries)) == ("done", 1, 0, 3)
    assert manifest_mod.load(tmp_path) == m
    assert_entries_intact(tmp_path, m)
    # the same build again, the fault gone: only unit 0 runs, and it finds unit 1's keys on disk
    monkeypatch.delenv("AUTOTUNE_CACHE_FAULT")
    again = build(toy_spec(tmp_path), progress=False)
    v0, v1 = again.units.values()
    assert (v0.status, v0.attempts, v0.hits) == ("done", 1, 3)
    assert v1 == u1


def test_oom_in_a_unit_is_named_and_retried_without_touching_host_memory(tmp_path, monkeypatch, tag):
    # The CPU variant caps the child's address space first (RLIMIT_AS): the allocation fails after a few hundred
    # MB of *address space* (no page is touched), as a GPU raises OutOfMemoryError; the test machine never swaps.
    monkeypatch.setenv("AUTOTUNE_CACHE_FAULT", "1:oom")
    m = build(toy_spec(tmp_path), progress=False)
    u0, u1 = m.units.values()
    assert (u0.status, u0.attempts, u1.status, u1.attempts) == ("done", 1, "done", 2)
    assert "RuntimeError" in u1.failures[0] and "allocate" in u1.failures[0]
    assert_entries_intact(tmp_path, m)


def test_oom_killer_sigkill_is_named_and_retried(tmp_path, monkeypatch, tag):
    # What the kernel's OOM killer does to a child that took all host memory: SIGKILL, no Python exception.
    monkeypatch.setenv("AUTOTUNE_CACHE_FAULT", "1:oom-kill")
    m = build(toy_spec(tmp_path), progress=False)
    u0, u1 = m.units.values()
    assert (u0.status, u0.attempts, u1.status, u1.attempts) == ("done", 1, "done", 2)
    assert "killed by SIGKILL (out of memory?" in u1.failures[0]


def test_hang_is_killed_at_the_unit_timeout_with_its_process_group_and_retried(tmp_path, monkeypatch, tag):
    # The toy child needs 3-5 s to import torch: that is covered by STARTUP_TIMEOUT_S, not by the unit timeout.
    monkeypatch.setenv("AUTOTUNE_CACHE_FAULT", "1:hang")
    start = time.monotonic()
    m = build(toy_spec(tmp_path, unit_timeout_s=3), progress=False)
    u0, u1 = m.units.values()
    assert (u0.status, u0.attempts, u1.status, u1.attempts) == ("done", 1, "done", 2)
    assert u1.failures == ["attempt 1: timed out after 3 s"]
    assert time.monotonic() - start < 60
    assert not tagged_pids(tag)   # the hung child is gone, not orphaned
    assert_entries_intact(tmp_path, m)
    no_temp_files(tmp_path)


def test_timeout_on_every_attempt_exits_1_keeping_the_finished_unit(tmp_path, tag, build_logs_kept_in_a_test_dir):
    cache = tmp_path / "c"
    proc = run_cli(*toy_args(cache, "--timeout", "3", "--retries", "1"),
                   env={"AUTOTUNE_CACHE_FAULT": "1:hang:always"})
    assert proc.returncode == 1, proc.stderr
    assert "build incomplete" in proc.stderr and "timed out after 3 s" in proc.stderr
    # a hung child says nothing: no empty log is kept for the user, nor named
    assert not list(build_logs_kept_in_a_test_dir.glob("autotune-cache-build-*.log"))
    assert "children's output" not in proc.stderr
    assert "Traceback" not in proc.stderr
    m = manifest_mod.load(cache)
    u0, u1 = m.units.values()
    assert (u0.status, u0.attempts) == ("done", 1)
    assert (u1.status, u1.attempts, u1.error) == ("failed", 2, "timed out after 3 s")
    assert_entries_intact(cache, m)
    no_temp_files(cache)


# -- Ctrl-C, SIGTERM, a parent killed outright: no child left behind ----------------------------------------------
def _start_hanging_build(cache, tag, *extra):
    """The CLI building 2 units whose second hangs; returns (process, the build child's pid) once it hangs."""
    env = {**os.environ, TAG: tag, "AUTOTUNE_CACHE_FAULT": "1:hang"}
    cli = subprocess.Popen([sys.executable, "-m", "autotune_cache", *map(str, toy_args(cache, *extra))],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    def unit0_done():
        try:
            m = manifest_mod.load(cache)
        except AutotuneCacheError:
            return False
        return m is not None and next(iter(m.units.values())).status == "done"

    try:
        wait_until(unit0_done, 120, "unit 0 to finish")
        children = wait_until(lambda: build_children(tag, cli.pid), 10, "the build child")
    except BaseException:
        cli.kill()
        raise
    time.sleep(0.5)   # into unit 1's hang
    (child,) = children
    assert os.getpgid(child) == child   # its own process group (setsid): a terminal's Ctrl-C does not reach it
    return cli, child


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["sigint", "sigterm"])
def test_sigint_or_sigterm_stops_the_child_and_keeps_finished_units(tmp_path, tag, sig, code):
    cache = tmp_path / "c"
    cli, child = _start_hanging_build(cache, tag, "--timeout", "600")
    cli.send_signal(sig)
    _, stderr = cli.communicate(timeout=60)
    assert cli.returncode == code, stderr
    assert "interrupted; finished units are kept" in stderr and "Traceback" not in stderr
    with pytest.raises(ProcessLookupError):   # the child's whole process group is gone
        os.killpg(child, 0)
    assert not tagged_pids(tag)
    m = manifest_mod.load(cache)   # valid, and says what happened
    u0, u1 = m.units.values()
    assert (u0.status, u0.attempts) == ("done", 1)
    assert (u1.status, u1.attempts, u1.error) == ("pending", 1, "interrupted")
    assert_entries_intact(cache, m)
    no_temp_files(cache)
    if sig == signal.SIGTERM:
        return
    # rerun with no retries left over from the interrupted attempt: the pending unit runs, the done one does not
    proc = run_cli(*toy_args(cache, "--retries", "0"), check=0)
    assert "Traceback" not in proc.stderr
    again = manifest_mod.load(cache)
    v0, v1 = again.units.values()
    assert v0 == u0 and (v1.status, v1.attempts, v1.hits) == ("done", 1, 3)


def test_sigkill_of_the_parent_takes_the_child_along_no_orphan(tmp_path, tag):
    # SIGKILL cannot be handled: the child (in its own session) dies through PR_SET_PDEATHSIG instead of tuning on.
    cache = tmp_path / "c"
    cli, child = _start_hanging_build(cache, tag, "--timeout", "600")
    cli.kill()
    cli.communicate(timeout=30)
    wait_until(lambda: not tagged_pids(tag), 10, "the orphaned child to die")
    m = manifest_mod.load(cache)   # whatever was saved last: valid, unit 0 kept
    assert next(iter(m.units.values())).status == "done"
    # the next build takes the lock (released by the dead parent) and finishes unit 1
    run_cli(*toy_args(cache), check=0)
    assert {u.status for u in manifest_mod.load(cache).units.values()} == {"done"}


# -- concurrent builders on one cache dir --------------------------------------------------------------------------
# Four specs, each started twice: shared units (9b TP 1 within 9b TP 1,2), a unit of another model with the same
# keys (27b), and a unit with keys of its own (max tokens 5000: NB 4 and 5).
CONCURRENT = [("qwen3.5-9b", "1,2", 3000), ("qwen3.5-9b", "1", 3000), ("qwen3.5-27b", "1", 3000),
              ("qwen3-next-80b-a3b", "2", 5000)] * 2


def test_concurrent_builders_tune_each_key_once_and_leave_a_complete_manifest(tmp_path, tag):
    cache = tmp_path / "c"
    procs = [subprocess.Popen([sys.executable, "-m", "autotune_cache", "build", "--target", "toy_target", "--model",
                               model, "--tp", tp, "--max-tokens", str(mt), "--cache-dir", str(cache), "--emulate",
                               "--no-progress", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for model, tp, mt in CONCURRENT]
    results = [(*p.communicate(timeout=300), p) for p in procs]
    for out, err, p in results:
        assert p.returncode == 0 and "Traceback" not in err, err
        assert json.loads(out)["cache_dir"] == str(cache)
    assert any("waiting for another build" in err for _, err, _ in results)   # they did contend for the lock
    m = manifest_mod.load(cache)
    assert len(m.units) == 4 and {u.status for u in m.units.values()} == {"done"}
    assert all(u.attempts == 1 for u in m.units.values())   # no unit ran twice: later builders found them done
    # no key tuned twice: every entry is a miss in exactly one unit, a hit everywhere else
    assert sorted(e.key[1] for e in m.entries.values()) == [1, 2, 3, 4, 5]
    assert sum(len(u.entries) - u.hits for u in m.units.values()) == len(m.entries)
    assert all(e.tokens is not None for e in m.entries.values())
    # no corrupt file, and the manifest lists exactly what is on disk
    assert_entries_intact(cache, m)
    on_disk = {p.relative_to(cache).as_posix() for p in cache.rglob("*") if p.is_file()}
    assert set(m.files) == on_disk - set(manifest_mod.OWN_FILES)


# -- a full or unwritable disk -------------------------------------------------------------------------------------
@pytest.fixture
def tmpfs(tmp_path):
    """mount(size) -> a fresh tmpfs of that many bytes; skipped where mounting is not allowed (no root)."""
    mounts = []

    def mount(size, *opts):
        where = tmp_path / f"mnt{len(mounts)}"
        where.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join([f"size={size}", *opts]), "tmpfs",
                               str(where)], capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
        mounts.append(where)
        return where

    yield mount
    for where in mounts:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_full_disk_is_refused_before_tuning_and_nothing_written(tmpfs):
    disk = tmpfs(1 << 20)
    proc = run_cli(*toy_args(disk / "cache"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "MB free; a build needs at least" in proc.stderr.strip().splitlines()[-1]   # after the plan
    assert list(disk.iterdir()) == []


def test_disk_full_in_the_middle_fails_cleanly_and_a_rerun_completes(tmpfs, monkeypatch, tag):
    monkeypatch.setattr(orchestrator, "MIN_FREE_BYTES", 0)   # let it start on a disk that cannot hold the build
    disk = tmpfs(8 << 20)
    ballast = disk / "ballast"
    with open(ballast, "wb") as f:   # leave ~150 KB: the toy build writes ~450 KB
        f.write(b"\0" * ((8 << 20) - (150 << 10)))
    cache = disk / "cache"
    with pytest.raises((BuildFailedError, CacheDirError), match="No space left on device"):
        build(toy_spec(cache), progress=False)
    assert manifest_mod.load(cache) is None or manifest_mod.load(cache).units   # absent or whole, never half
    no_temp_files(cache)
    ballast.unlink()
    m = build(toy_spec(cache), progress=False)
    assert {u.status for u in m.units.values()} == {"done"}
    assert_entries_intact(cache, m)


def test_unwritable_cache_dir_is_a_clear_error_and_nothing_written(tmpfs, tmp_path):
    if os.geteuid() == 0:
        disk = tmpfs(1 << 20, "ro")   # root writes through file modes: a read-only mount is what stops it
    else:
        disk = tmp_path / "ro"
        disk.mkdir(mode=0o500)
    for target in (disk, disk / "new" / "cache"):
        proc = run_cli(*toy_args(target))
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert "is not writable" in proc.stderr.strip().splitlines()[-1]   # after the plan
    assert list(disk.iterdir()) == []


def test_manifest_write_that_fails_midway_leaves_the_previous_manifest(tmp_path):
    # A write that fails partway (RLIMIT_FSIZE: EFBIG, like ENOSPC, after some bytes are on disk), no root needed.
    small = manifest_mod.Manifest(tool_version="0")
    manifest_mod.save(small, tmp_path)
    before = (tmp_path / "manifest.json").read_bytes()
    script = f"""
import resource, signal
from autotune_cache.cache import manifest as m
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
big = m.Manifest(tool_version="1", files={{f"f{{i}}": m.FileRecord(size=i, sha256="0" * 64) for i in range(200)}})
try:
    m.save(big, {str(tmp_path)!r})
except OSError as e:
    print("OSError", e.errno)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "OSError 27", proc.stderr   # EFBIG
    assert (tmp_path / "manifest.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]


# -- corrupt, truncated and foreign files ----------------------------------------------------------------------------
CORRUPTIONS = {
    "truncated": lambda b: b[: len(b) // 2],
    "garbage": lambda b: os.urandom(len(b)),
    "wrong-schema": lambda b: b'{"key": [], "timings": 1}',
}


def test_corrupt_autotune_files_unknown_to_the_manifest_are_misses_and_retuned(tmp_path):
    # No manifest (a cache from elsewhere, or one whose manifest was lost): the child itself meets the corrupt
    # files. Triton would fail the kernel call on them; triton_cache makes them read as absent, so they are
    # re-tuned and rewritten. One corruption per entry (the toy unit has 3).
    m = build(toy_spec(tmp_path, tp=(1,)), progress=False)
    names = sorted(m.entries)
    for name, corrupt in zip(names, CORRUPTIONS.values(), strict=True):
        (tmp_path / name).write_bytes(corrupt((tmp_path / name).read_bytes()))
    (tmp_path / "manifest.json").unlink()
    foreign = {"notes.txt": b"hello", "some/dir/blob.bin": os.urandom(100),
               "AAAAFOREIGNHASHDIR/other_kernel.autotune.json": b"not json"}
    for rel, data in foreign.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    again = build(toy_spec(tmp_path, tp=(1,)), progress=False)
    (unit,) = again.units.values()
    assert unit.status == "done" and unit.hits == 0 and sorted(unit.entries) == names   # all 3 missed
    for name in names:
        assert again.entries[name].tokens is not None   # tuned by this build, not read
        assert read_autotune(tmp_path / name).key == tuple(again.entries[name].key)
    assert_entries_intact(tmp_path, again)
    for rel, data in foreign.items():   # not ours: left alone
        assert (tmp_path / rel).read_bytes() == data


def test_corrupt_files_known_to_the_manifest_are_removed_and_rebuilt(tmp_path):
    m = build(toy_spec(tmp_path, tp=(1,)), progress=False)
    entry_name = sorted(m.entries)[0]
    damaged = [entry_name] + [rel for rel in m.files if rel.endswith((".json", ".cubin"))
                              and not rel.endswith(".autotune.json")]
    for rel in damaged:   # every compiled kernel's metadata, group file and binary, and one autotune file
        (tmp_path / rel).write_bytes(b"\0garbage")
    again = build(toy_spec(tmp_path, tp=(1,)), progress=False)
    (unit,) = again.units.values()
    assert unit.status == "done" and unit.hits == 2
    assert_entries_intact(tmp_path, again)
    assert not any((tmp_path / rel).read_bytes() == b"\0garbage" for rel in damaged if (tmp_path / rel).exists())
    # a fresh serving process loads the rebuilt winners: no crash on a damaged kernel, nothing benchmarked
    report = stand_in(tmp_path, "--target", "toy_target", "--tokens", "1024,2048,3000", "--emulate")
    assert report["hits"] == report["lookups"] == 3 and report["benchmarks"] == 0


# -- bad input: exit 2 or a typed exception, one message, nothing written --------------------------------------------
@pytest.mark.parametrize("args,msg", [
    (["--timeout", "0"], "unit timeout must be a positive"),
    (["--timeout", "-5"], "unit timeout must be a positive"),
    (["--timeout", "nan"], "unit timeout must be a positive"),
    (["--retries", "-1"], "retries must be >= 0"),
    (["--max-tokens", "0"], "positive"),
    (["--tokens", "64,-1"], "positive"),
    (["--tp", "-2"], "positive integer"),
    (["--tp", "5"], "does not divide"),
    (["--target", "nope"], "unknown target"),
    (["--model", "nope"], "unknown model"),
    (["--probe-tokens", "0"], "probe token counts must be positive"),
    (["--probe-tokens", "512,x"], "--probe-tokens must be comma-separated integers"),
    (["--noise", "1.5"], "--noise"),
])
def test_bad_build_input_exits_2_with_one_line_and_writes_nothing(tmp_path, args, msg):
    cache = tmp_path / "c"
    proc = run_cli("build", "--cache-dir", cache, "--emulate", *args)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert msg in line, line
    assert not cache.exists()


def test_build_into_a_file_exits_2_and_leaves_it(tmp_path):
    (tmp_path / "f").write_text("x")
    proc = run_cli(*toy_args(tmp_path / "f"))
    assert proc.returncode == 2 and "not a directory" in proc.stderr
    assert (tmp_path / "f").read_text() == "x"


def _api(cache, **kw):
    return lambda: build(toy_spec(cache, **kw), progress=False)


@pytest.mark.parametrize("make,exc,msg", [
    (lambda c: _api(c, targets=("nope",)), SpecError, "unknown target 'nope'"),
    (lambda c: _api(c, tp=(3,)), SpecError, "does not divide"),
    (lambda c: _api(c, tp=(0,)), SpecError, "positive integer"),
    (lambda c: _api(c, tokens=(-1,)), SpecError, "positive"),
    (lambda c: _api(c, unit_timeout_s=float("nan")), SpecError, "unit timeout"),
    (lambda c: _api(c, retries=-1), SpecError, "retries"),
    (lambda c: _api(c, model="gpt-5"), UnknownModelError, "unknown model 'gpt-5'"),
    (lambda c: lambda: shapes.from_config(c.parent / "config.json"), ConfigError, "not a readable JSON"),
], ids=["target", "tp-3", "tp-0", "tokens", "timeout-nan", "retries", "model", "config"])
def test_python_api_bad_input_raises_a_typed_error_and_writes_nothing(tmp_path, make, exc, msg):
    (tmp_path / "config.json").write_text("{")
    cache = tmp_path / "c"
    with pytest.raises(exc, match=msg):
        make(cache)()
    assert not cache.exists()


def test_python_api_cache_dir_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(CacheDirError, match="not a directory"):
        build(toy_spec(tmp_path / "f"), progress=False)
    assert (tmp_path / "f").read_text() == "x"


# -- how a child's end is charged, without spawning one --------------------------------------------------------------
class _Exited:
    """A child process that has exited with `exitcode` (nothing left to kill, no temp dirs of its own)."""
    pid = None

    def __init__(self, exitcode):
        self.exitcode = exitcode

    def is_alive(self):
        return False


class _Charges:
    """What a Supervisor charges to its ledger."""

    def __init__(self):
        self.charged = []

    def fail(self, unit_id, error, *, count):
        self.charged.append(("fail", unit_id, error, count))

    def fail_next(self, todo, error):
        self.charged.append(("fail_next", error))


@pytest.mark.parametrize("began,where", [(0, "before its first unit"), (1, "between units"), (2, "in a unit")],
                         ids=["starting", "between-units", "in-a-unit"])
def test_a_child_whose_pipe_closes_is_charged_where_it_was(tmp_path, began, where):
    # Its pipe at end of file, its process exited: the next step charges how it ended, by where it was then.
    import multiprocess

    from autotune_cache.builder.channel import Channel
    from autotune_cache.builder.plan import plan
    from autotune_cache.builder.supervisor import Child, Supervisor
    units = plan(toy_spec(tmp_path)).units
    mine, theirs = multiprocess.get_context("spawn").Pipe()
    theirs.close()
    c = Child(proc=_Exited(3), link=Channel(mine), theirs=theirs, gpu=None, todo=list(units),
              deadline=time.monotonic() + 60)
    if began:
        c.begin(units[0].id, 60)
    if began == 1:
        c.between_units(60)
    ledger = _Charges()
    assert Supervisor(tmp_path, ledger, 60, on_message=None)._step([c]) == [c]
    if where == "in a unit":   # its attempt was counted when it began
        assert ledger.charged == [("fail", units[0].id, "child exited with status 3", False)]
    else:   # the next unit is charged an attempt: a child that never gets that far would otherwise loop forever
        assert ledger.charged == [("fail_next", f"child exited with status 3 {where}")]


# -- the fork server the build children come from (builder/supervisor.py) ------------------------------------------
def test_builds_on_two_threads_share_the_fork_server_and_leave_no_process(tmp_path, tag):
    # Two builds of one process at once share its fork server: each finishes on its first attempt (no child lost
    # to the other's end), and once both are done the tag fixture finds no process of theirs, the server included.
    import threading

    from autotune_cache.builder import supervisor
    done = {}

    def one(name, **kw):
        try:
            done[name] = {(u.status, u.attempts) for u in helpers.toy_build(tmp_path / name, **kw).units.values()}
        except Exception as e:  # noqa: BLE001 - the assertion below names it
            done[name] = e
    threads = [threading.Thread(target=one, args=("a",)),
               threading.Thread(target=one, args=("b",), kwargs={"max_tokens": 1024})]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert done == {"a": {("done", 1)}, "b": {("done", 1)}}   # no child killed under the other build
    assert supervisor._running == 0
