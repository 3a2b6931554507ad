"""The README's ```python blocks, each with its `## ` section and its number within it, so tests can run them as
users would (tests/test_readme_blocks.py runs every one, once, and checks the outputs registered for it)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


@dataclass(frozen=True)
class Block:
    section: str
    index: int  # the block's number within its section, from 1
    line: int  # README line of its first code line
    code: str

    @property
    def id(self) -> str:
        return f"{re.sub(r'[^a-z0-9]+', '-', self.section.lower()).strip('-')}-{self.index}"


def python_blocks(text: str) -> list[Block]:
    """The ```python blocks of a markdown text, in order, each with its `## ` section."""
    blocks, counts = [], {}
    for match in re.finditer(r"^```python[ \t]*\n(.*?)^```[ \t]*$", text, flags=re.S | re.M):
        before = text[:match.start()]
        headings = re.findall(r"^## (.+)$", before, flags=re.M)
        section = headings[-1] if headings else "top"
        counts[section] = counts.get(section, 0) + 1
        blocks.append(Block(section, counts[section], before.count("\n") + 2, match.group(1)))
    return blocks


def readme_blocks() -> list[Block]:
    """Every ```python block of README.md."""
    return python_blocks(README.read_text(encoding="utf-8"))

