"""Command line: `rl-plasticity train|bench ...`."""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from rl_plasticity.bench import BENCHES
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rl-plasticity", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_bench(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
