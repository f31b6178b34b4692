"""The one way a generated doc is written or checked (scripts/settings_doc.py, scripts/cli_doc.py): the
`--out`/`--check` command line, and 'stale: run this script' on a difference (exit 1)."""
import argparse
import sys
from collections.abc import Callable
from pathlib import Path


def main(doc: str, default_out: Path, script: str, text_for: Callable[[str | None], str]) -> int:
    """`text_for(current)`: the file's text as it should be, given its current text (None when absent)."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--out", type=Path, default=default_out, help="the file to rewrite or check")
    p.add_argument("--check", action="store_true", help="only say whether the file is up to date (exit 1: stale)")
    args = p.parse_args()
    current = args.out.read_text() if args.out.exists() else None
    text = text_for(current)
    if args.check:
        if current != text:
            print(f"{args.out} is stale: run python scripts/{script}", file=sys.stderr)
            return 1
        return 0
    args.out.write_text(text)
    return 0
