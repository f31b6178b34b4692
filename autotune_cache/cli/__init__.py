"""autotune-cache command line: one module per command group (build_cmds, cache_cmds, serve_cmds), the shared
arguments (args) and output (console: tables that fit, JSON, errors, progress modes).

Exit codes: 0 fine, 1 a check failed (verify, ensure) or a build stayed incomplete, 2 a mistake (bad input, a
cache dir or bundle that cannot be used: one line that says what to do, nothing created), 130/143 interrupted."""
from __future__ import annotations

import json
import os
import signal
import sys
import threading

from ..errors import AutotuneCacheError
from ..version import __version__
from . import build_cmds, cache_cmds, fleet_cmds, record_cmds, serve_cmds
from .console import Parser, apply_quiet, expect_json, report_error


def parser() -> Parser:
    ap = Parser(prog="autotune-cache", description=__doc__.split("\n\n")[0],
                epilog="Every command takes -q/--quiet, and all but record take --json, before or after its name.")
    ap.add_argument("--version", action="version", version=f"autotune-cache {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, parser_class=Parser, metavar="COMMAND")
    build_cmds.add_commands(sub)   # models, plan, build
    cache_cmds.add_commands(sub)   # inspect, verify, prune, export, import, sign, merge
    serve_cmds.add_commands(sub)   # ensure
    fleet_cmds.add_commands(sub)   # publish, fetch, ls, fleet plan, fleet build
    record_cmds.add_commands(sub)  # record
    return ap


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP (a job scheduler, `timeout`, a closed terminal), handled like Ctrl-C: the build stops its
    child and saves the manifest, instead of dying with its child left running."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _terminate(signum, frame):
    raise Terminated(signum)


def _quiet_stdout() -> None:
    """After a broken pipe: point stdout at /dev/null so the interpreter's final flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


_OUTPUT_FLAGS = ("--json", "-q", "--quiet")


def _output_flags_after_command(argv: list[str]) -> list[str]:
    """`autotune-cache --json inspect DIR` means `autotune-cache inspect DIR --json`: every command takes the output
    flags, so they may come before its name too (argparse would otherwise refuse them at the top level)."""
    lead = 0
    while lead < len(argv) and argv[lead] in _OUTPUT_FLAGS:
        lead += 1
    rest = argv[lead:]
    if rest[:1] == ["fleet"]:   # `fleet --json plan M`: the flags between the group and its command move too
        inner = 1
        while inner < len(rest) and rest[inner] in _OUTPUT_FLAGS:
            inner += 1
        if inner > 1 and inner < len(rest) and not rest[inner].startswith("-"):
            return ["fleet", rest[inner]] + argv[:lead] + rest[1:inner] + rest[inner + 1:]
    if not lead or not rest or rest[0].startswith("-"):
        return argv
    name = 2 if rest[0] == "fleet" and len(rest) > 1 and not rest[1].startswith("-") else 1   # fleet plan|build
    return rest[:name] + argv[:lead] + rest[name:]


def main(argv=None) -> int:
    argv = _output_flags_after_command(sys.argv[1:] if argv is None else list(argv))
    expect_json(argv)
    args = parser().parse_args(argv)
    expect_json(given=bool(getattr(args, "json", False)))   # `record ... CMD --json`: that --json is CMD's
    apply_quiet(args)
    main_thread = threading.current_thread() is threading.main_thread()   # signal handlers live there only
    previous = {sig: signal.signal(sig, _terminate) for sig in (signal.SIGTERM, signal.SIGHUP)} if main_thread else {}
    try:
        code = args.func(args)
        sys.stdout.flush()   # a closed pipe shows here, not in the interpreter's exit
        return code
    except BrokenPipeError:   # `... | head`: the reader has what it wanted; as a command killed by SIGPIPE
        _quiet_stdout()
        return 128 + signal.SIGPIPE
    except AutotuneCacheError as e:
        return report_error(str(e))
    except OSError as e:   # a path the user gave that cannot be used: the OS's reason, one line
        where = f"{e.filename}: " if e.filename else ""
        return report_error(f"{where}{e.strerror or e}")
    except KeyboardInterrupt as e:
        note = getattr(args, "on_interrupt", None)
        code = 128 + getattr(e, "signum", signal.SIGINT)   # 130 for Ctrl-C, 143 for SIGTERM
        print("autotune-cache: interrupted" + (f"; {note}" if note else ""), file=sys.stderr)
        if getattr(args, "json", False):   # a script reading stdout gets JSON on this exit too
            print(json.dumps({"error": "interrupted", "exit": code}), flush=True)
        return code
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
