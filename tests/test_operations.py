"""The operations (autotune_cache/operations/) and their one cleanup rule (cache/files.Created): a failed build, build
from records, ensure or import takes away exactly the dirs and files it created, and never a path that was there
before it, however the dir was named: `~/...` (HOME a temp dir here), relative (the working dir a temp dir),
through a symlink, or a dir already holding a file of the user's. The failures: a build without a GPU
(CUDA_VISIBLE_DEVICES empty: a real child says so for `~/c`, the supervisor for the other places, see no_gpu), a file
that is no bundle, a dir where the manifest goes."""
import os
import sys

import pytest
from helpers import listing, small_cache, toy_spec

import autotune_cache
from autotune_cache import BuildSpec, NoGPUError, shapes
from autotune_cache.cache import location
from autotune_cache.cache.bundle import export, import_bundle
from autotune_cache.cache.files import Created
from autotune_cache.errors import BundleError, CacheDirError
from autotune_cache.operations import build_from_records, build_into, ensure

USER_FILE = "notes.txt"
PLACES = ["tilde-new", "tilde-existing", "relative", "symlink", "existing"]


@pytest.fixture
def user_file():
    """What the user keeps in a dir that was there before (import: a dir where the manifest goes, the only thing
    it lets be there)."""
    return USER_FILE


