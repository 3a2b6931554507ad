"""The entry point of one sweep run's process: `python -m rl_plasticity.sweep.child PARENT_PID train ...`.

It is its own module so that the sweep's modules never import the CLI that imports them.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

import torch

from rl_plasticity.cli import main


def _die_with_parent(parent_pid: int) -> None:
    """Get SIGTERM when the launching process dies, so a killed sweep leaves no run going on alone.

    SIGTERM (not SIGKILL) lets the run save a checkpoint first. Linux only; elsewhere a run outlives
    its sweep and the restarted sweep waits for it through the run's lock.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _child_main(argv: list[str]) -> int:
    _die_with_parent(int(argv[0]))
    torch.set_num_threads(1)
    return main(argv[1:])


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
