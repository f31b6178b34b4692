"""autotune-cache command line: one module per command group (build_cmds, cache_cmds, serve_cmds, fleet_cmds,
record_cmds, completion), the shared arguments (args) and output (console: tables that fit, JSON, errors, progress
modes, the parser and its help pages). `commands()`: every command's parser; `help_pages()`: their --help, which
docs/cli.md shows (scripts/cli_doc.py).

Exit codes: 0 fine, 1 a check failed (verify, ensure) or a build stayed incomplete, 2 a mistake (bad input, a
cache dir or bundle that cannot be used: one line that says what to do, nothing created), 130/143 interrupted."""
from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import signal
import sys
import threading

from ..errors import AutotuneCacheError
from ..version import __version__
from . import build_cmds, cache_cmds, completion, fleet_cmds, record_cmds, serve_cmds
from .console import HelpFormatter, Parser, apply_quiet, expect_json, report_error, verbose

log = logging.getLogger("autotune_cache")

DESCRIPTION = """\
Tune an LLM server's Triton-autotuned kernels before it starts, so its first requests benchmark nothing.

A build runs every autotuned kernel (the Gated DeltaNet kernels of Qwen3-Next and Qwen3.5 in FLA, vLLM or SGLang,
or whatever a recorded process looked up) at every key the server will reach, on this machine's GPU, and writes
Triton's own cache files plus a manifest. The other commands check, shrink, move, sign and share such a cache."""

EPILOG = """\
Every command but completion takes -q/--quiet, -v/--verbose and --json (record: after its name), before or
after its name. `autotune-cache COMMAND --help` explains each flag and shows examples.

examples:
  autotune-cache plan --model qwen3.5-9b --tp 1,2
  autotune-cache build --model qwen3.5-9b --tp 1,2 --cache-dir ~/gdn-cache
  autotune-cache verify ~/gdn-cache --model qwen3.5-9b --tp 1,2
  AUTOTUNE_CACHE_DIR=~/gdn-cache vllm serve Qwen/Qwen3.5-9B"""


def parser() -> Parser:
    ap = Parser(prog="autotune-cache", description=DESCRIPTION, epilog=EPILOG)
    ap.add_argument("--version", action="version", version=f"autotune-cache {__version__}",
                    help="print the version and exit")
    sub = ap.add_subparsers(dest="command", required=True, parser_class=Parser, metavar="COMMAND",
                            title="commands")
    build_cmds.add_commands(sub)   # models, plan, build
    cache_cmds.add_commands(sub)   # inspect, verify, prune, export, import, sign, merge
    serve_cmds.add_commands(sub)   # ensure
    fleet_cmds.add_commands(sub)   # publish, fetch, ls, fleet plan, fleet build
    record_cmds.add_commands(sub)  # record
    completion.add_commands(sub)   # completion
    return ap


def commands(ap: argparse.ArgumentParser | None = None, words: tuple[str, ...] = ()) \
        -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """The top-level parser and every command's and subcommand's under it, by the words that name it (`()`,
    `("fleet", "plan")`), in the order of their help: what docs/cli.md prints and the help tests read."""
    ap = ap or parser()
    found: list[tuple[tuple[str, ...], argparse.ArgumentParser]] = [(words, ap)]
    for action in ap._actions:   # argparse keeps a parser's subcommands only there
        if isinstance(action, argparse._SubParsersAction):
            for name, p in action.choices.items():
                found += commands(p, (*words, name))
    return found


def help_pages(columns: int) -> list[tuple[tuple[str, ...], str]]:
    """Every command's --help as it prints with COLUMNS=`columns`, whatever this terminal is: docs/cli.md's."""
    pages = []
    for words, p in commands():
        p.formatter_class = functools.partial(HelpFormatter, width=columns - 2)   # argparse's width: COLUMNS-2
        pages.append((words, p.format_help()))
    return pages


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


_OUTPUT_FLAGS = ("--json", "-q", "--quiet", "-v", "--verbose")


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
    ap = parser()
    completion.complete(ap)   # a shell's Tab: answers and exits
    if not argv:   # what a first try gets: the commands, not "arguments are required: COMMAND"
        ap.print_help()
        return 2
    args = ap.parse_args(argv)
    expect_json(given=bool(getattr(args, "json", False)))   # `record ... CMD --json`: that --json is CMD's
    apply_quiet(args)
    quiet_again = verbose(args)
    log.debug("autotune-cache %s, Python %s, in %s: %s", __version__, sys.version.split()[0], os.getcwd(),
              " ".join(argv))
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
        quiet_again()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
