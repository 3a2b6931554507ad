"""Test hooks for child processes, loaded at interpreter start when a test puts this folder on PYTHONPATH.

They make the moment a test needs happen at a chosen point of a real run, so that no test depends on
how fast the machine is:

- RLP_TEST_KILL_DURING_CHECKPOINT=N: the process kills itself (SIGKILL) half-way through writing the
  checkpoint of step N, leaving the partial temporary file a real kill would leave.
- RLP_TEST_PAUSE_AFTER_CHECKPOINT=RUN_DIR and RLP_TEST_PAUSE_MARKER=FILE: once RUN_DIR has saved its
  first checkpoint, the run creates FILE and waits until it has been asked to stop (SIGINT/SIGTERM);
  it then stops as it always does (it saves a checkpoint and exits). Only the first process to get
  there pauses: once FILE exists, later processes (a resumed run, a retry) run straight through.
"""

import os

_KILL_AT = os.environ.get("RLP_TEST_KILL_DURING_CHECKPOINT")
_PAUSE_IN = os.environ.get("RLP_TEST_PAUSE_AFTER_CHECKPOINT")

if _KILL_AT or _PAUSE_IN:
    import io
    import signal
    import time
    from pathlib import Path

    import torch

    import rl_plasticity.run.checkpoint as _checkpoint
    import rl_plasticity.run.progress as _progress
    from rl_plasticity.run.rundir import atomic_open

    _save = _checkpoint.save_checkpoint
    _handle = _progress.GracefulStop._handle
    _received: list[int] = []
    _paused: list[bool] = []

    def _record_signal(self, signum, frame):
        _received.append(signum)
        _handle(self, signum, frame)

    def save_checkpoint(path, state):
        path = Path(path)
        if _KILL_AT and path.name == f"ckpt-{_KILL_AT}.pt":
            data = io.BytesIO()
            torch.save(state, data)
            with atomic_open(path) as f:
                f.write(data.getvalue()[: len(data.getvalue()) // 2])
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        _save(path, state)
        marker = Path(os.environ.get("RLP_TEST_PAUSE_MARKER", ""))
        if _PAUSE_IN and path.parent.parent == Path(_PAUSE_IN) and not _paused and not marker.exists():
            _paused.append(True)
            marker.touch()
            while not _received:
                time.sleep(0.05)

    _checkpoint.save_checkpoint = save_checkpoint
    _progress.GracefulStop._handle = _record_signal
