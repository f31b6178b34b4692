"""autotune_cache/settings.py: every AUTOTUNE_CACHE_* variable in one typed object, read once per environment.

What the package must keep: no read of an AUTOTUNE_CACHE_* variable outside settings.py, no write into its own
os.environ outside the few places listed below (each with its reason), and docs/settings.md as settings.py
generates it, listing every AUTOTUNE_CACHE_* name this repository mentions.
"""
import ast
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

from autotune_cache import settings
from autotune_cache.errors import SettingsError, SpecError

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "autotune_cache"
NAME = re.compile(r"AUTOTUNE_CACHE_[A-Z0-9_]*[A-Z0-9]")
# Names this file spells on purpose and nothing reads: the typos the warning must catch.
TYPOS = {"AUTOTUNE_CACHE_STRCT", "AUTOTUNE_CACHE_NO_SUCH_THING_AT_ALL"}
# Every function of the package that writes into its own process's os.environ, and why it may.
ALLOWED_WRITES = {
    "serve/dirs.py:point_triton_at": "the loader points the server's Triton (and the compile subprocesses it starts) "
                                     "at the cache: TRITON_CACHE_DIR, TRITON_CACHE_MANAGER, AUTOTUNE_CACHE_BASE",
    "serve/stand_in.py:main": "the stand-in server points its own Triton at the cache, as a server would",
    "builder/child.py:_take_parents_environment": "the build child takes the build process's environment "
                                                  "(it is forked from a fork server started earlier)",
    "builder/child.py:main": "the build child configures itself: its GPU, its Triton cache dir, autotune caching",
    "builder/triton_env.py:apply": "the build child applies --triton-env to itself (child.main calls it)",
    "builder/precompile.py:_zygote": "a compile worker configures itself: the cache dir, no real GPU",
    "builder/emulation.py:fake_gpu": "emulation (build child, compile worker, stand-in): no real GPU visible",
}
_MUTATORS = {"pop", "update", "clear", "setdefault", "popitem", "__setitem__", "__delitem__"}


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path.relative_to(PACKAGE).as_posix(), ast.parse(path.read_text(), str(path))


def _is_environ(node) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "environ" and isinstance(node.value, ast.Name)
            and node.value.id == "os")


def _functions(tree):
    """(qualified name, function node) of every function, innermost last."""
    def walk(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    yield name, child
                yield from walk(child, name + ".")
            else:
                yield from walk(child, prefix)
    yield from walk(tree, "")


def _writes(fn) -> bool:
    """Whether `fn` itself (not a nested function) writes into os.environ, directly or through a name bound to it
    (a parameter defaulting to os.environ, `env = os.environ`)."""
    aliases = set()
    args = fn.args
    for arg, default in zip((args.args + args.kwonlyargs)[::-1], (args.defaults + args.kw_defaults)[::-1],
                            strict=False):
        if default is not None and _is_environ(default):
            aliases.add(arg.arg)

    def environ(node):
        return _is_environ(node) or (isinstance(node, ast.Name) and node.id in aliases)

    def nodes(node):
        for child in ast.iter_child_nodes(node):
            if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
                yield child
                yield from nodes(child)
    for node in nodes(fn):
        if isinstance(node, ast.Assign) and _is_environ(node.value):
            aliases.update(t.id for t in node.targets if isinstance(t, ast.Name))
    for node in nodes(fn):
        if isinstance(node, ast.Subscript) and isinstance(node.ctx, (ast.Store, ast.Del)) and environ(node.value):
            return True
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in _MUTATORS and environ(node.func.value):
                return True
            if node.func.attr in ("putenv", "unsetenv") and isinstance(node.func.value, ast.Name) \
                    and node.func.value.id == "os":
                return True
    return False


def environ_writes() -> set[str]:
    return {f"{rel}:{name}" for rel, tree in _modules() for name, fn in _functions(tree) if _writes(fn)}


def test_the_package_writes_its_own_os_environ_only_where_listed():
    found = environ_writes()
    unlisted = found - set(ALLOWED_WRITES)
    assert not unlisted, ("these write into the process's own os.environ: configure a child through its env "
                          f"instead, or list the function here with its reason: {sorted(unlisted)}")
    stale = set(ALLOWED_WRITES) - found
    assert not stale, f"listed but no longer writing os.environ: take them off the list: {sorted(stale)}"


def test_the_write_check_sees_a_write():
    """The check above can fail: each form of write it knows is found in a made-up module."""
    code = """
import os
def a(): os.environ["X"] = "1"
def b(): os.environ.pop("X", None)
def c(environ=os.environ): environ["X"] = "1"
def d():
    env = os.environ
    env.update(X="1")
def e(): del os.environ["X"]
def f(): os.putenv("X", "1")
def g(): return dict(os.environ, X="1")
"""
    written = {name for name, fn in _functions(ast.parse(code)) if _writes(fn)}
    assert written == {"a", "b", "c", "d", "e", "f"}


def _constants() -> dict[str, str]:
    """Every module-level NAME = "AUTOTUNE_CACHE_..." of the package, by name."""
    found = {}
    for _, tree in _modules():
        for node in tree.body:
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) \
                    and isinstance(node.value.value, str) and node.value.value.startswith(settings.PREFIX):
                found.update({t.id: node.value.value for t in node.targets if isinstance(t, ast.Name)})
    return found