@pytest.fixture(params=PLACES)
def place(request, tmp_path, monkeypatch, user_file):
    """(the dir as the caller names it, a check that everything under tmp_path is as it was)."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    kind = request.param
    if kind == "tilde-new":
        given = "~/new/c"
    elif kind == "tilde-existing":   # the data-loss case: `~/c` was tested unexpanded, then rmtree'd expanded
        mine(home / "c", user_file)
        given = "~/c"
    elif kind == "relative":
        given = "rel/c"
    elif kind == "symlink":
        real = tmp_path / "real"
        mine(real, user_file)
        (work / "link").symlink_to(real)
        given = "link"
    else:
        mine(work / "c", user_file)
        given = str(work / "c")
    before = listing(tmp_path)

    def unchanged():
        assert listing(tmp_path) == before
    return given, unchanged


def mine(d, name):
    (d / name).parent.mkdir(parents=True)
    (d / name).write_text("mine\n")


@pytest.fixture
def no_gpu(monkeypatch, request):
    """No GPU for the build. Where the dir is `~/c` (the case that lost a user's data), a real child finds none and
    says so. Elsewhere the children's supervisor raises what that child's message raises (NoGPUError), at the same
    point of the build (the dir made, the lock taken, no manifest saved): the same failure for the cleanup rule,
    without a fork server started per case (1.5 s each)."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    place = request.node.callspec.params.get("place") if hasattr(request.node, "callspec") else None
    if place not in (None, "tilde-existing"):
        from autotune_cache.builder.supervisor import Supervisor

        def no_gpu_in_child(self, *args, **kwargs):
            raise NoGPUError("no CUDA GPU visible to the build child (test: no child started)")
        monkeypatch.setattr(Supervisor, "run", no_gpu_in_child)


def gpu_spec(**kw):
    """The toy build for a real GPU: without one, its child says so (NoGPUError)."""
    return toy_spec("unused", max_tokens=1024, **kw).model_copy(update={"emulate": False})


def test_a_failed_build_removes_what_it_created_and_nothing_else(place, no_gpu):
    given, unchanged = place
    with pytest.raises(NoGPUError):
        build_into(gpu_spec(), given, progress=False)
    unchanged()


@pytest.mark.parametrize("place", ["tilde-existing"], indirect=True)
def test_the_public_build_is_the_operation(place, no_gpu):
    given, unchanged = place
    with pytest.raises(NoGPUError):
        autotune_cache.build(gpu_spec().model_copy(update={"cache_dir": given}), progress=False)
    unchanged()


def test_a_failed_ensure_removes_what_it_created_and_nothing_else(place, no_gpu):
    given, unchanged = place
    with pytest.raises(NoGPUError, match="lacks 1 unit and there is no GPU"):
        autotune_cache.ensure(gpu_spec(), given, progress=False)
    unchanged()


def test_a_failed_rebuild_takes_its_fresh_dir_away_and_leaves_the_old_cache(toy_caches, tmp_path, no_gpu):
    import json
    cache = toy_caches.copy(tmp_path / "c", max_tokens=1024)
    raw = json.loads((cache / "manifest.json").read_text())
    raw["fingerprint"]["python"] = "2.7.18"   # another environment's cache: only a rebuild can serve
    (cache / "manifest.json").write_text(json.dumps(raw))
    before = listing(tmp_path)
    stale = ensure(gpu_spec(), cache, progress=False)
    assert not stale.ok and "--rebuild" in (stale.remedy or "") and listing(tmp_path) == before
    with pytest.raises(NoGPUError):
        ensure(gpu_spec(), cache, rebuild=True, progress=False)
    assert listing(tmp_path) == before   # no fresh dir beside it, the old cache as it was


@pytest.fixture(scope="module")
def record_file(tmp_path_factory):
    """One recorded lookup of a real kernel on the fake GPU (tests/record_run.py)."""
    import subprocess

    from helpers import TESTS
    d = tmp_path_factory.mktemp("recorded")
    proc = subprocess.run([sys.executable, "-m", "autotune_cache", "record", "--out", d / "run.jsonl", "--",
                           sys.executable, TESTS / "record_run.py", "--cache", d / "cache", "--autotuning",
                           "copy:1000"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return d / "run.jsonl"


def test_a_failed_build_from_records_removes_what_it_created_and_nothing_else(place, no_gpu, record_file):
    given, unchanged = place
    with pytest.raises(NoGPUError):
        build_from_records([record_file], BuildSpec(model=None, targets=()), given, progress=False)
    unchanged()


@pytest.mark.parametrize("user_file", ["manifest.json/notes.txt"])
def test_a_failed_import_removes_what_it_created_and_nothing_else(place, tmp_path):
    given, unchanged = place
    not_a_bundle = tmp_path.parent / f"{tmp_path.name}-not-a-bundle.tgz"   # outside the tree compared
    not_a_bundle.write_text("no tar\n")
    with pytest.raises(BundleError, match="not a readable bundle"):
        import_bundle(not_a_bundle, given)
    unchanged()


def test_a_half_import_is_taken_back_and_the_users_dir_stays(tmp_path):
    # a DIR holding a `manifest.json` directory passes the empty check (the manifest is ours), then the manifest
    # cannot be written after every file moved in: the moved files, their dirs and the lock go; that dir stays
    files = {"AB/k.autotune.json": b'{"k": 1}', "AB/k.cubin": b"\x7fELF" + bytes(60),
             "CD/__grp__k.json": b'{"child_paths": {}}'}
    small_cache(tmp_path / "src", files)
    export(tmp_path / "src", tmp_path / "b.tgz")
    dest = tmp_path / "dest"
    (dest / "manifest.json").mkdir(parents=True)
    (dest / "manifest.json" / USER_FILE).write_text("mine\n")
    before = listing(dest)
    with pytest.raises(CacheDirError, match="nothing was imported"):
        import_bundle(tmp_path / "b.tgz", dest)
    assert listing(dest) == before


def test_created_undoes_only_what_it_recorded(tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / USER_FILE).write_text("mine\n")
    created = Created()
    with pytest.raises(RuntimeError), created.undone_on_error():
        assert created.dirs(tmp_path / "old") == []   # there before: not recorded
        created.dirs(tmp_path / "a" / "b")
        assert created.file_if_new(tmp_path / "old" / "new.txt")
        (tmp_path / "old" / "new.txt").write_text("ours\n")
        assert not created.file_if_new(tmp_path / "old" / USER_FILE)
        raise RuntimeError
    assert listing(tmp_path) == {"old": -1, f"old/{USER_FILE}": 5}
    kept = Created()
    with pytest.raises(KeyboardInterrupt), kept.undone_on_error(keep=(KeyboardInterrupt,)):
        kept.dirs(tmp_path / "kept")
        raise KeyboardInterrupt
    assert (tmp_path / "kept").is_dir()


def test_the_cache_dir_is_made_once_expanded_and_absolute(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert location.normalize("~/c") == tmp_path.resolve() / "c"
    assert location.normalize("c") == tmp_path.resolve() / "c"
    assert location.normalize(location.normalize("~/c")) == location.normalize("~/c")


# -- ensure as public API ------------------------------------------------------------------------------------
def test_ensure_builds_what_is_missing_then_finds_it_there(tmp_path):
    spec = toy_spec(tmp_path / "c", max_tokens=1024)
    first = autotune_cache.ensure(spec, progress=False)
    assert first.ok and first.built and not first.rebuilt and first.emulated, first
    assert first.cache_dir == tmp_path.resolve() / "c" and first.units == 1
    again = autotune_cache.ensure(spec, progress=False)
    assert again.ok and not again.built and again.as_dict() == dict(first.as_dict(), built=False)


def test_ensure_is_public_api():
    assert "ensure" in autotune_cache.__all__
    assert autotune_cache.ensure.__doc__ and ensure.__doc__


# -- --compile-workers and a fleet job's compile processes travel in the spec, never through os.environ ---------
def test_compile_workers_go_through_the_spec_not_the_environment(monkeypatch):
    from autotune_cache.builder.protocol import ChildOptions
    from autotune_cache.cli import parser
    from autotune_cache.cli.args import spec_from_args
    from autotune_cache.errors import SpecError
    monkeypatch.delenv("AUTOTUNE_CACHE_COMPILE_WORKERS", raising=False)
    spec = spec_from_args(parser().parse_args(["build", "--cache-dir", "x", "--compile-workers", "3"]))
    assert spec.compile_workers == 3 and "AUTOTUNE_CACHE_COMPILE_WORKERS" not in os.environ
    assert "compile_workers" in ChildOptions.__dataclass_fields__
    with pytest.raises(SpecError, match="--compile-workers must be >= 1, got 0"):
        spec_from_args(parser().parse_args(["build", "--cache-dir", "x", "--compile-workers", "0"]))
    with pytest.raises(SpecError, match="compile_processes must be >= 1"):
        BuildSpec(model=shapes.preset("qwen3.5-9b"), compile_processes=0)


def test_a_fleet_jobs_compile_share_goes_through_the_spec(tmp_path, monkeypatch):
    from autotune_cache import operations
    from autotune_cache.errors import SpecError
    from autotune_cache.fleet.job import run_job
    from autotune_cache.fleet.matrix import Job
    seen = []

    def build_into(spec, cache_dir, **kw):
        seen.append((spec.compile_processes, os.environ.get("AUTOTUNE_CACHE_COMPILE_PROCESSES")))
        raise SpecError("stop here")
    monkeypatch.setattr(operations, "build_into", build_into)
    monkeypatch.delenv("AUTOTUNE_CACHE_COMPILE_PROCESSES", raising=False)
    job = Job(index=0, gpu_type="H100", spec=toy_spec("unused"), label="toy", rows=(), units=(), keys=0, configs=0)
    registry = (tmp_path / "registry").as_uri()
    assert run_job(job, registry, compile_processes=3).error == "stop here"
    monkeypatch.setenv("AUTOTUNE_CACHE_COMPILE_PROCESSES", "5")   # the node's own choice stays
    run_job(job, registry, compile_processes=3)
    assert seen == [(3, None), (None, "5")]
