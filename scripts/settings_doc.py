"""Write docs/settings.md, the table of every AUTOTUNE_CACHE_* variable, from autotune_cache/settings.py.

    python scripts/settings_doc.py            # writes docs/settings.md
    python scripts/settings_doc.py --check    # exit 1 when docs/settings.md differs (tests/test_settings.py checks it)
"""
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))   # this checkout's package, not another installed one

from autotune_cache import settings  # noqa: E402 - after the path above

if __name__ == "__main__":
    from _generated_doc import main
    sys.exit(main(__doc__, REPO / "docs" / "settings.md", "settings_doc.py", lambda current: settings.markdown()))
