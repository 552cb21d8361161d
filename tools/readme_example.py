"""Print the README's first ```python block (the usage example), for type-checking it."""

from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def example() -> str:
    match = re.search(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    if match is None:
        raise SystemExit("README.md has no ```python block")
    return match.group(1)


if __name__ == "__main__":
    sys.stdout.write(example())
