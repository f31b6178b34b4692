import json
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

TESTS = Path(__file__).parent
# The deep run (`pytest --deep`, docs/testing.md): property tests at their full example counts, and the tests
# marked `deep`. Set by conftest before any test module is imported.
DEEP = False


def examples(deep: int) -> int:
    """Hypothesis examples for one property: `deep` in the deep run, an eighth of it (at least 60) by default."""
    return deep if DEEP else max(60, deep // 8)


# -- toy builds: the toy_target kernels on the fake sm_90 GPU, in a real build child ------------------------------
def toy_spec(cache_dir, **kw):
    """The tests' usual build: qwen3.5-9b through toy_target (3 keys of 3 configs up to 3000 tokens), emulated.
    `kw` overrides any BuildSpec field; `model` may be a preset's name."""
    from autotune_cache import BuildSpec, shapes
    kw = {"targets": ("toy_target",), "max_tokens": 3000, **kw}
    model = kw.pop("model", "qwen3.5-9b")
    return BuildSpec(model=shapes.preset(model) if isinstance(model, str) else model, cache_dir=str(cache_dir),
                     emulate=True, **kw)


def toy_build(cache_dir, fake_times=None, **kw):
    """build(toy_spec(cache_dir, **kw)) in a child; `fake_times` (config -> ms, emulation's table) is handed to
    the child through its env. Returns the Manifest."""
    from autotune_cache import build
    from autotune_cache.builder.emulation import FAKE_TIMES_ENV
    if fake_times is None:
        return build(toy_spec(cache_dir, **kw), progress=False)
    with mock.patch.dict(os.environ, {FAKE_TIMES_ENV: json.dumps(fake_times)}):   # the build child inherits it
        return build(toy_spec(cache_dir, **kw), progress=False)


def _device_keys_file() -> Path:
    """Another host's Triton identity and the disk keys it wrote for one FLA call, for the Triton version under test
    (the CI matrix runs 3.6, 3.8 and 3.9): written on a GPU host (scripts/gpu_host_keys.py) where one ran that
    version, else derived on the fake GPU (the file's "what" says which)."""
    from importlib.metadata import version
    triton = version("triton")   # the first on sys.path: the matrix's own Triton, put first on PYTHONPATH
    for kind in ("gpu-host", "fake-gpu"):
        path = TESTS / "data" / f"{kind}-triton-{triton}-keys.json"
        if path.exists():
            return path
    # none recorded for this Triton: the FLA builds that read it fail, naming this missing file
    return TESTS / "data" / f"gpu-host-triton-{triton}-keys.json"


FLA_DEVICE_KEYS = _device_keys_file()
# The suite's own Triton (pyproject's test extra pins it); the CI matrix's legs put another first on PYTHONPATH.
SUITES_TRITON = "3.6.0"


def in_a_matrix_leg() -> bool:
    from importlib.metadata import version
    return version("triton") != SUITES_TRITON


def fla_specs(cache_dir):
    """The real FLA builds the key tests check: qwen3.5-9b TP 1 to 1024 tokens (the keys of a 64-token call, NB = 1,
    tuned after a dry probe pass at 512 tokens) and qwen3-next-80b-a3b TP 8 at 64 tokens, into one cache.

    In a matrix leg (another Triton) the first alone: the key data files of 3.8 and 3.9 hold its disk keys, and the
    second model's build (about 35 s of CPU per leg) adds no Triton-version-specific check; the suite builds both."""
    from autotune_cache import BuildSpec, shapes
    specs = [BuildSpec(model=shapes.preset("qwen3.5-9b"), tp=(1,), max_tokens=1024, cache_dir=str(cache_dir),
                       emulate=True),
             BuildSpec(model=shapes.preset("qwen3-next-80b-a3b"), tp=(8,), max_tokens=64, cache_dir=str(cache_dir),
                       emulate=True)]
    return specs[:1] if in_a_matrix_leg() else specs


def fla_host_keys_build(cache_dir):
    """fla_specs built with the GPU host's triton_key and backend hash (FLA_DEVICE_KEYS): its disk keys are the
    ones that host wrote. Returns the Manifest."""
    from autotune_cache import build
    # the build children inherit it; as it was after, for a caller that set it for its own processes
    with mock.patch.dict(os.environ, {"AUTOTUNE_CACHE_DEVICE_KEYS": str(FLA_DEVICE_KEYS)}):
        manifest = None
        for spec in fla_specs(cache_dir):
            manifest = build(spec, progress=False)
        return manifest


def relocated_copy(cache, dest):
    """A copy of a built cache at `dest` whose group files point into it, as a build at `dest` leaves them (a plain
    `cp -r` would leave them pointing at `cache`)."""
    import shutil

    from autotune_cache.cache.swap import relocate
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(cache, dest, symlinks=True)
    relocate(dest, dest)
    return dest


def run_cli(*args, env=None, check=None):
    """autotune-cache in a subprocess: what a user sees (stdout, stderr, exit code)."""
    proc = subprocess.run([sys.executable, "-m", "autotune_cache", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=900)
    if check is not None:
        assert proc.returncode == check, proc.stderr + proc.stdout
    return proc


def stand_in(cache_dir, *args, env=None):
    """A fresh 'serving' process against cache_dir; returns its lookup report."""
    proc = subprocess.run([sys.executable, "-m", "autotune_cache.serve.stand_in", "--cache-dir", str(cache_dir),
                           "--json", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=900)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compiles(cache_dir, *args, env=None):
    """stand_in() that also counts Triton compiles and cache loads in the fresh process (count_compiles.py)."""
    proc = subprocess.run([sys.executable, str(TESTS / "count_compiles.py"), "--cache-dir", str(cache_dir),
                           *map(str, args)], capture_output=True, text=True, env={**os.environ, **(env or {})},
                          timeout=900)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def assert_each_spec_reached_its_plan(manifest, specs, configs: int) -> None:
    """Each spec's one unit reached exactly the (kernel, key) pairs its plan predicted, benchmarking `configs`."""
    from autotune_cache import plan
    for spec in specs:
        (unit,) = plan(spec).units
        reached, planned = reached_and_planned(manifest, unit)
        assert reached == planned
        assert configs_reached(manifest, unit) == configs


def reached_and_planned(manifest, unit):
    """(kernel, key) pairs a unit reached in a build, and those its plan predicted, both sorted."""
    entries = [manifest.entries[f] for f in manifest.units[unit.id].entries]
    return (sorted((e.kernel, tuple(e.key)) for e in entries),
            sorted((k.kernel, tuple(k.key)) for k in unit.keys))


def assert_only_entries_on_disk(cache, manifest):
    """The autotune files on disk are exactly the manifest's entries (a dry probe pass leaves none of its own)."""
    from pathlib import Path
    on_disk = sorted(p.relative_to(cache).as_posix() for p in Path(cache).rglob("*.autotune.json"))
    assert on_disk == sorted(manifest.entries)


def assert_probed(cache, manifest, unit, tokens=512):
    """The unit's keys were also timed in a dry probe pass at `tokens`, and that pass left no autotune file."""
    assert_only_entries_on_disk(cache, manifest)
    for f in manifest.units[unit.id].entries:
        sel = manifest.entries[f].selection
        assert sel["probe_tokens"] == [tokens] and all(c["probes"][0]["tokens"] == tokens for c in sel["candidates"])


def configs_reached(manifest, unit) -> int:
    return sum(manifest.entries[f].configs for f in manifest.units[unit.id].entries)


# -- hand-made caches and bundles (test_trust_paths, test_fuzz_manifest_bundle) -------------------------------------
def small_manifest(files: dict):
    """A valid Manifest listing `files` (relative path -> bytes) as a build records them: no Triton needed."""
    from autotune_cache.cache.files import sha256_bytes
    from autotune_cache.cache.manifest import FileRecord, Manifest
    return Manifest(tool_version="0", files={rel: FileRecord(size=len(data), sha256=sha256_bytes(data))
                                             for rel, data in files.items()})


def small_cache(root, files: dict):
    """`files` written under `root` with their manifest; returns the manifest."""
    from autotune_cache.cache import manifest as manifest_mod
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    m = small_manifest(files)
    manifest_mod.save(m, root)
    return m


def raw_digest(raw: dict) -> str:
    """Manifest.digest() of a manifest as JSON data, valid or not (what a crafted bundle.json names)."""
    from autotune_cache.cache.files import sha256_bytes
    return sha256_bytes(json.dumps(raw, sort_keys=True))


def tar_member(name, data=b"", kind=None, link="", size=None):
    """(TarInfo, bytes or None) for write_bundle(): a plain file unless `kind` (a tarfile type) says otherwise;
    `size` overrides the header's size."""
    import tarfile
    ti = tarfile.TarInfo(name)
    ti.type, ti.linkname = kind or tarfile.REGTYPE, link
    regular = ti.type == tarfile.REGTYPE
    ti.size = (len(data) if regular else 0) if size is None else size
    return ti, data if regular else None


def write_bundle(path, manifest, members=(), info=None):
    """A bundle made by hand: bundle.json (naming the digest of `manifest`, a Manifest or JSON data, unless `info`
    is given), manifest.json, then `members` ([(TarInfo, bytes or None)], as tar_member() makes them)."""
    import io
    import tarfile
    raw = manifest.model_dump(mode="json") if hasattr(manifest, "model_dump") else manifest
    data = json.dumps(raw).encode() if not isinstance(raw, bytes) else raw
    if info is None:
        info = {"format": "autotune-cache-bundle", "version": 1, "manifest_digest": raw_digest(raw)}
    with tarfile.open(path, "w:gz") as tar:
        for ti, body in [tar_member("bundle.json", json.dumps(info).encode()), tar_member("manifest.json", data),
                         *members]:
            tar.addfile(ti, io.BytesIO(body) if body is not None else None)
    return Path(path)


def listing(d, vanishing_ok: bool = False) -> dict:
    """Every path under `d` (links not followed) with its size: what a test compares before and after.
    `vanishing_ok`: skip a file removed between the walk and its lstat (a poller racing a running command)."""
    out = {}
    for dirpath, dirs, files in os.walk(d):   # never into a link to a dir
        for name in dirs + files:
            p = Path(dirpath, name)
            try:
                out[p.relative_to(d).as_posix()] = -1 if name in dirs and not p.is_symlink() else p.lstat().st_size
            except FileNotFoundError:
                if not vanishing_ok:
                    raise
    return out


def raw_manifest_with(files: dict) -> dict:
    """A manifest as JSON data listing `files` (path -> FileRecord data) as they are, unchecked: what an attacker
    writes (small_manifest() cannot hold a path the schema refuses)."""
    raw = small_manifest({}).model_dump(mode="json")
    raw["files"] = files
    return raw


def assert_refused_in_one_line(proc, text):
    """The CLI refused: exit 2, its error in one line naming `text`, last on stderr (after a build's plan), no
    traceback."""
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower() or "Traceback" in line]
    assert proc.returncode == 2 and len(errors) == 1 and text in errors[0], proc.stderr + proc.stdout
    assert proc.stderr.strip().splitlines()[-1] == errors[0]


def run_cli_bounded(*args, timeout=60, memory=2 << 30):
    """run_cli() that can neither hang nor exhaust the machine: killed after `timeout` seconds (TimeoutExpired fails
    the test), its address space capped at `memory` bytes (past it MemoryError: a traceback and exit 1)."""
    import resource

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    return subprocess.run([sys.executable, "-m", "autotune_cache", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, preexec_fn=cap)


class FirstMiss(Exception):
    """Raised by stop_at_first_miss()'s hook: the serving process met a miss."""


def stop_at_first_miss(out: dict) -> None:
    """In a serving stand-in, when STOP_AT_FIRST_MISS is set: the first autotune miss raises FirstMiss before Triton
    benchmarks (and so compiles) any config, and `out["first_miss"]` names its kernel and key. A negative control
    that proves a hit test can fail without paying for tuning the whole miss."""
    if not os.environ.get("STOP_AT_FIRST_MISS"):
        return
    from autotune_cache.autotuner import disk
    from autotune_cache.autotuner.kernels import innermost_jit

    def stop(tuner, key):
        out["first_miss"] = [innermost_jit(tuner.fn).__name__, list(key)]
        raise FirstMiss(out["first_miss"])
    disk.add_miss_hook(stop, phase="listen")


def cli_here(*args, env=None, cwd=None):
    """autotune-cache's main() in this process, seen as run_cli() sees a subprocess: a CompletedProcess with the exit
    code, stdout and stderr. For what is argument parsing and output; signals, pipes, TTYs, widths and children need
    a process of their own (run_cli). `env` replaces the environment for the call, `cwd` is its working dir."""
    import contextlib
    import io

    from autotune_cache.cli import console, main
    out, err = io.StringIO(), io.StringIO()
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    try:
        if env is not None:
            os.environ.clear()
            os.environ.update(env)
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(a) for a in args])
            except SystemExit as e:   # argparse: --help, --version, a usage error
                code = e.code if isinstance(e.code, int) else int(e.code is not None)
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        console.out.quiet = False
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())
