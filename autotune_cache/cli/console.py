"""Where the CLI writes: one rich console for stdout and one for stderr, and its argument parser. What they print
passes through errors.printable: names from disk, a bundle or a config.json reach the terminal as text, never as
escape sequences (--json output is safe already: json.dumps escapes every control character)."""
from __future__ import annotations

import argparse
import json
import sys

from rich.console import Console
from rich.errors import MarkupError

from ..errors import printable


class _Console(Console):
    """A rich Console that escapes control characters in every string it renders (print's arguments, table cells)
    before it reads their markup, so our own [bold]...[/bold] still works and a name's ESC cannot. A name whose
    brackets are not markup rich can read (a dir named "x[/bold]") makes that one string plain text, not a crash."""

    def render_str(self, text: str, **kwargs):
        text = printable(text, lines=True)
        try:
            return super().render_str(text, **kwargs)
        except MarkupError:
            return super().render_str(text, **{**kwargs, "markup": False})


def _console(stream, **kwargs) -> Console:
    """Piped (logs, CI, `| less`, tests): tables 160 wide rather than rich's 80-column default, and no line broken
    inside a message (a long cache path used to split "changed since it was signed" over two lines)."""
    piped = not stream.isatty()
    return _Console(highlight=False, width=160 if piped else None, soft_wrap=piped, **kwargs)


out = _console(sys.stdout)
err = _console(sys.stderr, stderr=True)


def print_json(data) -> None:
    print(json.dumps(data, indent=1, default=str))


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump
        print(f"autotune-cache: error: {printable(message)} (see --help)", file=sys.stderr)
        sys.exit(2)
