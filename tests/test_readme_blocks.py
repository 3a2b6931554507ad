"""Every ```python block of README.md runs as written, once in the suite: each in a fresh namespace, in a
scratch folder, and with its output checked where CHECKS has a check for it.

A block is a promise that a reader can paste it and it works, so each one is run whole, as the README shows
it; examples are sized to run in seconds (a few thousand env steps at most). A block that truly cannot run
here (it needs hours, or data that cannot ship) starts with the line `# not run: <why>`, which the README
shows to the reader too; such a block is still compiled, so it stays valid Python. No block uses that
mark today. No other test runs a README block: a check of what a block prints or writes belongs in CHECKS.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from readme_examples import python_blocks, readme_blocks

NOT_RUN = "# not run:"
BLOCKS = readme_blocks()
TORCH = "Use in your own PyTorch code"


def _check_cbp_regression(out: str, cwd: Path) -> None:
    assert "replacements" in out and (cwd / "cbp_regression.pt").is_file()
    assert math.isfinite(float(out.split()[1])), out  # "loss <value> {...}"


def _check_three_tasks(out: str, cwd: Path) -> None:
    assert "'hare_tortoise/resets': 3.0" in out, out  # one reset per task_switch()


def _check_cbp_swr_meta_adam(out: str, cwd: Path) -> None:
    replaced = re.search(r"'cbp/0/replacements': (\d+)\.0.*'swr/reinitialised': (\d+)\.0", out)
    assert replaced and int(replaced.group(1)) > 0 and int(replaced.group(2)) > 0, out
    low, high = map(float, re.search(r"step sizes (\S+) to (\S+) ", out).groups())
    assert low < 1e-3 < high  # the step sizes were learned


def _check_measure(out: str, cwd: Path) -> None:
    assert "2/dormant_fraction" in out and "2/distance_from_init" in out


def _check_sb3(out: str, cwd: Path) -> None:
    assert "replacements" in out and (cwd / "ppo_cbp_ant.zip").is_file()
    assert any((cwd / "runs" / "sb3").rglob("events.out.tfevents.*"))


# (section, the block's number in it) -> check of (printed output, scratch folder) after the block ran.
CHECKS = {
    (TORCH, 1): _check_cbp_regression,
    (TORCH, 2): _check_three_tasks,
    (TORCH, 3): _check_cbp_swr_meta_adam,
    ("Plasticity metrics of your own model", 1): _check_measure,
    ("With Stable-Baselines3", 1): _check_sb3,
}


def test_the_readme_has_the_blocks_this_file_expects():
    assert len(BLOCKS) >= 5
    missing = set(CHECKS) - {(b.section, b.index) for b in BLOCKS}
    assert not missing, f"CHECKS names blocks the README does not have: {sorted(missing)}"
    assert len({b.id for b in BLOCKS}) == len(BLOCKS)


def test_block_extraction_reads_sections_marks_and_line_numbers():
    text = "intro\n## A\n```python\nx = 1\n```\n```bash\nls\n```\n## B\n```python\n# not run: hours\ny\n```\n"
    a, b = python_blocks(text)
    assert (a.section, a.index, a.line, a.code) == ("A", 1, 4, "x = 1\n")
    assert (b.section, b.index, b.code.startswith(NOT_RUN), b.id) == ("B", 1, True, "b-1")


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_readme_python_block_runs(block, tmp_path, monkeypatch, capsys, one_thread):
    code = compile(block.code, f"README.md:{block.line} ({block.section})", "exec")
    if block.code.startswith(NOT_RUN):
        return  # compiled above; the mark says why it is not run (see the module docstring)
    monkeypatch.chdir(tmp_path)
    exec(code, {"__name__": "__main__"})
    check = CHECKS.get((block.section, block.index))
    if check is not None:
        check(capsys.readouterr().out, tmp_path)
