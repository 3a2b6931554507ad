"""Every ```python block of README.md runs as written: each in a fresh namespace, in a scratch folder.

A block is a promise that a reader can paste it and it works, so each one is run whole, as the README shows
it; examples are sized to run in seconds (a few thousand env steps at most). A block that truly cannot run
here (it needs hours, or data that cannot ship) starts with the line `# not run: <why>`, which the README
shows to the reader too; such a block is still compiled, so it stays valid Python. No block uses that
mark today. Some blocks have their output checked as well (CHECKS).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
NOT_RUN = "# not run:"


@dataclass(frozen=True)
class Block:
    section: str
    index: int  # the block's number within its section
    line: int  # README line of its first code line
    code: str

    @property
    def id(self) -> str:
        return f"{re.sub(r'[^a-z0-9]+', '-', self.section.lower()).strip('-')}-{self.index}"


def python_blocks(text: str) -> list[Block]:
    """The ```python blocks of a markdown text, each with its `## ` section."""
    blocks, counts = [], {}
    for match in re.finditer(r"^```python[ \t]*\n(.*?)^```[ \t]*$", text, flags=re.S | re.M):
        before = text[:match.start()]
        headings = re.findall(r"^## (.+)$", before, flags=re.M)
        section = headings[-1] if headings else "top"
        counts[section] = counts.get(section, 0) + 1
        blocks.append(Block(section, counts[section], before.count("\n") + 2, match.group(1)))
    return blocks


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def _check_sb3(out: str, cwd: Path) -> None:
    assert "replacements" in out and (cwd / "ppo_cbp_ant.zip").is_file()
    assert any((cwd / "runs" / "sb3").rglob("events.out.tfevents.*"))


def _check_measure(out: str, cwd: Path) -> None:
    assert "2/dormant_fraction" in out and "2/distance_from_init" in out


# Section -> check of (printed output, folder) after its blocks ran.
CHECKS = {"With Stable-Baselines3": _check_sb3, "Plasticity metrics of your own model": _check_measure}


def test_the_readme_has_the_blocks_this_file_expects():
    assert len(BLOCKS) >= 4
    assert set(CHECKS) <= {b.section for b in BLOCKS}, "CHECKS names a section without a python block"
    assert len({b.id for b in BLOCKS}) == len(BLOCKS)


def test_block_extraction_reads_sections_marks_and_line_numbers():
    text = "intro\n## A\n```python\nx = 1\n```\n```bash\nls\n```\n## B\n```python\n# not run: hours\ny\n```\n"
    a, b = python_blocks(text)
    assert (a.section, a.index, a.line, a.code) == ("A", 1, 4, "x = 1\n")
    assert (b.section, b.code.startswith(NOT_RUN), b.id) == ("B", True, "b-1")


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_readme_python_block_runs(block, tmp_path, monkeypatch, capsys, one_thread):
    code = compile(block.code, f"README.md:{block.line} ({block.section})", "exec")
    if block.code.startswith(NOT_RUN):
        return  # compiled above; the mark says why it is not run (see the module docstring)
    monkeypatch.chdir(tmp_path)
    exec(code, {"__name__": "__main__"})
    check = CHECKS.get(block.section)
    if check is not None:
        check(capsys.readouterr().out, tmp_path)
