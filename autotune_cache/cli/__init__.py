"""autotune-cache command line: one module per command group (build_cmds, cache_cmds, serve_cmds), the shared
arguments (args) and consoles (console). Errors a user can act on: one line on stderr, exit 2."""
from __future__ import annotations

import signal
import sys
import threading

from ..errors import AutotuneCacheError, printable
from . import build_cmds, cache_cmds, fleet_cmds, record_cmds, serve_cmds
from .console import Parser


def parser() -> Parser:
    ap = Parser(prog="autotune-cache", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True, parser_class=Parser)
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


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    main_thread = threading.current_thread() is threading.main_thread()   # signal handlers live there only
    previous = {sig: signal.signal(sig, _terminate) for sig in (signal.SIGTERM, signal.SIGHUP)} if main_thread else {}
    try:
        return args.func(args)
    except AutotuneCacheError as e:
        print(f"autotune-cache: error: {printable(e)}", file=sys.stderr)   # one line, whatever names it quotes
        return 2
    except KeyboardInterrupt as e:
        print("autotune-cache: interrupted; finished units are kept", file=sys.stderr)
        return 128 + getattr(e, "signum", signal.SIGINT)   # 130 for Ctrl-C, 143 for SIGTERM
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
