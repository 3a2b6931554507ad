"""The README's code blocks, found by their section headings, so tests can run them as users would."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def python_block(heading: str) -> str:
    """The first ```python block of the README section titled `heading`."""
    text = README.read_text()
    start = text.find(f"\n## {heading}\n")
    if start < 0:
        raise LookupError(f"README has no section '## {heading}'")
    end = text.find("\n## ", start + 1)
    section = text[start:] if end < 0 else text[start:end]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    if match is None:
        raise LookupError(f"README section '## {heading}' has no python code block")
    return match.group(1)
