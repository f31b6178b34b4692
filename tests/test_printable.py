"""Names echoed to a terminal (a cache dir, a bundle or one of its members, a config path): the CLI shows their
control characters escaped (errors.printable), in its one-line errors, argparse's, and everything its rich consoles
print, whose own markup still works."""
import io
import json
import tarfile

import pytest
from helpers import run_cli_bounded
from rich.table import Table

from autotune_cache.errors import printable

EVIL = "evil\x1b[31m\r\x07\x9b"   # colour, carriage return (overwrite the line), bell, one-byte CSI
CONTROLS = {chr(c) for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))} - {"\n"}


def assert_shown_escaped(text):
    assert not CONTROLS & set(text), repr(text)
    assert "evil\\x1b[31m\\x0d\\x07\\x9b" in text, text


def test_printable_escapes_every_control_character():
    assert printable("a\x1b[2Jb\rc\x07\x7f\x85\x9b\u202ed\te\nf") == (
        "a\\x1b[2Jb\\x0dc\\x07\\x7f\\x85\\x9b\\u202ed\\x09e\\x0af")
    assert printable("one\ntwo\x1b", lines=True) == "one\ntwo\\x1b"
    assert printable("plain ünïcode [bold]") == "plain ünïcode [bold]"


@pytest.mark.parametrize("argv", [
    lambda t: ["inspect", t / EVIL],
    lambda t: ["export", t / EVIL, t / "out.tar.gz"],
    lambda t: ["import", t / (EVIL + ".tar.gz"), t / "dst"],
    lambda t: ["plan", "--config", t / EVIL],
    lambda t: ["plan", EVIL],                           # argparse: "unrecognized arguments"
], ids=["inspect", "export", "import", "config", "argparse"])
def test_a_failing_command_echoes_a_name_escaped(tmp_path, argv):
    proc = run_cli_bounded(*argv(tmp_path))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert_shown_escaped(proc.stderr)


def test_a_bundle_members_name_is_echoed_escaped(tmp_path):
    from autotune_cache.cache.bundle import BUNDLE_FORMAT, BUNDLE_VERSION
    from autotune_cache.cache.manifest import Manifest
    m = Manifest(tool_version="0")
    bundle = tmp_path / "b.tar.gz"
    with tarfile.open(bundle, "w:gz") as tar:
        for name, data in (("bundle.json", json.dumps({"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION,
                                                       "manifest_digest": m.digest()}).encode()),
                           ("manifest.json", m.model_dump_json().encode()), (f"AB/{EVIL}.json", b"{}")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    proc = run_cli_bounded("import", bundle, tmp_path / "dst")
    # refused for the name itself (paths are checked where parsed), and the name shown escaped
    assert proc.returncode == 2 and "unsafe bundle: member name" in proc.stderr and not (tmp_path / "dst").exists()
    assert not CONTROLS & set(proc.stderr) and "evil\\x1b[31m" in proc.stderr, proc.stderr   # the message's repr()


def test_console_output_escapes_names_and_keeps_our_markup(tmp_path):
    proc = run_cli_bounded("inspect", (tmp_path / EVIL).mkdir() or tmp_path / EVIL)
    assert proc.returncode == 0, proc.stderr
    assert_shown_escaped(proc.stdout)
    assert "[bold]" not in proc.stdout and "cache " in proc.stdout   # the markup was read, not printed

    from autotune_cache.cli.console import _Console
    buf = io.StringIO()
    console = _Console(file=buf, width=200, force_terminal=True, highlight=False)   # as a terminal sees it
    table = Table("name", box=None)
    table.add_row(EVIL)
    console.print(f"[bold]cache[/bold] {EVIL}")
    console.print(table)
    shown = buf.getvalue()
    assert shown.startswith("\x1b[1mcache\x1b[0m ")   # our own bold: the console's sequences remain
    assert_shown_escaped(shown.replace("\x1b[1m", "").replace("\x1b[0m", ""))   # and only those
    assert shown.count("evil\\x1b[31m\\x0d\\x07\\x9b") == 2


def test_a_name_with_brackets_rich_cannot_read_is_shown_plain_not_a_crash(tmp_path):
    name = tmp_path / "x[" / "bold]y"   # printed: .../x[/bold]y, a closing tag that opened nowhere
    name.mkdir(parents=True)
    proc = run_cli_bounded("inspect", name)
    assert proc.returncode == 0, proc.stderr
    assert f"cache[/bold] {name}" in proc.stdout   # that line plain, markup and all; the table as before
