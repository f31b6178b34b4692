"""Where the CLI writes, and how: the two consoles (stdout, stderr), tables that fit the width, JSON, errors, the
output flags every command shares (--json, --quiet, --verbose, --progress) and the argument parser (help pages,
did-you-mean, no abbreviated flags).

Width: `COLUMNS` when set, else the terminal's; piped without `COLUMNS`: unlimited, so nothing is truncated or
wrapped and `grep` sees whole lines. Tables are plain text (no box characters, no trailing spaces); at a width
they do not fit they stack, one block per row, and never drop a column. Colour only on a terminal, never with
`NO_COLOR` (rich reads it). What they print passes through errors.printable: names from disk, a bundle or a
config.json reach the terminal as text, never as escape sequences (JSON is safe already: json.dumps escapes every
control character).

Errors: one line on stderr, `autotune-cache: error: ...`; under --json also `{"error": ..., "exit": N}` on stdout,
so a script reading stdout always gets JSON.
"""
from __future__ import annotations

import argparse
import difflib
import json
import logging
import os
import re
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass

from rich.console import Console
from rich.errors import MarkupError

from ..errors import printable

PROGRESS_MODES = ("auto", "plain", "tty", "none")


class _Console(Console):
    """A rich Console that escapes control characters in every string it renders before it reads their markup, so
    our own [bold]...[/bold] still works and a name's ESC cannot. A name whose brackets are not markup rich can
    read (a dir named "x[/bold]") makes that one string plain text, not a crash."""

    def render_str(self, text: str, **kwargs):
        text = printable(text, lines=True)
        try:
            return super().render_str(text, **kwargs)
        except MarkupError:
            return super().render_str(text, **{**kwargs, "markup": False})

    def on_broken_pipe(self) -> None:
        # rich would exit 1 (our "a check failed"); main() ends every command's broken pipe alike
        self.quiet = True
        raise BrokenPipeError

    def _render_buffer(self, buffer) -> str:
        # rich keeps the space it wrapped a line at; a log or `diff` should not see it
        return "\n".join(line.rstrip(" ") for line in super()._render_buffer(buffer).split("\n"))


