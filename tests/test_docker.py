"""docker/: the Dockerfiles parse and call our CLI correctly; the entrypoint passes shellcheck and behaves on a CPU
stand-in (no Docker engine runs on the CI machine)."""
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import TESTS

from autotune_cache import BuildSpec, build, shapes
from autotune_cache.cli import parser

ROOT = TESTS.parent
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
DOCKERFILES = [ROOT / "docker" / "Dockerfile", ROOT / "docker" / "Dockerfile.vllm"]


def stages(path):
    import io

    from dockerfile_parse import DockerfileParser
    df = DockerfileParser(fileobj=io.BytesIO(path.read_bytes()))
    out, current = [], None
    for ins in df.structure:
        if ins["instruction"] == "FROM":
            current = {"from": ins["value"], "ins": []}
            out.append(current)
        elif current is not None:
            current["ins"].append((ins["instruction"], ins["value"]))
    return df, out


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_stages_share_base_and_cache_path(path):
    df, (tune, serve) = stages(path)
    assert tune["from"].split()[0] == serve["from"].split()[0] == "${BASE}"   # same Triton/ptxas/Python
    assert tune["from"].endswith("AS tune") and serve["from"].endswith("AS serve")
    assert any(i == "RUN" and v.startswith("--device=nvidia.com/gpu=all") for i, v in tune["ins"])
    tune_env = " ".join(v for i, v in tune["ins"] if i == "ENV")
    assert "AUTOTUNE_CACHE_DIR=/opt/gdn-cache" in tune_env
    copies = [v for i, v in serve["ins"] if i == "COPY" and "--from=tune /opt/gdn-cache" in v]
    assert copies == ["--from=tune /opt/gdn-cache /opt/gdn-cache"]   # same absolute path: binaries still load
    serve_env = " ".join(v for i, v in serve["ins"] if i == "ENV")
    assert "AUTOTUNE_CACHE_DIR=/opt/gdn-cache" in serve_env


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_cli_calls_parse(path):
    _, (tune, _) = stages(path)
    run = next(v for i, v in tune["ins"] if i == "RUN" and "autotune-cache build" in v)
    values = {"MODEL": "qwen3.5-9b", "TP": "1", "TARGET": "fla", "MAX_TOKENS": "8192",
              "AUTOTUNE_CACHE_DIR": "/opt/gdn-cache"}
    for name, value in values.items():
        run = run.replace(f"${{{name}}}", value)
    commands = [shlex.split(c) for c in run.split("&&")]
    commands = [argv[argv.index("autotune-cache") + 1:] for argv in commands]
    assert [argv[0] for argv in commands] == ["build", "prune", "verify"]
    for argv in commands:
        parser().parse_args(argv)   # argparse exits (SystemExit) on an option the CLI does not have


def test_entrypoint_passes_shellcheck():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (.ci/run installs it)")
    subprocess.run(["shellcheck", str(ENTRYPOINT)], check=True)


def entrypoint(env, *cmd, read_only=False):
    kwargs = {}
    if read_only and os.getuid() == 0:
        from test_loader import _drop_root_write_override
        kwargs["preexec_fn"] = _drop_root_write_override
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return subprocess.run(["sh", str(ENTRYPOINT), *cmd], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PATH": path, **env}, **kwargs)


def test_entrypoint_without_gpu_and_no_cache_fails_clearly(tmp_path):
    marker = tmp_path / "served"
    proc = entrypoint({"AUTOTUNE_CACHE_DIR": str(tmp_path / "cache"), "AUTOTUNE_CACHE_MODEL": "qwen3.5-9b",
                       "CUDA_VISIBLE_DEVICES": ""}, "touch", str(marker))
    assert proc.returncode == 2 and "no GPU to build them" in proc.stderr
    assert not marker.exists()


def test_entrypoint_requires_cache_dir():
    proc = entrypoint({"AUTOTUNE_CACHE_DIR": ""}, "true")
    assert proc.returncode != 0 and "AUTOTUNE_CACHE_DIR" in proc.stderr


@pytest.mark.skipif(sys.platform != "linux", reason="linux capabilities")
def test_entrypoint_with_prebuilt_read_only_cache_verifies_and_execs(tmp_path):
    cache = tmp_path / "cache"
    build(BuildSpec(model=shapes.preset("qwen3.5-9b"), targets=("toy_target",), max_tokens=2048,
                    cache_dir=str(cache), emulate=True), progress=False)
    for p in [cache, *cache.rglob("*")]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    marker = tmp_path / "served"
    env = {"AUTOTUNE_CACHE_DIR": str(cache), "AUTOTUNE_CACHE_MODEL": "qwen3.5-9b",
           "AUTOTUNE_CACHE_TARGET": "toy_target", "AUTOTUNE_CACHE_MAX_TOKENS": "2048", "CUDA_VISIBLE_DEVICES": ""}
    proc = entrypoint(env, "sh", "-c", f"echo served > {marker}", read_only=True)
    assert proc.returncode == 0, proc.stderr
    assert "the server will hit" in proc.stdout and marker.read_text().strip() == "served"
    # a model the cache does not cover: no exec
    marker2 = tmp_path / "served2"
    proc = entrypoint({**env, "AUTOTUNE_CACHE_TP": "2"}, "touch", str(marker2), read_only=True)
    assert proc.returncode != 0 and not marker2.exists()
