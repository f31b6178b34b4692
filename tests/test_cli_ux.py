"""The command line as a new user meets it, as real subprocesses: every mistake is one line and exit 2 (or 1 for a
failed check), never a traceback, and creates nothing; output whole and plain when piped, fitted to COLUMNS=80;
JSON errors under --json; broken pipes; read-only caches; emulated caches; no-op prune/merge; ensure --rebuild.

One small emulated toy cache is built once per run and copied by the tests that change a cache. What is argument
parsing and output alone (the mistakes, JSON errors) runs main() in this process (helpers.cli_here); signals, pipes,
widths, read-only mounts and builds run in a process of their own."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from helpers import TESTS, assert_refused_in_one_line, cli_here, listing

from autotune_cache import shapes

H200 = TESTS / "data" / "h200-qwen3.5-9b-cache"
TOY = ("--target", "toy_target", "--max-tokens", "1024")
BOX = set("─│┃━┏┓┗┛┡┩╇┳┻╋…")
NOT_ALLOWED = {k: v for k, v in os.environ.items() if k != "AUTOTUNE_CACHE_ALLOW_EMULATED"}


def cli(*args, env=None, cwd=None):
    """The CLI in a subprocess (bounded), with `env` replacing the environment when given."""
    return subprocess.run([sys.executable, "-m", "autotune_cache", *map(str, args)], capture_output=True, text=True,
                          timeout=120, env=env, cwd=cwd)


def no_traceback(proc):
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr


def one_line_error(proc, code=2, text=""):
    """Exit `code`, stderr one `autotune-cache: error:` line naming `text`, no traceback."""
    no_traceback(proc)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == code and len(lines) == 1, (proc.returncode, proc.stderr, proc.stdout)
    assert lines[0].startswith("autotune-cache: error: ") and text in lines[0], lines[0]


@pytest.fixture(scope="session")
def toy(tmp_path_factory, toy_caches):
    """One unit of the toy kernel, emulated: 1 key, 3 configs (2 losers' compiled dirs for prune)."""
    return toy_caches.copy(tmp_path_factory.mktemp("ux") / "cache", max_tokens=1024)


@pytest.fixture
def copy(toy, tmp_path):
    """A copy of the toy cache made as `import` would (its group files point at it): `merge` into a new dir."""
    dest = tmp_path / "copy"
    proc = cli_here("merge", toy, "--into", dest)
    assert proc.returncode == 0, proc.stderr
    return dest


@pytest.fixture(scope="session")
def key(tmp_path_factory):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519
    path = tmp_path_factory.mktemp("key") / "key.pem"
    path.write_bytes(ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return path


# -- basics ---------------------------------------------------------------------------------------------------
def test_version_and_signatures():
    proc = cli("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("autotune-cache ")
    import inspect

    import autotune_cache
    assert "public_key" in inspect.signature(autotune_cache.install).parameters
    assert "progress" in inspect.signature(autotune_cache.build).parameters


def test_verify_help_names_no_default_model():
    text = cli("verify", "--help").stdout
    assert "none without --model" in " ".join(text.split()) and "default qwen3.5-9b" not in text


# -- piped and narrow output ----------------------------------------------------------------------------------
def plain(text):
    """No box characters, ellipses or trailing spaces."""
    assert not BOX & set(text), [c for c in text if c in BOX][:5]
    assert all(line == line.rstrip() for line in text.splitlines())


@pytest.mark.parametrize("args", [("models",), ("plan", "--tp", "1,2"), ("inspect", H200),
                                  ("verify", H200, "--model", "qwen3.5-9b", "--tp", "1,2")])
def test_piped_output_is_whole_and_plain(args):
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    proc = cli(*args, env=env)
    assert proc.returncode in (0, 1) and proc.stdout, proc.stderr
    plain(proc.stdout)
    if args[0] == "models":
        assert all(name in proc.stdout.split() for name in shapes.PRESETS)
    if args[0] in ("plan", "inspect"):   # `| grep` finds a kernel and its key on one line
        assert any("chunk_gated_delta_rule_fwd_kernel_h_blockdim64" in line and "H=16" in line
                   for line in proc.stdout.splitlines())


@pytest.mark.parametrize("args", [("models",), ("plan", "--tp", "1,2"), ("inspect", H200),
                                  ("verify", H200, "--model", "qwen3.5-9b", "--tp", "1,2")])
def test_columns_80_fits_and_drops_nothing(args):
    proc = cli(*args, env={**os.environ, "COLUMNS": "80", "NO_COLOR": "1"})
    assert proc.returncode in (0, 1), proc.stderr
    plain(proc.stdout)
    long = [line for line in proc.stdout.splitlines() if len(line) > 80]
    assert not long, long
    words = proc.stdout.split()
    if args[0] == "models":
        assert all(name in words for name in shapes.PRESETS)
    if args[0] == "plan":   # a unit id longer than a line is cut after a '/', never inside a name
        joined = re.sub(r"/\n +", "/", proc.stdout)
        assert all(f"unit {u['id']}\n" in joined for u in json.loads(cli(*args, "--json").stdout)["units"])
    if args[0] == "inspect":   # every entry's kernel, key and winner are there
        data = json.loads(cli("inspect", H200, "--json").stdout)
        for e in data["entries"]:
            assert e["kernel"] in words and set(e["key_text"].split()) <= set(words)
            assert f"winner: {e['winner_text']}" in proc.stdout


def test_broken_pipe_is_quiet(toy):
    for args in (("models",), ("models", "--json"), ("plan",), ("plan", "--json"), ("inspect", H200),
                 ("inspect", H200, "--json"), ("verify", toy), ("prune", toy, "--dry-run")):
        proc = subprocess.Popen([sys.executable, "-m", "autotune_cache", *map(str, args)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        proc.stdout.close()   # the reader is gone before the first byte: `| head -0`
        stderr = proc.stderr.read()
        assert proc.wait(timeout=120) == 141 and stderr == "", (args, stderr)


# -- errors: one line, JSON under --json ----------------------------------------------------------------------
@pytest.mark.parametrize("args,text", [
    (("plan", "--tp", "3", "--json"), "TP degree 3"),
    (("inspect", "/nonexistent/cache", "--json"), "no such cache directory"),
    (("inspect", "--json"), "required: DIR"),
    (("build", "--noise", "-1", "--cache-dir", "x", "--json"), "--noise"),
])
def test_json_errors_on_stdout(args, text, tmp_path):
    proc = cli_here(*args, cwd=tmp_path)
    one_line_error(proc, 2, text)
    data = json.loads(proc.stdout)
    assert data["exit"] == 2 and text in data["error"]
    assert listing(tmp_path) == {}


def test_a_recorded_commands_json_flag_is_its_own(tmp_path):
    # after `--`, --json is the recorded command's: our error stays off its stdout
    proc = cli("record", "--out", tmp_path / "r.jsonl", "--", tmp_path / "no-such-command", "--json")
    one_line_error(proc, 2, "cannot run")
    assert proc.stdout == ""
    proc = cli("-q", "record", "--out", tmp_path / "r.jsonl", "--", sys.executable, "-c", "print('hi')")
    assert proc.returncode == 0 and proc.stdout == "hi\n" and proc.stderr == ""


@pytest.mark.parametrize("flag", ["--tp", "--probe-tokens", "--model"])
def test_an_option_given_the_end_of_options_marker_is_refused(flag):
    # argparse reads `--tp=--` as an empty list; the commands expect a string (a traceback once)
    one_line_error(cli_here("build", "--cache-dir", "x", "--emulate", f"{flag}=--"), 2, f"argument {flag}:")


def test_noise_names_one_flag():
    proc = cli_here("build", "--noise", "-1", "--cache-dir", "x", "--emulate")
    one_line_error(proc, 2, "--noise must be")
    assert "--probe-tokens" not in proc.stderr and "--selection" not in proc.stderr


# -- mistakes create nothing ----------------------------------------------------------------------------------
MISTAKES = {
    "sign a file": (("sign", "{file}", "--key", "{key}"), "not a directory"),
    "sign a typo": (("sign", "{tmp}/typo", "--key", "{key}"), "no such cache directory"),
    "export a file": (("export", "{file}", "{tmp}/b.tgz"), "not a directory"),
    "export a typo": (("export", "{tmp}/typo", "{tmp}/b.tgz"), "no such cache directory"),
    "export into a dir": (("export", "{cache}", "{tmp}"), "is a directory"),
    "export, missing parent": (("export", "{cache}", "{tmp}/no/such/b.tgz"), "must exist"),
    "prune a file": (("prune", "{file}"), "not a directory"),
    "prune a typo": (("prune", "{tmp}/typo"), "no such cache directory"),
    "inspect a file": (("inspect", "{file}"), "not a directory"),
    "verify a typo": (("verify", "{tmp}/typo"), "no such cache directory"),
    "merge a file": (("merge", "{file}", "--into", "{tmp}/m"), "not a directory"),
    "merge into a file": (("merge", "{cache}", "--into", "{file}"), "not a directory"),
    "merge, missing parent": (("merge", "{cache}", "--into", "{tmp}/no/such/m"), "must exist"),
    "merge into itself": (("merge", "{cache}", "--into", "{cache}"), "nothing to merge"),
    "import a non-bundle": (("import", "{file}", "{tmp}/new"), "not a readable bundle"),
    "import a non-bundle, new parent": (("import", "{file}", "{tmp}/no/such/new"), "not a readable bundle"),
    "import into a file": (("import", "{file}", "{file}"), "not a directory"),
    "ensure into a file": (("ensure", *TOY, "--cache-dir", "{file}"), "is a file"),
    "ensure, no GPU": (("ensure", "--cache-dir", "{tmp}/new", "--no-progress"), "GPU"),
    "ensure, no GPU, empty dir": (("ensure", "--cache-dir", "{tmp}/empty", "--no-progress"), "GPU"),
}


@pytest.mark.parametrize("name", sorted(MISTAKES))
def test_mistake_is_one_line_and_creates_nothing(name, copy, key, tmp_path):
    args, text = MISTAKES[name]
    work = tmp_path / "work"
    work.mkdir()
    (work / "afile").write_text("not a cache\n")
    (work / "empty").mkdir()
    values = {"file": work / "afile", "tmp": work, "key": key, "cache": copy}
    before, cache_before = listing(work), listing(copy)
    manifest = (copy / "manifest.json").read_bytes()
    proc = cli_here(*[a.format(**values) for a in args], env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, cwd=work)
    if args[0] == "ensure":   # it says what it was about to build, then why it cannot
        assert_refused_in_one_line(proc, text)
    else:
        one_line_error(proc, 2, text)
    assert listing(work) == before and listing(copy) == cache_before
    assert (copy / "manifest.json").read_bytes() == manifest


def test_failed_build_leaves_no_dir(tmp_path):
    proc = cli("build", "--cache-dir", tmp_path / "c", "--quiet", env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    one_line_error(proc, 2, "no CUDA GPU")
    assert not (tmp_path / "c").exists()


# -- read-only caches -----------------------------------------------------------------------------------------
def read_only(cache, *args):
    """The CLI with `cache` mounted read-only (a private mount namespace): what root cannot fake with chmod."""
    script = (f'mount --bind "{cache}" "{cache}" && mount -o remount,bind,ro "{cache}" && '
              f'unset COLUMNS LINES && exec "{sys.executable}" -m autotune_cache "$@"')   # sh may set them
    return subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", *map(str, args)], capture_output=True,
                          text=True, timeout=120)


def test_read_only_cache(copy, tmp_path):
    probe = read_only(copy, "--version")
    if probe.returncode != 0:
        pytest.skip(f"no private read-only mount here: {probe.stderr.strip()[:100]}")
    before = listing(copy)
    one_line_error(read_only(copy, "prune", copy), 2, "read-only")
    one_line_error(read_only(copy, "merge", H200, "--into", copy), 2, "")
    assert listing(copy) == before
    # what only reads works: inspect, verify, export (its bundle elsewhere), a prune with nothing to do
    assert read_only(copy, "inspect", copy).returncode == 0
    assert read_only(copy, "verify", copy).returncode == 0
    assert read_only(copy, "export", copy, tmp_path / "b.tgz").returncode == 0
    assert cli("prune", copy).returncode == 0
    proc = read_only(copy, "prune", copy)
    assert proc.returncode == 0 and "nothing to delete" in proc.stdout, proc.stderr


# -- no-op prune and merge, one digest ------------------------------------------------------------------------
def stamp(cache):
    m = cache / "manifest.json"
    return m.stat().st_mtime_ns, m.read_bytes(), listing(cache)


def test_no_op_prune_and_merge_write_nothing(copy, toy, tmp_path):
    before = stamp(copy)
    proc = cli("merge", toy, "--into", copy, "--json")   # `copy` was merged from `toy`: all there
    assert proc.returncode == 0 and json.loads(proc.stdout)["copied"] == 0, proc.stderr
    assert stamp(copy) == before
    assert cli("prune", copy).returncode == 0
    before = stamp(copy)
    proc = cli("prune", copy)
    assert proc.returncode == 0 and "nothing changed" in proc.stdout
    assert stamp(copy) == before


def test_sign_inspect_and_export_show_one_digest(copy, key, tmp_path):
    signed = cli("sign", copy, "--key", key)
    inspected = cli("inspect", copy)
    exported = cli("export", copy, tmp_path / "b.tgz")
    digest = json.loads(cli("inspect", copy, "--json").stdout)["manifest"]["digest"][:16]
    assert all(p.returncode == 0 for p in (signed, inspected, exported))
    assert f"manifest digest {digest}" in signed.stdout and f"digest {digest}" in inspected.stdout
    assert f"manifest digest {digest}" in exported.stdout


# -- emulated caches, --quiet ---------------------------------------------------------------------------------
def test_emulated_cache_fails_verify_and_ensure_unless_allowed(toy):
    proc = cli("verify", toy, env=NOT_ALLOWED)
    assert proc.returncode == 1 and "built with --emulate" in proc.stdout and "all checks passed" not in proc.stdout
    assert cli("verify", toy, "--allow-emulated", env=NOT_ALLOWED).returncode == 0
    ensure = ("ensure", *TOY, "--cache-dir", toy, "--emulate", "--no-progress")
    proc = cli(*ensure, env=NOT_ALLOWED)
    assert proc.returncode == 1 and "built with --emulate" in proc.stderr and "will hit" not in proc.stdout
    proc = cli(*ensure, "--allow-emulated", env=NOT_ALLOWED)
    assert proc.returncode == 0 and "arbitrary winners, allowed" in proc.stdout


def test_quiet(toy):
    proc = cli("verify", toy, "--quiet")
    assert proc.returncode == 0 and proc.stdout == "" and proc.stderr == ""
    proc = cli("-q", "verify", toy)   # the output flags may come before the command's name
    assert proc.returncode == 0 and proc.stdout == "" and proc.stderr == ""
    assert json.loads(cli("--json", "inspect", toy).stdout)["entries"]
    proc = cli("verify", toy, "--quiet", env=NOT_ALLOWED)
    assert proc.returncode == 1 and proc.stdout == "" and "compatibility: built with --emulate" in proc.stderr


# -- ensure --rebuild -----------------------------------------------------------------------------------------
def test_ensure_rebuilds_an_incompatible_cache_and_swaps_it_in(copy, tmp_path):
    raw = json.loads((copy / "manifest.json").read_text())
    raw["fingerprint"]["python"] = "2.7.18"   # another environment: every disk key differs
    (copy / "manifest.json").write_text(json.dumps(raw))
    args = ("ensure", *TOY, "--cache-dir", copy, "--emulate", "--progress", "plain")
    before = listing(copy)
    proc = cli(*args)
    assert proc.returncode == 1 and "--rebuild" in proc.stderr and "python" in proc.stderr, proc.stderr
    assert listing(copy) == before   # left alone: nothing built into another environment's cache
    proc = cli(*args, "--rebuild", "--json")
    no_traceback(proc)
    result = json.loads(proc.stdout)
    assert proc.returncode == 0 and result["ok"] and result["rebuilt"], proc.stderr
    assert "starting" in proc.stderr and not BOX & set(proc.stderr) and "\r" not in proc.stderr  # plain progress
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []   # no fresh or old dir left
    assert cli("verify", copy).returncode == 0   # its group files point at its own path: nothing moved
    assert json.loads((copy / "manifest.json").read_text())["fingerprint"]["python"] != "2.7.18"


def test_interrupt_note_only_where_units_are_kept():
    from autotune_cache.cli import parser
    assert getattr(parser().parse_args(["plan"]), "on_interrupt", None) is None
    assert "finished units" in parser().parse_args(["build", "--cache-dir", "x"]).on_interrupt


# --- help, completion, abbreviations (issue 28 item 3)
# Every command's help page is read from the parsers themselves (cli.commands()), so a command added later is held
# to the same bar without a list here to update.
INTERNAL = ("build_cmds", "cache_cmds", "serve_cmds", "fleet_cmds", "record_cmds", "require_manifest",
            "install(record=", "4194304 bytes")


def _pages():
    from autotune_cache import cli
    return [(words, p, cli_here(*words, "--help").stdout) for words, p in cli.commands()]


def _dests():
    """Every argument's internal name that is not a word a user would write (`fleet_command`, `cache_dir`)."""
    import argparse

    from autotune_cache import cli
    return {a.dest for _, p in cli.commands() for a in p._actions
            if "_" in a.dest and a.dest != argparse.SUPPRESS}


def test_every_help_page_has_a_purpose_examples_and_every_argument_explained():
    import argparse
    pages = _pages()
    assert len(pages) >= 19   # the top level, 17 commands, fleet's 2 subcommands
    bare = cli_here()   # no command at all: the top-level help, as a mistake
    assert bare.returncode == 2 and bare.stdout == pages[0][2], bare.stderr
    for words, p, page in pages:
        name = " ".join(("autotune-cache", *words))
        assert page.startswith(f"usage: {name} "), page
        purpose = page.split("\n\n")[1].strip()   # the first paragraph after the usage: one sentence
        assert purpose[0].isupper() and purpose.endswith("."), (name, purpose)
        assert "\nexamples:\n  " in page, name
        for example in page.split("\nexamples:\n")[1].splitlines():
            assert example.startswith("  "), (name, example)
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                assert all(c.help for c in a._choices_actions), name   # each command's line in the list
            elif a.help != argparse.SUPPRESS:
                assert a.help and len(a.help) > 12, (name, a.option_strings or a.dest)


def test_no_internal_name_in_any_help_page_or_message(tmp_path):
    big = tmp_path / "config.json"
    with open(big, "wb") as f:
        f.truncate(64 << 20)   # holes: nothing read
    (tmp_path / "empty").mkdir()
    texts = [page for _, _, page in _pages()]
    for args in (("fleet",), ("plan", "--config", big), ("verify", tmp_path / "empty"), ("plna",),
                 ("record", "--out", tmp_path / "r.jsonl"), ("completion",)):
        proc = cli_here(*args)
        assert proc.returncode in (1, 2), (args, proc.stderr)
        texts.append(proc.stderr + proc.stdout)
        if args[0] == "plan":
            assert "larger than 4 MiB" in proc.stderr, proc.stderr
    words = set(INTERNAL) | _dests()
    assert "fleet_command" in words and "from_url" in words   # the dest names are read, not guessed
    for text in texts:
        found = [w for w in words if re.search(rf"(?<![\w-]){re.escape(w)}(?![\w-])", text)]
        assert not found, (found, text)


def test_a_mistyped_command_flag_or_choice_names_the_closest():
    one_line_error(cli_here("plna"), text="did you mean 'plan'?")
    one_line_error(cli_here("fleet", "buidl", "m.toml"), text="did you mean 'build'?")
    one_line_error(cli_here("plan", "--modle", "qwen3.5-9b"), text="did you mean '--model'?")
    one_line_error(cli_here("build", "--cache-dir", "x", "--progress", "plian"), text="did you mean 'plain'?")
    one_line_error(cli_here("completion", "bsh"), text="did you mean 'bash'?")
    proc = cli_here("plan", "--model", "qwen3.5-9b", "--zzz")   # nothing close: no guess
    one_line_error(proc, text="unrecognized arguments: --zzz")
    assert "did you mean" not in proc.stderr


def test_abbreviated_flags_are_refused():
    for args in (("plan", "--mod", "qwen3.5-9b"), ("plan", "--max-tok", "1024"), ("models", "--js")):
        one_line_error(cli_here(*args), text="unrecognized arguments")
    assert cli_here("plan", "--model", "qwen3.5-9b", "--max-tokens", "1024").returncode == 0


def test_completion_prints_a_script_per_shell_and_completes(tmp_path):
    for shell, marker in (("bash", "complete "), ("zsh", "#compdef autotune-cache"), ("fish", "complete ")):
        proc = cli_here("completion", shell)
        assert proc.returncode == 0 and marker in proc.stdout and "autotune-cache" in proc.stdout, proc.stderr
        if shell == "bash":
            script = tmp_path / "completion.bash"
            script.write_text(proc.stdout)
            subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)
            subprocess.run(["bash", "-c", f"source {script} && complete -p autotune-cache"], check=True,
                           timeout=30, capture_output=True)
    # what the script asks at a Tab: the CLI answers with the commands and flags that fit
    for line, want in (("autotune-cache pl", "plan"), ("autotune-cache build --sel", "--selection"),
                       ("autotune-cache fleet b", "build"), ("autotune-cache completion f", "fish")):
        answer = tmp_path / "answer"
        env = dict(os.environ, _ARGCOMPLETE="1", COMP_LINE=line, COMP_POINT=str(len(line)),
                   _ARGCOMPLETE_STDOUT_FILENAME=str(answer))
        proc = subprocess.run([sys.executable, "-m", "autotune_cache"], env=env, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert want in answer.read_text().split(), (line, answer.read_text())


def test_verbose_prints_debug_lines_and_only_then():
    import logging
    loggers = [logging.getLogger(name) for name in ("autotune_cache", "filelock")]
    before = [(list(logger.handlers), logger.level) for logger in loggers]
    for args in (("-v", "models"), ("models", "--verbose", "--json")):
        proc = cli_here(*args)
        assert proc.returncode == 0 and "autotune-cache: DEBUG: " in proc.stderr, proc.stderr
        assert [(list(logger.handlers), logger.level) for logger in loggers] == before   # taken away after
    assert "DEBUG" not in cli_here("models").stderr


def test_docs_cli_md_is_every_help_page(tmp_path):
    """docs/cli.md holds each command's --help as it prints at COLUMNS=100, and the script says when it is stale."""
    doc = (TESTS.parent / "docs" / "cli.md").read_text()
    env = dict(os.environ, COLUMNS="100")
    for words, _, _ in _pages():
        page = cli_here(*words, "--help", env=env).stdout.rstrip()
        assert f"### `{' '.join(('autotune-cache', *words))}`\n\n```\n{page}\n```" in doc, \
            f"docs/cli.md is stale for {words}: python scripts/cli_doc.py"
    script = [sys.executable, str(TESTS.parent / "scripts" / "cli_doc.py")]
    subprocess.run([*script, "--check"], check=True, timeout=120)
    out = tmp_path / "cli.md"
    pages = doc.index("### `autotune-cache`")   # a flag renamed in the pages only: the prose is not generated
    out.write_text(doc[:pages] + doc[pages:].replace("--max-tokens", "--max-tokns"))
    assert subprocess.run([*script, "--check", "--out", out], capture_output=True, timeout=120).returncode == 1
    subprocess.run([*script, "--out", out], check=True, timeout=120)
    assert out.read_text() == doc


# --- counts, units, honest reads, API (issue 28 items 4-6) ----------------------------------------------------
def test_plan_and_verify_count_each_disk_key_once():
    # TP 1 and 2 of qwen3.5-9b both reach l2norm D=128 NB=1 and NB=2: one file each on disk, tuned once
    plan = json.loads(cli_here("plan", "--tp", "1,2", "--json").stdout)
    distinct = {(k["kernel"], json.dumps(k["key"])) for u in plan["units"] for k in u["keys"]}
    per_unit = sum(len(u["keys"]) for u in plan["units"])
    verify = json.loads(cli_here("verify", H200, "--model", "qwen3.5-9b", "--tp", "1,2", "--json").stdout)
    rows = verify["checks"]["coverage"]["details"]
    assert per_unit > len(distinct) == len(rows) == plan["totals"]["keys"], (per_unit, plan["totals"])
    assert plan["totals"]["configs"] == sum({(k["kernel"], json.dumps(k["key"])): k["configs"] for u in plan["units"]
                                             for k in u["keys"]}.values())
    text = cli_here("plan", "--tp", "1,2").stdout
    assert f", {len(distinct)} keys (" in text and f"{len(rows)} of {len(rows)} keys" in " ".join(
        cli_here("verify", H200, "--model", "qwen3.5-9b", "--tp", "1,2").stdout.split())


def test_one_digest_from_export_to_the_imported_copy(toy, tmp_path):
    exported = cli_here("export", toy, tmp_path / "b.tgz", "--json")
    digest = json.loads(exported.stdout)["manifest_digest"]
    imported = cli_here("import", tmp_path / "b.tgz", tmp_path / "moved")
    assert exported.returncode == imported.returncode == 0, imported.stderr
    copy_digest = json.loads(cli_here("inspect", tmp_path / "moved", "--json").stdout)["manifest"]["digest"]
    assert copy_digest == digest == json.loads(cli_here("inspect", toy, "--json").stdout)["manifest"]["digest"]
    assert f"manifest digest {digest[:16]}" in imported.stdout and f"digest {digest[:16]}" in cli_here(
        "inspect", tmp_path / "moved").stdout


def test_sizes_in_one_unit_and_counts_in_the_right_number(toy, tmp_path):
    text = cli_here("inspect", toy).stdout
    assert "1 kernel;" in text and "1 kernels" not in text and "1 unit," in cli_here("plan", *TOY).stdout
    verify = cli_here("verify", toy).stdout
    assert "MB hashed" not in verify and "KiB hashed" in verify   # build and verify said MB, inspect K
    from autotune_cache.amounts import size
    data = json.loads(cli_here("inspect", toy, "--json").stdout)
    assert f"all {size(data['totals']['bytes'])}" in text
    exported = json.loads(cli_here("export", toy, tmp_path / "b.tgz", "--json").stdout)
    line = cli_here("export", toy, tmp_path / "c.tgz").stdout
    assert f"({size(exported['bytes'])}) to" in line and size(exported["bytes"]).endswith("KiB")


def test_inspect_says_what_a_dir_is(copy, tmp_path):
    raw = json.loads((copy / "manifest.json").read_text())
    # a build interrupted before its first child reported: a manifest with its units pending, no fingerprint
    unit = next(iter(raw["units"]))
    raw["units"][unit].update(status="pending", error="interrupted")
    raw["fingerprint"] = None
    (copy / "manifest.json").write_text(json.dumps(raw))
    proc = cli_here("inspect", copy)
    assert proc.returncode == 0 and f"incomplete build (unit {unit} pending)" in proc.stdout, proc.stdout
    assert "no manifest" not in proc.stdout
    assert json.loads(cli_here("inspect", copy, "--json").stdout)["manifest"]["pending"] == [unit]
    # a manifest of another schema, or not JSON: unreadable, said so, exit 1 (the rest still shown)
    for text, why in ((json.dumps(dict(raw, schema_version=99)), "manifest schema 99"),
                      ("{broken", "corrupt manifest")):
        (copy / "manifest.json").write_text(text)
        proc = cli_here("inspect", copy)
        assert proc.returncode == 1 and f"manifest unreadable: {why}" in " ".join(proc.stdout.split()), proc.stdout
        assert "manifest: none" not in proc.stdout and "toy_scale_kernel" in proc.stdout
        assert cli_here("inspect", copy, "--json").returncode == 1
    # a source tree: no manifest, nothing in Triton's layout
    tree = tmp_path / "src"
    (tree / "pkg").mkdir(parents=True)
    (tree / "README.md").write_text("hello\n")
    (tree / "pkg" / "mod.py").write_text("x = 1\n")
    one_line_error(cli_here("inspect", tree), 2, "not a cache")
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = cli_here("inspect", empty)
    assert proc.returncode == 0 and "empty" in proc.stdout and "plain Triton cache" not in proc.stdout


def test_the_python_api_names_what_it_returns_and_raises(toy):
    import inspect

    import autotune_cache
    documented = set()
    for fn in (autotune_cache.install, autotune_cache.ensure, autotune_cache.build, autotune_cache.plan):
        doc = " ".join(inspect.getdoc(fn).split())
        for name in inspect.signature(fn).parameters:   # every parameter described
            assert f"`{name}`" in doc, (fn.__name__, name)
        documented |= set(re.findall(r"\b([A-Z][A-Za-z]+(?:Error|Report|Plan|Manifest|Ensured))\b", doc))
    assert {"CacheMissError", "IntegrityError", "LoaderReport"} <= documented
    for name in documented:   # each class a docstring names can be imported from the package
        assert isinstance(getattr(autotune_cache, name), type), name
        assert name in autotune_cache.__all__, name
    # the report prints as what it did, not as <... object at 0x...>
    code = f"import autotune_cache as a; r = a.install({str(toy)!r}); print(repr(r)); print(r)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    first, *rest = proc.stdout.splitlines()
    assert first.startswith(f"<LoaderReport {toy}: verified, 0 lookups") and "object at 0x" not in proc.stdout
    assert rest[0].startswith(f"autotune-cache: {toy}") and "verified" in rest[0]


# --- check then act, quiet children, validation (issue 28 items 1, 2)
NO_GPU = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}


@pytest.mark.parametrize("args", [("build", "-q"), ("build", "--json"), ("ensure", "-q")], ids=" ".join)
def test_no_gpu_deep_path_leaves_nothing_and_shows_no_plan(args, tmp_path):
    # -q/--json show no plan, so the error must not point at one ("The plan above ..."); a dir made for the build
    # goes again, every level of it
    proc = cli(*args, "--cache-dir", tmp_path / "pp" / "a" / "b" / "c", env=NO_GPU)
    one_line_error(proc, 2, "GPU")
    assert "plan above" not in proc.stderr and "plan: " not in proc.stderr and "\nunit " not in proc.stderr
    if "--json" in args:
        assert json.loads(proc.stdout)["exit"] == 2
    assert listing(tmp_path) == {}


def test_empty_cache_dir_is_refused_not_the_working_dir(tmp_path):
    proc = cli_here("build", *TOY, "--emulate", "-q", "--cache-dir", "", cwd=tmp_path)
    one_line_error(proc, 2, "empty path")
    assert listing(tmp_path) == {}   # no manifest.json, lock file or cache entries in the working dir


def test_record_of_a_missing_command_creates_no_record_file(tmp_path):
    proc = cli("record", "--out", tmp_path / "r.jsonl", "--", "no-such-command-anywhere")
    one_line_error(proc, 2, "cannot run")
    assert listing(tmp_path) == {}


@pytest.mark.parametrize("args", [("build", "--emulate"), ("build",), ("ensure", "--emulate")], ids=" ".join)
def test_a_file_where_a_dir_is_needed_is_one_line_before_any_plan(args, tmp_path):
    (tmp_path / "afile").write_text("x")
    proc = cli_here(*args, *TOY, "--cache-dir", tmp_path / "afile" / "x" / "y", cwd=tmp_path)
    one_line_error(proc, 2, f"{tmp_path / 'afile'} is a file")   # names the path that is the problem
    assert "plan" not in proc.stderr and listing(tmp_path) == {"afile": 1}


def test_an_unwritable_parent_is_named(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    if read_only(ro, "--version").returncode != 0:
        pytest.skip("no private read-only mount here")
    proc = read_only(ro, "build", *TOY, "--emulate", "--cache-dir", ro / "new" / "c")
    one_line_error(proc, 2, f"{ro} is not writable")   # the parent, not the dir that does not exist
    assert "plan" not in proc.stderr and listing(ro) == {}


def test_children_warnings_go_to_the_log_not_the_terminal(tmp_path):
    from faults import WARN_TEXT
    env = {**os.environ, "TMPDIR": str(tmp_path), "AUTOTUNE_CACHE_FAULT": "0:warn:always"}
    proc = cli("build", *TOY, "--emulate", "-q", "--json", "--retries", "0", "--cache-dir", tmp_path / "c", env=env)
    no_traceback(proc)
    assert WARN_TEXT not in proc.stdout + proc.stderr, proc.stderr
    error = json.loads(proc.stdout)["error"]   # stdout is the JSON alone
    assert proc.returncode == 1 and "the build children's output: " in error
    log = re.search(r"the build children's output: (\S+\.log)\)", error).group(1)
    text = open(log).read()
    for way in ("a Python warning", "a log line", "a print", "a raw write to fd 2"):
        assert f"{WARN_TEXT}: {way}" in text, text
    # a build whose unit failed once and then passed: stdout, stderr quiet as well, and no log left behind
    env["AUTOTUNE_CACHE_FAULT"] = "0:warn"
    proc = cli("build", *TOY, "--emulate", "--json", "--cache-dir", tmp_path / "d", env=env)
    assert proc.returncode == 0 and json.loads(proc.stdout)["units"] == 1, proc.stderr
    assert WARN_TEXT not in proc.stderr
    assert sorted(p.name for p in tmp_path.glob("autotune-cache-build-*.log")) == [os.path.basename(log)]


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["sigint", "sigterm"])
def test_json_on_an_interrupt(sig, code, tmp_path):
    cache = tmp_path / "c"
    env = {**os.environ, "AUTOTUNE_CACHE_FAULT": "0:hang"}
    proc = subprocess.Popen([sys.executable, "-m", "autotune_cache", "build", *TOY, "--emulate", "--json",
                             "--timeout", "600", "--cache-dir", str(cache)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 60
        while not (cache / ".autotune-cache.lock").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.5)   # the build holds its lock: its child starts, and hangs in its unit
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == code, stderr
    assert json.loads(stdout) == {"error": "interrupted", "exit": code}


@pytest.mark.parametrize("args,text", [
    (("plan", "--model", ""), "--model is empty"),
    (("plan", "--config", ""), "--config is empty"),
    (("plan", "--tp", "1,,2"), "empty item"),
    (("plan", "--target", "fla,"), "empty item"),
    (("build", "--emulate", "--compile-workers", "99999999999", "--cache-dir", "x"), "at most 1024"),
    (("publish", "{tmp}", "file://{tmp}/reg", "--gpu-type", ""), "--gpu-type is empty"),
    (("import", "{tmp}", "{tmp}/new"), "is a directory, not a bundle file"),
    (("verify", "{tmp}", "--public-key", "{tmp}/missing.pem"), "no such file"),
    (("ensure", *TOY, "--emulate", "--cache-dir", "{tmp}/c", "--public-key", "{tmp}/missing.pem"), "no such file"),
])
def test_validation_gaps_are_one_line_exit_2(args, text, tmp_path):
    proc = cli_here(*[a.format(tmp=tmp_path) for a in args], cwd=tmp_path)
    one_line_error(proc, 2, text)
    assert listing(tmp_path) == {}


def test_target_is_as_case_insensitive_as_model():
    lower = cli_here("plan", "--model", "qwen3.5-9b", "--target", "fla", "--json")
    upper = cli_here("plan", "--model", "QWEN3.5-9B", "--target", "FLA", "--json")
    assert upper.returncode == 0 and json.loads(upper.stdout) == json.loads(lower.stdout), upper.stderr


FLEET = ('models = ["qwen3.5-9b", "qwen3.5-4b"]\ntp = [1, 2]\ntargets = ["toy_target"]\nmax_tokens = 3000\n'
         'gpu_types = ["H100", "H200"]\nemulate = true\n')


def test_fleet_plan_piped_and_narrow(tmp_path):
    matrix = tmp_path / "m.toml"
    matrix.write_text(FLEET)
    piped = cli("fleet", "plan", matrix, env={k: v for k, v in os.environ.items() if k != "COLUMNS"})
    assert piped.returncode == 0, piped.stderr
    plain(piped.stdout)
    assert ["0", "H100", "qwen3.5-9b,qwen3.5-4b", "1"] in [line.split()[:4] for line in piped.stdout.splitlines()]
    narrow = cli("fleet", "plan", matrix, env={**os.environ, "COLUMNS": "40"})
    plain(narrow.stdout)
    assert all(len(line) <= 40 for line in narrow.stdout.splitlines())
    for job in json.loads(cli("fleet", "--json", "plan", matrix).stdout)["jobs"]:   # every identifying cell whole
        assert f"{job['job']}  {job['gpu_type']}  {job['models']}" in narrow.stdout


def test_record_takes_json_and_says_when_nothing_was_recorded(tmp_path):
    proc = cli("record", "--out", tmp_path / "r.jsonl", "--", sys.executable, "-c", "print('hi')")
    assert proc.returncode == 0 and proc.stdout == "hi\n"
    assert "0 autotune lookups" in proc.stderr and "build --from-record" not in proc.stderr
    proc = cli("record", "--json", "--out", tmp_path / "r.jsonl", "--", sys.executable, "-c", "print('hi')")
    assert proc.returncode == 0 and proc.stdout.startswith("hi\n"), proc.stderr
    assert json.loads(proc.stdout[3:]) == {"out": str(tmp_path / "r.jsonl"), "lookups": 0, "exit": 0}