def width(stream=None) -> int | None:
    """Columns to fit: COLUMNS when set (a positive number), else the terminal's; None when piped (no limit)."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    stream = stream or sys.stdout
    try:
        return os.get_terminal_size(stream.fileno()).columns if stream.isatty() else None
    except (OSError, ValueError, AttributeError):
        return None


def _console(stream, **kwargs) -> Console:
    """Without a width (piped): no line is broken inside a message (a long cache path used to split "changed since
    it was signed" over two lines)."""
    w = width(stream)
    return _Console(highlight=False, width=w or 100_000, soft_wrap=w is None, **kwargs)


out = _console(sys.stdout)
err = _console(sys.stderr, stderr=True)


# -- tables ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Column:
    """One column. `key`: it identifies the row (a kernel name, a key): shown first when rows stack. `right`:
    right-aligned (numbers); stacked, these share one line."""
    name: str
    key: bool = False
    right: bool = False


def table_lines(columns: list[Column], rows: list[list], width_: int | None) -> list[str]:
    """Aligned columns when they fit in `width_` (None: any width), else one block per row: its key cells on the
    first line, then each other text column as `name: value` and the numbers on one line, wrapped at the width.
    Plain text, no trailing spaces."""
    cells = [[printable(c) for c in row] for row in rows]
    widths = [max([len(col.name)] + [len(r[i]) for r in cells]) for i, col in enumerate(columns)]
    if width_ is None or sum(widths) + 2 * (len(columns) - 1) <= width_:
        def line(values):
            return "  ".join(v.rjust(w) if col.right else v.ljust(w)
                             for v, w, col in zip(values, widths, columns, strict=True)).rstrip()
        return [line([c.name for c in columns])] + [line(r) for r in cells]
    lines = []
    for r in cells:
        head = "  ".join(v for v, col in zip(r, columns, strict=True) if col.key)
        lines += textwrap.wrap(head, width_, subsequent_indent="    ", break_on_hyphens=False) or [""]
        for v, col in zip(r, columns, strict=True):
            if not col.key and not col.right:
                lines += textwrap.wrap(f"{col.name}: {v}", width_, initial_indent="  ", subsequent_indent="    ",
                                       break_on_hyphens=False)
        numbers = ", ".join(f"{col.name} {v}" for v, col in zip(r, columns, strict=True) if col.right)
        if numbers:
            lines += textwrap.wrap(numbers, width_, initial_indent="  ", subsequent_indent="    ")
    return lines


def print_table(console: Console, columns: list[Column], rows: list[list]) -> None:
    """A table on `console` at its width (stdout's: `width()`), plain text (no markup read in the cells)."""
    for line in table_lines(columns, rows, None if console.soft_wrap else console.width):
        console.print(line, markup=False, soft_wrap=True)


class _Wrapper(textwrap.TextWrapper):
    """textwrap at spaces; a word longer than a whole line (a unit id) is cut after its '/'s, not inside a name."""

    def _split(self, text):
        room = self.width - len(self.subsequent_indent)
        return [part for chunk in super()._split(text)
                for part in (re.split(r"(?<=/)(?=.)", chunk) if len(chunk) > room else [chunk])]


def print_item(console: Console, text: str, indent: int = 2) -> None:
    """An indented line of a list (a problem, a note); at a width its wrapped lines keep the indent, plus two."""
    if console.soft_wrap:
        console.print(" " * indent + text, markup=False, soft_wrap=True)
        return
    wrapper = _Wrapper(console.width, initial_indent=" " * indent, subsequent_indent=" " * (indent + 2),
                       break_on_hyphens=False, break_long_words=False)
    for line in wrapper.wrap(printable(text)):
        console.print(line, markup=False, soft_wrap=True)


# -- JSON, errors ---------------------------------------------------------------------------------------------
_json_errors = False   # --json was given: errors go to stdout as JSON too


def print_json(data) -> None:
    print(json.dumps(data, indent=1, default=str))


def report_error(message: str, code: int = 2) -> int:
    """One line on stderr (and `{"error", "exit"}` on stdout under --json); returns the exit code."""
    message = printable(message)
    print(f"autotune-cache: error: {message}", file=sys.stderr)
    if _json_errors:
        print(json.dumps({"error": message, "exit": code}))
    return code


def expect_json(argv: list[str] | None = None, *, given: bool | None = None) -> None:
    """Whether errors are also JSON on stdout: before parsing (a parse error included) a guess from `argv`, ours up
    to a `--` (what follows is another command's); after it, `given`: what the parser read."""
    global _json_errors
    if given is None:
        ours = argv or []
        given = "--json" in (ours[:ours.index("--")] if "--" in ours else ours)
    _json_errors = given


# -- the output flags -----------------------------------------------------------------------------------------
def add_output_args(p, *, json_help: str = "print the result as JSON (errors too: {\"error\", \"exit\"})",
                    progress: bool = False) -> None:
    """--json, --quiet and --verbose for every command; --progress (and the older --no-progress) for those that
    build."""
    p.add_argument("--json", action="store_true", help=json_help)
    p.add_argument("-q", "--quiet", action="store_true",
                   help="print only problems and errors (the exit code says the rest)")
    add_verbose_arg(p)
    if progress:
        p.add_argument("--progress", choices=PROGRESS_MODES, default="auto",
                       help="auto (default): bars on a terminal, one line per unit when piped; plain: one line per "
                            "unit; tty: bars; none: nothing")
        p.add_argument("--no-progress", dest="progress", action="store_const", const="none",
                       help="the same as --progress none")


def add_verbose_arg(p) -> None:
    p.add_argument("-v", "--verbose", action="store_true",
                   help="also print debug messages on stderr (what the command reads, decides and runs)")


# --verbose: our messages, and the libraries' whose waits and reads a user may need to see (a build waiting on
# another's lock, a registry's store)
_LOGGERS = {"autotune_cache": "autotune-cache: %(levelname)s: %(message)s",
            "filelock": "autotune-cache: %(levelname)s: %(name)s: %(message)s",
            "fsspec": "autotune-cache: %(levelname)s: %(name)s: %(message)s"}


def verbose(args) -> Callable[[], None]:
    """--verbose: debug messages on stderr, one `autotune-cache: DEBUG:` line each. Returns what undoes it, for
    main() to call when the command ends (a caller running main() twice gets no doubled lines)."""
    if not getattr(args, "verbose", False):
        return lambda: None
    undo = []
    for name, form in _LOGGERS.items():
        logger = logging.getLogger(name)
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(form))
        undo.append((logger, handler, logger.level))
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)

    def quiet_again() -> None:
        for logger, handler, level in undo:
            logger.removeHandler(handler)
            logger.setLevel(level)
    return quiet_again