def env_reads(tree, constants) -> list[tuple[int, str]]:
    """(line, name) of each read of an AUTOTUNE_CACHE_* variable: a .get()/getenv() call, a subscript or an `in`
    whose key is such a name (spelled, or a constant holding it), on any mapping."""
    def key(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith(settings.PREFIX):
            return node.value
        name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None
        return constants.get(name) if name else None

    found = []
    for node in ast.walk(tree):
        keys = []
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args \
                and node.func.attr in ("get", "getenv"):
            keys = [node.args[0]]
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
            keys = [node.slice]
        elif isinstance(node, ast.Compare) and any(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops):
            keys = [node.left]
        found += [(node.lineno, k) for k in map(key, keys) if k]
    return found


def test_every_read_of_an_autotune_cache_variable_goes_through_settings():
    constants = _constants()
    reads = [(rel, line, name) for rel, tree in _modules() if rel != "settings.py"
             for line, name in env_reads(tree, constants)]
    assert not reads, f"read through autotune_cache.settings.current() instead: {reads}"


def test_the_read_check_sees_a_read():
    code = """
import os
X = "AUTOTUNE_CACHE_X"
a = os.environ.get("AUTOTUNE_CACHE_A")
b = os.getenv("AUTOTUNE_CACHE_B")
c = os.environ[X]
d = "AUTOTUNE_CACHE_D" in os.environ
e = env.get(recorder.X)
os.environ["AUTOTUNE_CACHE_W"] = "1"
f = os.environ.get("TRITON_CACHE_DIR")
"""
    reads = [n for _, n in env_reads(ast.parse(code), {"X": "AUTOTUNE_CACHE_X"})]
    assert sorted(reads) == ["AUTOTUNE_CACHE_A", "AUTOTUNE_CACHE_B", "AUTOTUNE_CACHE_D", "AUTOTUNE_CACHE_X",
                             "AUTOTUNE_CACHE_X"]


# -- docs/settings.md -----------------------------------------------------------------------------------------------
def test_docs_settings_md_is_what_settings_generates():
    doc = REPO / "docs" / "settings.md"
    assert doc.read_text() == settings.markdown(), \
        "docs/settings.md is stale: python scripts/settings_doc.py"


def test_every_variable_the_repository_mentions_is_known_and_documented():
    """Every AUTOTUNE_CACHE_* name in the package, scripts, tests, docker files and docs is one settings.py knows:
    so docs/settings.md lists it, and the typo warning leaves it alone."""
    files = [p for d in ("autotune_cache", "scripts", "tests", "docker", "docs") for p in (REPO / d).rglob("*")
             if p.is_file() and p.suffix in ("", ".py", ".sh", ".md", ".toml", ".txt") and p != Path(__file__)]
    files += list(REPO.glob("*.md")) + [REPO / "pyproject.toml"]
    mentioned = {n: p for p in files for n in NAME.findall(p.read_text(errors="replace"))}
    unknown = {n: str(p.relative_to(REPO)) for n, p in mentioned.items() if n not in settings.known()}
    assert not unknown, unknown
    doc = (REPO / "docs" / "settings.md").read_text()
    assert all(f"`{n}`" in doc for n in settings.known())
    for name in ("AUTOTUNE_CACHE_LOG", "AUTOTUNE_CACHE_ENSURE", "AUTOTUNE_CACHE_GPU_DIR", "AUTOTUNE_CACHE_TIMELINE"):
        assert f"| `{name}` |" in doc
    assert re.search(r"\| `AUTOTUNE_CACHE_BASE` \|[^\n]*\| internal \|", doc)


def test_the_script_checks_and_writes_the_docs(tmp_path):
    out = tmp_path / "settings.md"
    script = [sys.executable, str(REPO / "scripts" / "settings_doc.py")]
    assert subprocess.run([*script, "--check", "--out", str(out)], capture_output=True).returncode == 1
    subprocess.run([*script, "--out", str(out)], check=True)
    assert out.read_text() == settings.markdown()
    subprocess.run([*script, "--check", "--out", str(out)], check=True)


# -- the object ------------------------------------------------------------------------------------------------------
def test_defaults_and_types(monkeypatch):
    for name in settings.known():
        monkeypatch.delenv(name, raising=False)
    s = settings.current()
    assert (s.dir, s.strict, s.private_copy, s.tp, s.target, s.max_tokens, s.compile_processes) == \
        (None, False, True, (1,), ("fla",), 16384, None)
    monkeypatch.setenv("AUTOTUNE_CACHE_DIR", "/opt/c")
    monkeypatch.setenv("AUTOTUNE_CACHE_STRICT", "Yes")
    monkeypatch.setenv("AUTOTUNE_CACHE_COPY", "0")
    monkeypatch.setenv("AUTOTUNE_CACHE_TP", "2, 8")
    monkeypatch.setenv("AUTOTUNE_CACHE_COMPILE_PROCESSES", "3")
    monkeypatch.setenv("AUTOTUNE_CACHE_PUBLIC_KEY", "")   # empty: unset
    s = settings.current()
    assert (s.dir, s.strict, s.private_copy, s.tp, s.compile_processes, s.public_key) == \
        (Path("/opt/c"), True, False, (2, 8), 3, None)


def test_parsed_once_per_distinct_environment(monkeypatch):
    monkeypatch.setenv("AUTOTUNE_CACHE_TP", "4")
    first = settings.current()
    assert settings.current() is first
    monkeypatch.setenv("AUTOTUNE_CACHE_TP", "2")
    assert settings.current() is not first and settings.current().tp == (2,)
    monkeypatch.setenv("AUTOTUNE_CACHE_TP", "4")
    assert settings.current() is first


def test_a_bad_value_fails_only_where_it_is_read_with_its_typed_error(monkeypatch):
    monkeypatch.setenv("AUTOTUNE_CACHE_TP", "x")
    monkeypatch.setenv("AUTOTUNE_CACHE_COMPILE_WORKERS", "0")
    monkeypatch.setenv("AUTOTUNE_CACHE_DIR", "/opt/c")
    s = settings.current()
    assert s.dir == Path("/opt/c")   # the rest reads on
    with pytest.raises(SpecError, match=r"^AUTOTUNE_CACHE_TP='x': ") as e:
        _ = s.tp
    assert "\n" not in str(e.value)
    with pytest.raises(SettingsError, match=r"^AUTOTUNE_CACHE_COMPILE_WORKERS='0': must be a positive integer$"):
        _ = s.compile_workers
    assert set(s.invalid) == {"AUTOTUNE_CACHE_TP", "AUTOTUNE_CACHE_COMPILE_WORKERS"}
    from autotune_cache.registry.pull import spec_from_env
    with pytest.raises(SpecError, match="AUTOTUNE_CACHE_TP"):
        spec_from_env()


def test_an_unknown_name_is_warned_once_naming_the_closest(monkeypatch, caplog):
    caplog.set_level(logging.WARNING, logger="autotune_cache")
    monkeypatch.setenv("AUTOTUNE_CACHE_STRCT", "1")
    monkeypatch.setenv("AUTOTUNE_CACHE_NO_SUCH_THING_AT_ALL", "1")
    settings.current()
    monkeypatch.setenv("AUTOTUNE_CACHE_TP", "3")   # another environment: parsed again, not warned again
    settings.current()
    warned = [r.getMessage() for r in caplog.records if "unknown environment variable" in r.getMessage()]
    strct = [w for w in warned if "AUTOTUNE_CACHE_STRCT" in w]
    assert len(strct) <= 1   # once per process: an earlier test of this process may have had it warned already
    if strct:
        assert "did you mean AUTOTUNE_CACHE_STRICT?" in strct[0]


def test_an_unknown_name_is_warned_in_a_fresh_process():
    """In a process of its own (nothing warned yet): one line on stderr, the closest known name, and once."""
    code = ("from autotune_cache import settings; import os; settings.current(); "
            "os.environ['AUTOTUNE_CACHE_TP'] = '2'; settings.current()")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "AUTOTUNE_CACHE_STRCT": "1",
           "AUTOTUNE_CACHE_NO_SUCH_THING_AT_ALL": "1", "AUTOTUNE_CACHE_STRICT": "1"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    lines = proc.stderr.splitlines()
    assert lines == [
        "autotune-cache: unknown environment variable AUTOTUNE_CACHE_NO_SUCH_THING_AT_ALL ignored; every variable: "
        "docs/settings.md",
        "autotune-cache: unknown environment variable AUTOTUNE_CACHE_STRCT ignored (did you mean "
        "AUTOTUNE_CACHE_STRICT?); every variable: docs/settings.md"], proc.stderr


def test_test_only_names_are_not_typos():
    assert {"AUTOTUNE_CACHE_FAULT", "AUTOTUNE_CACHE_TEST_TAG", "AUTOTUNE_CACHE_ENSURE"} <= set(settings.known())
    assert not TYPOS & set(settings.known())
