"""Command line: `rl-plasticity train|sweep|compare|evaluate|bench ...`."""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from rl_plasticity import __version__
from rl_plasticity.bench import BENCHES
from rl_plasticity.compare import options as compare_options
from rl_plasticity.errors import UserError


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train from a YAML config")
    p.add_argument("config", nargs="?", help="YAML experiment file, e.g. configs/regression/cbp.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value (dotted keys for nested values); repeatable")
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", type=int, help="run seeds 0..N-1")
    seeds.add_argument("--seed", type=int, help="run this one seed")
    p.add_argument("--out", help="run directory (default: runs/<config name>-<time>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    p.add_argument("--force", action="store_true", help="overwrite an existing run directory")
    p.set_defaults(func=lambda args: importlib.import_module("rl_plasticity.train").main(args))


def _add_sweep(sub) -> None:
    p = sub.add_parser("sweep", help="run every config x seed as its own run under one sweep directory")
    p.add_argument("configs", nargs="*", metavar="CONFIG", help="YAML experiment files; a learner is a file's name")
    p.add_argument("--seeds", help="seeds to run: 0-29, 0,3,7, 0-4,10; a bare N means 0..N-1")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value in every run; repeatable")
    p.add_argument("--out", help="sweep directory (default: runs/sweep-<time>); rerunning into it continues it")
    p.add_argument("--resume", metavar="SWEEP_DIR", help="continue the sweep in SWEEP_DIR")
    p.add_argument("--status", metavar="SWEEP_DIR", help="show each run's state and the process working on it "
                   "(only reads; works beside a live sweep)")
    p.add_argument("--backend", choices=["local", "ray"], help="local processes (default) or Ray tasks")
    p.add_argument("--workers", type=int, help="runs at a time (default: the number of CPU cores)")
    p.add_argument("--address", help="join the Ray cluster at this address instead of starting one")
    p.add_argument("--retries", type=int, help="times a crashed run is retried (default: 0 local, 2 ray)")
    p.set_defaults(func=lambda args: importlib.import_module("rl_plasticity.sweep.command").main(args))


def _add_compare(sub) -> None:
    p = sub.add_parser("compare", help="plot learners across seeds (mean +- standard error, or IQM or mean with a "
                       "bootstrap CI) from TensorBoard logs")
    p.add_argument("paths", nargs="+", metavar="SWEEP_DIR_OR_RUN", help="sweep directories or run directories")
    p.add_argument("--metric", action="extend", nargs="+", default=[], metavar="TAG",
                   help="TensorBoard tags to plot, one panel each; globs allowed (plasticity/*/dormant_fraction); "
                        "several after one --metric or one per --metric; default: the problem's headline number")
    p.add_argument("--bin", type=int, metavar="SIZE", help="bin width in steps (default: about 100 bins)")
    p.add_argument("--out", required=True, help="figure file (.png, .pdf, .svg, .eps); the binned table goes beside it as .csv")
    compare_options.add_arguments(p)  # --stat, --bootstrap-samples
    p.set_defaults(func=lambda args: importlib.import_module("rl_plasticity.compare.command").main(args))


def _add_evaluate(sub) -> None:
    from rl_plasticity.problems.mujoco_env import BOUNDS  # here, not at the top: it loads gymnasium and mujoco

    bounds = "; ".join(f"{k.replace('_', ' ')} in [{lo:g}, {hi:g}]" for k, (lo, hi) in BOUNDS.items())
    p = sub.add_parser("evaluate", help="run a saved PPO policy on chosen physics; table, mp4 video, sweeps",
                       description=f"Evaluate a saved PPO policy. Supported physics values: {bounds}.")
    p.add_argument("path", metavar="RUN_DIR_OR_CHECKPOINT",
                   help="a run directory (its latest checkpoint) or RUN_DIR/checkpoints/ckpt-N.pt")
    p.add_argument("--episodes", type=int, default=5, help="episodes per physics value (default 5)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--friction", type=float, help="sliding friction of all geoms")
    where.add_argument("--mass", type=float, help="factor on all body masses and inertias")
    where.add_argument("--phase", type=int, metavar="K", help="the physics of phase K of the run's own schedule")
    where.add_argument("--sweep-friction", metavar="F1,F2,...", help="evaluate at each friction; table, PNG and CSV")
    where.add_argument("--sweep-mass", metavar="M1,M2,...", help="evaluate at each mass scale; table, PNG and CSV")
    p.add_argument("--deterministic", action="store_true", help="act with the policy mean (default: sample)")
    p.add_argument("--seed", type=int, default=0, help="seeds the env resets and action noise (default 0)")
    p.add_argument("--max-episode-steps", type=int, metavar="N",
                   help="cut episodes at N steps (default: the run's limit)")
    p.add_argument("--video", metavar="OUT.mp4", help="film the first episode (with a sweep: one file per value)")
    p.add_argument("--video-size", type=int, default=480, metavar="PX",
                   help="video frame side in pixels, a multiple of 16 (default 480)")
    p.add_argument("--tensorboard", action="store_true",
                   help="add the results and a video (animated GIF in the Images tab) to the run's TensorBoard")
    p.add_argument("--plot", metavar="OUT.png",
                   help="sweep plot (default RUN_DIR/eval/sweep-<kind>-step<N>.png); the CSV goes beside it")
    p.set_defaults(func=lambda args: importlib.import_module("rl_plasticity.evaluate.command").main(args))


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="speed benchmarks that print numbers")
    bench_sub = p.add_subparsers(dest="bench", required=True)
    for name, module_name in BENCHES.items():
        module = importlib.import_module(module_name)
        bp = bench_sub.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0])
        bp.add_argument("--json", action="store_true", help="print the figures as one JSON object on the last line")
        if hasattr(module, "add_arguments"):
            module.add_arguments(bp)
        bp.set_defaults(func=lambda args, m=module: _run_bench(m, args))


def _run_bench(module, args) -> int:
    figures = module.run(args)
    if args.json:
        print(json.dumps(figures))
    return 0


class _Parser(argparse.ArgumentParser):
    """Bad arguments are bad input like any other: one line on stderr, exit code 2 (subcommands inherit this)."""

    def error(self, message: str):
        self.exit(2, f"rl-plasticity: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="rl-plasticity", description=__doc__)
    parser.add_argument("--version", action="version", version=f"rl-plasticity {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_sweep(sub)
    _add_compare(sub)
    _add_evaluate(sub)
    _add_bench(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # run.json records the command line (run/rundir.py relocatable_command)
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"rl-plasticity: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rl-plasticity: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
