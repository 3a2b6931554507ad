"""`rl-plasticity train`: validate the config, prepare the run directory, hand over to the problem."""

from __future__ import annotations

import importlib
from pathlib import Path

from rl_plasticity.config import apply_overrides, read_yaml, validate
from rl_plasticity.errors import UserError
from rl_plasticity.problems import PROBLEMS
from rl_plasticity.rundir import default_run_dir, prepare_run_dir, read_run_info, write_run_info


def problem_module(cfg: dict):
    name = cfg.get("problem")
    if name not in PROBLEMS:
        raise UserError(f"config key 'problem' must be one of {sorted(PROBLEMS)}, got {name!r}")
    return importlib.import_module(PROBLEMS[name])


def resolve_config(raw: dict, overrides: list[str]) -> tuple[dict, object]:
    cfg = apply_overrides(raw, overrides)
    module = problem_module(cfg)
    cfg = validate(cfg, module.DEFAULTS, module.RULES)
    if hasattr(module, "check"):
        module.check(cfg)
    return cfg, module


def _seeds(args) -> list[int]:
    if args.seeds is not None:
        if args.seeds < 1:
            raise UserError(f"--seeds must be >= 1, got {args.seeds}")
        return list(range(args.seeds))
    seed = 0 if args.seed is None else args.seed
    if seed < 0:
        raise UserError(f"--seed must be >= 0, got {seed}")
    return [seed]


def main(args) -> int:
    if args.resume:
        if args.config or args.overrides or args.seeds is not None or args.seed is not None or args.out:
            raise UserError("--resume continues a run exactly as it was configured; give only the run directory")
        run_dir = Path(args.resume)
        cfg, info = read_run_info(run_dir)
        cfg, module = resolve_config(cfg, [])
        seeds = list(info["seeds"])
    else:
        if not args.config:
            raise UserError("give a config file (or --resume RUN_DIR)")
        cfg, module = resolve_config(read_yaml(args.config), args.overrides)
        seeds = _seeds(args)
        run_dir = prepare_run_dir(args.out or default_run_dir(args.config), force=args.force)
        write_run_info(run_dir, cfg, seeds)
        print(f"run directory: {run_dir}")
    module.run(cfg, seeds, run_dir, resume=bool(args.resume))
    return 0
