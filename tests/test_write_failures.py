"""A checkpoint the disk refuses (disk full, simulated by an OSError in the middle of the write): one clear
line, the previous checkpoint intact, nothing half-written left to load, and the run resumable."""

import errno
import json

import pytest
import torch
from sweeps import CONFIGS, TINY, sets

import rl_plasticity.run.checkpoint as checkpoint
from rl_plasticity.cli import main as cli_main

ARGS = ["train", str(CONFIGS / "bp.yaml"), *sets([*TINY, "examples=2000"])]  # checkpoints at 500, 1000, ...


def full_disk_at(monkeypatch, call: int) -> None:
    """torch.save's `call`-th checkpoint writes half its bytes, then the disk is full."""
    save, calls = torch.save, []

    def save_until_full(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            f.write(b"PK\x03\x04 the first half of a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")
        return save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", save_until_full)


def error_line(capsys) -> str:
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("rl-plasticity: error: could not write checkpoint "), lines
    return lines[0]


@pytest.mark.usefixtures("one_thread")
def test_a_refused_checkpoint_keeps_the_previous_one_and_the_run_resumes(tmp_path, capsys, monkeypatch):
    straight, run = tmp_path / "straight", tmp_path / "run"
    assert cli_main([*ARGS, "--out", str(straight)]) == 0
    full_disk_at(monkeypatch, 3)
    capsys.readouterr()
    assert cli_main([*ARGS, "--out", str(run)]) == 2
    line = error_line(capsys)
    for words in ("ckpt-1500.pt", "No space left on device", "ckpt-1000.pt, is intact",
                  f"continue with: rl-plasticity train --resume {run}"):
        assert words in line, line
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["ckpt-1000.pt", "ckpt-500.pt"]
    assert not list(run.rglob("*.tmp")) and not list(run.glob(".*"))
    monkeypatch.undo()  # room again
    assert cli_main(["train", "--resume", str(run)]) == 0
    assert json.loads((run / "results.json").read_text()) == json.loads((straight / "results.json").read_text())


@pytest.mark.usefixtures("one_thread")
def test_a_refused_first_checkpoint_leaves_no_run_behind(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    full_disk_at(monkeypatch, 1)
    assert cli_main([*ARGS, "--out", str(run)]) == 2
    line = error_line(capsys)
    assert "there is no earlier checkpoint" in line and "start the run again" in line
    assert not run.exists()
