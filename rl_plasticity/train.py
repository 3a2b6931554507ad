"""`rl-plasticity train`: validate the config, prepare the run directory, hand over to the problem."""

from __future__ import annotations

import shlex
from pathlib import Path

from rl_plasticity.config import read_yaml
from rl_plasticity.errors import UserError
from rl_plasticity.problems import resolve_config
from rl_plasticity.run.checkpoint import CHECKPOINT_DIR
from rl_plasticity.run.owner import hold
from rl_plasticity.run.progress import GracefulStop
from rl_plasticity.run.seeding import MAX_SEEDS
from rl_plasticity.run.rundir import (default_run_dir, new_run_dir, read_run_info, remove_temporaries,
                                      write_run_info)


def _seeds(args) -> list[int]:
    if args.seeds is not None:
        if not 1 <= args.seeds <= MAX_SEEDS:
            raise UserError(f"--seeds must be between 1 and {MAX_SEEDS:,}, got {args.seeds}")
        return list(range(args.seeds))
    seed = 0 if args.seed is None else args.seed
    if seed < 0:
        raise UserError(f"--seed must be >= 0, got {seed}")
    return [seed]


def has_checkpoint(run_dir: Path) -> bool:
    """Whether a run saved anything to resume from (runs of one seed after another: under seed_<k>/)."""
    return any(run_dir.glob(f"{CHECKPOINT_DIR}/ckpt-*.pt")) or any(run_dir.glob(f"*/{CHECKPOINT_DIR}/ckpt-*.pt"))


def _exit_code(summary) -> int:
    """0 for a finished run; 130 / 143 for one that Ctrl-C / SIGTERM stopped (its checkpoint saved)."""
    signum = GracefulStop.last_signum
    return 128 + signum if signum is not None and not summary else 0


def _command(args) -> str:
    """The command line a lock file names as its run directory's owner."""
    return shlex.join(["rl-plasticity", *(args.argv if getattr(args, "argv", None) is not None else ["train"])])


def main(args) -> int:
    GracefulStop.last_signum = None
    if args.resume:
        if args.config or args.overrides or args.seeds is not None or args.seed is not None or args.out \
                or args.force:
            raise UserError("--resume continues a run exactly as it was configured; give only the run directory")
        run_dir = Path(args.resume)
        read_run_info(run_dir)  # a run directory at all? Owning another folder would write a lock file into it
        with hold(run_dir, command=_command(args)):  # read again: it may have changed before it was ours
            cfg, info = read_run_info(run_dir)
            cfg, module = resolve_config(cfg, [])
            if not isinstance(info.get("seeds"), list) or not info["seeds"]:
                raise UserError(f"cannot resume {run_dir}: its {run_dir / 'run.json'} lists no seeds")
            for stale in remove_temporaries(run_dir):
                print(f"removed {stale}, left by a write that was cut off")
            return _exit_code(module.run(cfg, list(info["seeds"]), run_dir, resume=True))
    if not args.config:
        raise UserError("give a config file (or --resume RUN_DIR)")
    if args.out is not None and not args.out.strip():
        raise UserError("--out is empty: give a run directory (or leave --out out for runs/<config>-<time>)")
    cfg, module = resolve_config(read_yaml(args.config), args.overrides)
    seeds = _seeds(args)
    # A run that fails before its first checkpoint (bad data, divergence) leaves no directory behind.
    with new_run_dir(args.out or default_run_dir(args.config), force=args.force, keep=has_checkpoint,
                     command=_command(args)) as run_dir:
        write_run_info(run_dir, cfg, seeds, command=args.argv)
        print(f"run directory: {run_dir}")
        return _exit_code(module.run(cfg, seeds, run_dir, resume=False))
