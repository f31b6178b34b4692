"""One room touches Triton's runtime: no module of autotune_cache outside autotune_cache/autotuner/, and no script of
scripts/, imports Triton's internals (triton.runtime, triton.compiler, triton.knobs, triton._C, triton.backends),
reads them through `triton.`, or assigns into anything of Triton's. A script hooks Triton through the room
(hooks.add, disk.reading, compiles.listen, hooks.take), like any room. Read from the sources with `ast`, not by
importing them."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "autotune_cache"
ROOM = PACKAGE / "autotuner"
SCRIPTS = ROOT / "scripts"
INTERNALS = ("triton.runtime", "triton.compiler", "triton.knobs", "triton._C", "triton.backends")

# (module, what): why it stays outside the room.
ALLOWED = {
    ("builder/emulation.py", "import triton.runtime.driver"):
        "the fake GPU is a Triton driver, selected with driver.set_active: Triton's backend extension point, not "
        "the autotuner's internals",
    ("builder/emulation.py", "import triton.backends.compiler"):
        "the fake driver's get_current_target() returns Triton's GPUTarget, as a driver must",
    ("serve/layered.py", "import triton.runtime.cache"):
        "TRITON_CACHE_MANAGER=module:Class is Triton's public extension point and takes a FileCacheManager "
        "subclass; layered.py builds it on cache/'s checks, which the room (below cache/) cannot import",
}


# (script, what): why it stays outside the room. None today: bench_modes, gpu_record and _kernel_timing patched Triton
# themselves until issue 24 (their counters, vLLM's first-config run, another cache dir's lookup) and now use the
# room. An entry needs a reason the room cannot serve, as ALLOWED's do.
SCRIPTS_ALLOWED: dict[tuple[str, str], str] = {}


def _internal(module: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in INTERNALS)


def _root(node):
    """The name an attribute or item chain starts from (`at` of `at.Autotuner.run`); None past a call: its result
    is an object of Triton's (a Config, an Autotuner), whose plain attributes are there to be set."""
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _dotted(node) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([node.id, *reversed(parts)])


def _targets(node):
    if isinstance(node, ast.Assign):
        found = list(node.targets)
    elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
        found = [node.target]
    elif isinstance(node, ast.Delete):
        found = list(node.targets)
    else:
        return []
    out = []
    while found:
        t = found.pop()
        if isinstance(t, (ast.Tuple, ast.List)):
            found.extend(t.elts)
        else:
            out.append(t)
    return out


def touches(source: str) -> list[str]:
    """What a module does to Triton that only the room may: "import triton.x.y", "reads triton.knobs...",
    "assigns at.Autotuner.run"."""
    tree = ast.parse(source)
    found, tritons = [], set()   # tritons: names bound to Triton or anything reached from it
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "triton" or alias.name.startswith("triton."):
                    tritons.add(alias.asname or alias.name.split(".")[0])
                    if _internal(alias.name):
                        found.append(f"import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and (
                node.module == "triton" or node.module.startswith("triton.")):
            for alias in node.names:
                tritons.add(alias.asname or alias.name)
                full = f"{node.module}.{alias.name}"
                if _internal(node.module):
                    found.append(f"import {node.module}")
                elif _internal(full):
                    found.append(f"import {full}")
    changed = True
    while changed:   # an alias of something of Triton's (knobs = triton.knobs.compilation) is Triton's too
        changed = False
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and _root(node.value) in tritons:
                for t in _targets(node):
                    if isinstance(t, ast.Name) and t.id not in tritons:
                        tritons.add(t.id)
                        changed = True
    for node in ast.walk(tree):
        for t in _targets(node):
            if not isinstance(t, ast.Name) and _root(t) in tritons:
                found.append(f"assigns {ast.unparse(t)}")
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("setattr", "delattr")
                and node.args and _root(node.args[0]) in tritons):
            found.append(f"{node.func.id} on {ast.unparse(node.args[0])}")
        if isinstance(node, ast.Attribute) and (name := _dotted(node)) and name.startswith("triton.") and _internal(
                ".".join(name.split(".")[:2])):
            found.append(f"reads {'.'.join(name.split('.')[:2])}")
    return sorted(set(found))


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        if ROOM not in path.parents:
            yield path.relative_to(PACKAGE).as_posix(), path.read_text()


def test_no_module_outside_the_room_touches_tritons_internals():
    found = {(rel, what) for rel, source in _modules() for what in touches(source)}
    assert sorted(found - set(ALLOWED)) == []
    assert sorted(set(ALLOWED) - found) == []   # an allowance no module needs any more goes


def test_no_script_touches_tritons_internals():
    found = {(path.name, what) for path in sorted(SCRIPTS.glob("*.py")) for what in touches(path.read_text())}
    assert sorted(found - set(SCRIPTS_ALLOWED)) == []
    assert sorted(set(SCRIPTS_ALLOWED) - found) == []   # an allowance no script needs any more goes


def test_the_check_sees_each_way_of_touching_triton():
    source = """
import triton
import triton.runtime.autotuner as at
from triton import knobs
from triton.compiler.compiler import make_backend
from triton.runtime import driver
import triton.language as tl

at.Autotuner.run = None
setattr(at.Autotuner, "prune_configs", None)
compilation = triton.knobs.compilation
compilation.listener = None
triton.Config.x, y = 1, 2
tl.foo += 1
"""
    assert touches(source) == sorted([
        "import triton.runtime.autotuner", "import triton.knobs", "import triton.compiler.compiler",
        "import triton.runtime", "assigns at.Autotuner.run", "setattr on at.Autotuner", "reads triton.knobs",
        "assigns compilation.listener", "assigns triton.Config.x", "assigns tl.foo"])
    assert touches("import triton\nimport triton.language as tl\nx = triton.cdiv(1, 2)\nconfig = triton.Config({})\n"
                   "config.num_warps = 4\n") == []
