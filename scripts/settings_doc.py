"""Write docs/settings.md, the table of every AUTOTUNE_CACHE_* variable, from autotune_cache/settings.py.

    python scripts/settings_doc.py            # writes docs/settings.md
    python scripts/settings_doc.py --check    # exit 1 when docs/settings.md differs (tests/test_settings.py checks it)
"""
import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))   # this checkout's package, not another installed one

from autotune_cache import settings  # noqa: E402 - after the path above


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=REPO / "docs" / "settings.md")
    p.add_argument("--check", action="store_true", help="only say whether the file is up to date (exit 1: stale)")
    args = p.parse_args()
    text = settings.markdown()
    if args.check:
        current = args.out.read_text() if args.out.exists() else None
        if current != text:
            print(f"{args.out} is stale: run python scripts/settings_doc.py", file=sys.stderr)
            return 1
        return 0
    args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