def progress_mode(args) -> str:
    """'tty', 'plain' or 'none' for a build's view: --quiet is none, auto is tty on a terminal (stderr)."""
    mode = getattr(args, "progress", "auto")
    if getattr(args, "quiet", False) or mode == "none":
        return "none"
    if mode == "auto":
        return "tty" if err.is_terminal else "plain"
    return mode


def apply_quiet(args) -> None:
    """--quiet: stdout says nothing (errors and problems go to stderr)."""
    out.quiet = bool(getattr(args, "quiet", False))


# -- the parser: help pages, did-you-mean, no abbreviations --------------------------------------------------
class HelpFormatter(argparse.HelpFormatter):
    """argparse's layout, but a description keeps its paragraphs (each filled to the width) and an indented line
    (an example's command line) stays as written, so copying it copies the command."""

    def _fill_text(self, text, width, indent):
        blocks = []
        for block in text.strip("\n").split("\n\n"):
            if block.startswith(" ") or block.endswith(":") or "\n  " in block:   # examples: as written
                blocks.append(textwrap.indent(block, indent))
            else:
                blocks.append(textwrap.fill(" ".join(block.split()), width, initial_indent=indent,
                                            subsequent_indent=indent, break_on_hyphens=False))
        return "\n\n".join(blocks)


    def _format_action(self, action):
        # the commands themselves, not first a line naming their metavar (COMMAND) above them
        if isinstance(action, argparse._SubParsersAction):
            return "".join(self._format_action(a) for a in action._get_subactions())
        return super()._format_action(action)


def _suggestion(word: str, choices) -> str:
    """'; did you mean 'plan'?' for a near miss of one of `choices`, else ''."""
    close = difflib.get_close_matches(word, [str(c) for c in choices], n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


class Parser(argparse.ArgumentParser):
    """Every parser of the CLI: no abbreviated flags (`--mod` is not `--model`: a later flag would change what it
    means), a mistake is one line that names the closest command, flag or choice."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):  # one line, no usage dump
        sys.exit(report_error(f"{message} (see {self.prog} --help)"))

    def _check_value(self, action, value):
        # argparse's own check of a choice (a command's name, --progress's mode); the one place it knows both the
        # word and the choices, so the suggestion is added here (Python 3.14's suggest_on_error does the same)
        try:
            super()._check_value(action, value)
        except argparse.ArgumentError as e:
            raise argparse.ArgumentError(action, f"{e.message}{_suggestion(value, action.choices or ())}") from None

    def parse_known_args(self, args=None, namespace=None):
        # argparse hands `--tp=--` to the command as an empty list, not as a missing value: refuse it as the one
        # argparse refuses `--tp --` (found by tests/test_fuzz_inputs.py: a traceback otherwise)
        argv = list(sys.argv[1:] if args is None else args)
        for a in argv[:argv.index("--")] if "--" in argv else argv:
            if a.startswith("--") and a.endswith("=--"):
                self.error(f"argument {a[:-3]}: expected one argument")
        namespace, extras = super().parse_known_args(argv, namespace)
        if extras and self._subparsers is None:
            # a command refuses what it does not know itself, naming its own closest flag (the top level, which
            # would refuse it otherwise, knows only the top-level flags)
            flags = [o for a in self._actions for o in a.option_strings]
            unknown = next((x for x in extras if x.startswith("-")), extras[0])
            self.error(f"unrecognized arguments: {' '.join(extras)}"
                       + (_suggestion(unknown.split("=")[0], flags) if unknown.startswith("-") else ""))
        return namespace, extras


def add_command(sub, name: str, purpose: str, *, details: str = "", examples: tuple[str, ...] = (),
                **kwargs) -> Parser:
    """A command's parser: `purpose`, one line, is its line in the list of commands and the first of its --help;
    `details`, more paragraphs of its --help; `examples`, command lines (a line starting with '#' says why)."""
    epilog = "examples:\n" + "\n".join(f"  {line}" for line in examples) if examples else None
    first = f"{purpose[:1].upper()}{purpose[1:]}."   # a sentence on its own page, a phrase in the list
    return sub.add_parser(name, help=purpose, description=first + (f"\n\n{details}" if details else ""),
                          epilog=epilog, **kwargs)
