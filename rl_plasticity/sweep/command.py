"""`rl-plasticity sweep`: every (config x seed) as its own run under one sweep directory.

    SWEEP_DIR/sweep.json            what the sweep is (configs, seeds, overrides, backend)
    SWEEP_DIR/configs/<learner>.yaml  the sweep's own copy of each config (editing the original changes nothing)
    SWEEP_DIR/<learner>/seed_<k>/   one ordinary run directory per run (`train --seed k`)
    SWEEP_DIR/layout/               TensorBoard custom-scalars layout (one chart per metric, all learners)
    SWEEP_DIR/.sweep/               locks and each run's full output log

Running the same command again, or `sweep --resume SWEEP_DIR`, skips finished runs, resumes
interrupted ones from their checkpoints and starts the missing ones. One sweep process owns a sweep
directory at a time (`.sweep/sweep.lock`, run/owner.py); `sweep --status SWEEP_DIR` only reads.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import os
import re
import shlex
import sys
from pathlib import Path

from rl_plasticity.config import read_yaml
from rl_plasticity.errors import UserError
from rl_plasticity.problems import resolve_config
from rl_plasticity.run.owner import Owner, hold, holder
from rl_plasticity.run.progress import GracefulStop
from rl_plasticity.run.rundir import atomic_write, package_versions
from rl_plasticity.run.seeding import MAX_SEEDS
from rl_plasticity.sweep.backends import BACKENDS
from rl_plasticity.sweep.runs import STATE_DIR, RunSpec
from rl_plasticity.sweep.status import StatusBoard, status_report
from rl_plasticity.sweep.tblayout import write_layout

MANIFEST = "sweep.json"
SWEEP_LOCK = "sweep.lock"  # in STATE_DIR
CONFIG_COPIES = "configs"
_SEEDS_ITEM = re.compile(r"^(\d+)(?:-(\d+))?$")


def parse_seeds(text: str) -> list[int]:
    """`0-29` (inclusive range), `0,3,7`, `0-4,10-14`; a bare `N` means seeds 0..N-1, as in `train --seeds N`."""
    text = text.strip()
    if text.isdigit():
        n = int(text)
        if n < 1:
            raise UserError(f"--seeds {text}: give at least one seed, e.g. --seeds 0-29")
        if n > MAX_SEEDS:
            raise UserError(f"--seeds {text}: at most {MAX_SEEDS:,} seeds in one sweep")
        return list(range(n))
    seeds: list[int] = []
    for item in text.split(","):
        m = _SEEDS_ITEM.match(item.strip())
        if not m:
            raise UserError(f"--seeds {text!r}: expected a range like 0-29, a list like 0,3,7, or both (0-4,10)")
        low, high = int(m.group(1)), int(m.group(2) if m.group(2) is not None else m.group(1))
        if high < low:
            raise UserError(f"--seeds {text!r}: range {item.strip()} runs backwards")
        if high - low + 1 + len(seeds) > MAX_SEEDS:
            raise UserError(f"--seeds {text!r}: at most {MAX_SEEDS:,} seeds in one sweep")
        seeds.extend(range(low, high + 1))
    return sorted(set(seeds))


# --------------------------------------------------------------------------- the manifest


def _learner(config_path: Path) -> str:
    return config_path.stem


def new_manifest(configs: list[str], seeds: list[int], overrides: list[str], sweep_dir: Path) -> dict:
    """Check every config (with the overrides) now, so a typo fails before any run starts. Each config's
    `source` is recorded relative to the sweep directory, so a committed sweep names no folder of its machine."""
    entries, problems = [], {}
    for path in map(Path, configs):
        learner = _learner(path)
        if learner in problems:
            raise UserError(f"two configs are both named {learner!r} (a learner is its config's file name); "
                            "give them different names or sweep them separately")
        cfg, _ = resolve_config(read_yaml(path), overrides)
        problems[learner] = cfg["problem"]
        entries.append({"learner": learner, "source": os.path.relpath(path.resolve(), sweep_dir), "problem": cfg["problem"],
                        "text": path.read_text(encoding="utf-8")})
    return {"configs": entries, "seeds": seeds, "overrides": list(overrides)}


def merge_manifest(old: dict, new: dict, sweep_dir: Path) -> dict:
    """The existing sweep plus new learners or seeds; a changed config or override is refused."""
    if old["overrides"] != new["overrides"]:
        raise UserError(f"{sweep_dir} was swept with --set {' '.join(old['overrides']) or '(none)'}; "
                        "a sweep keeps one set of overrides - use another --out for different ones")
    known = {c["learner"]: c for c in old["configs"]}
    configs = list(old["configs"])
    for entry in new["configs"]:
        if entry["learner"] not in known:
            configs.append(entry)
            continue
        stored = (sweep_dir / CONFIG_COPIES / f"{entry['learner']}.yaml").read_text(encoding="utf-8")
        if stored != entry["text"]:
            raise UserError(f"{entry['source']} changed since {sweep_dir} started (its runs use "
                            f"{sweep_dir / CONFIG_COPIES / (entry['learner'] + '.yaml')}); use another --out")
    return {**old, "configs": configs, "seeds": sorted(set(old["seeds"]) | set(new["seeds"]))}


def read_manifest(sweep_dir: Path) -> dict:
    path = sweep_dir / MANIFEST
    if not path.is_file():
        raise UserError(f"not a sweep directory (no {MANIFEST}): {sweep_dir}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        _ = manifest["configs"], manifest["seeds"], manifest["overrides"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    return manifest


def write_manifest(sweep_dir: Path, manifest: dict) -> None:
    copies = sweep_dir / CONFIG_COPIES
    copies.mkdir(parents=True, exist_ok=True)
    for entry in manifest["configs"]:
        text = entry.pop("text", None)
        if text is not None:
            atomic_write(copies / f"{entry['learner']}.yaml", text)
    atomic_write(sweep_dir / MANIFEST, json.dumps(manifest, indent=2) + "\n")


def plan_runs(sweep_dir: Path, manifest: dict) -> list[RunSpec]:
    """Seed-major order: with fewer workers than runs, every learner gets its first seeds early."""
    return [RunSpec(str(sweep_dir), c["learner"], str(sweep_dir / CONFIG_COPIES / f"{c['learner']}.yaml"), seed,
                    tuple(manifest["overrides"]))
            for seed in manifest["seeds"] for c in manifest["configs"]]


# --------------------------------------------------------------------------- the command


def _hold_sweep_lock(sweep_dir: Path, argv: list[str] | None) -> Owner:
    (sweep_dir / STATE_DIR).mkdir(parents=True, exist_ok=True)
    command = shlex.join(["rl-plasticity", *(argv if argv is not None else ["sweep"])])
    return hold(sweep_dir, "sweep directory", sweep_dir / STATE_DIR / SWEEP_LOCK, command,
                stop_hint="its runs save a checkpoint and stop")


def _status(args) -> int:
    """`sweep --status SWEEP_DIR`: each run's state and owner, read without taking any lock."""
    if args.resume or args.configs or args.seeds or args.overrides or args.out or args.backend \
            or args.workers is not None or args.address or args.retries is not None:
        raise UserError("--status only reads a sweep; give only the sweep directory")
    sweep_dir = Path(args.status)
    manifest = read_manifest(sweep_dir)
    print(status_report(sweep_dir, plan_runs(sweep_dir, manifest), holder(sweep_dir / STATE_DIR / SWEEP_LOCK)))
    return 0


def _load_or_create(args) -> tuple[Path, dict]:
    if args.resume:
        if args.configs or args.seeds or args.overrides or args.out:
            raise UserError("--resume continues a sweep exactly as it was planned; give only the sweep directory "
                            "(and optionally --backend/--workers/--address/--retries)")
        sweep_dir = Path(args.resume).resolve()
        return sweep_dir, read_manifest(sweep_dir)
    if not args.configs:
        raise UserError("give one or more config files (or --resume SWEEP_DIR)")
    if not args.seeds:
        raise UserError("give the seeds, e.g. --seeds 0-29")
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    if args.out is not None and not args.out.strip():
        raise UserError("--out is empty: give a sweep directory (or leave --out out for runs/sweep-<time>)")
    sweep_dir = Path(args.out or f"runs/sweep-{stamp}").resolve()
    manifest = new_manifest(args.configs, parse_seeds(args.seeds), args.overrides, sweep_dir)
    if sweep_dir.exists() and not sweep_dir.is_dir():
        raise UserError(f"--out {args.out} is a file, not a sweep directory; choose another --out")
    if (sweep_dir / MANIFEST).is_file():
        manifest = merge_manifest(read_manifest(sweep_dir), manifest, sweep_dir)
    elif sweep_dir.exists() and any(sweep_dir.iterdir()):
        raise UserError(f"{sweep_dir} exists and is not a sweep directory; choose another --out")
    return sweep_dir, manifest


def _run_with(args, manifest: dict) -> dict:
    """Backend settings: the command line's, else those the sweep ran with before; checked."""
    run_with = manifest.get("run_with", {})
    backend = args.backend or run_with.get("backend", "local")
    workers = args.workers if args.workers is not None else run_with.get("workers")
    address = args.address if args.address is not None else run_with.get("address")
    retries = args.retries if args.retries is not None else (2 if backend == "ray" else 0)
    if workers is not None and workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    if retries < 0:
        raise UserError(f"--retries must be >= 0, got {retries}")
    if address and backend != "ray":
        raise UserError("--address joins a Ray cluster; it needs --backend ray")
    if backend == "ray" and importlib.util.find_spec("ray") is None:
        raise UserError("the ray backend needs Ray: pip install ray")
    return {"backend": backend, "workers": workers, "address": address, "retries": retries}


def main(args) -> int:
    if getattr(args, "status", None):
        return _status(args)
    sweep_dir, manifest = _load_or_create(args)
    run_with = _run_with(args, manifest)  # every argument checked before anything is written
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with _hold_sweep_lock(sweep_dir, getattr(args, "argv", None)):
        return _sweep(sweep_dir, manifest, run_with)


def _sweep(sweep_dir: Path, manifest: dict, run_with: dict) -> int:
    backend_name, workers, address, retries = (run_with[k] for k in ("backend", "workers", "address", "retries"))
    manifest["run_with"] = run_with
    manifest.setdefault("created", dt.datetime.now().astimezone().isoformat(timespec="seconds"))
    manifest["versions"] = package_versions()
    write_manifest(sweep_dir, manifest)
    write_layout(sweep_dir, [c["problem"] for c in manifest["configs"]])

    specs = plan_runs(sweep_dir, manifest)
    learners = [c["learner"] for c in manifest["configs"]]
    print(f"sweep directory: {sweep_dir}\n{len(learners)} learners x {len(manifest['seeds'])} seeds = "
          f"{len(specs)} runs on the {backend_name} backend", flush=True)
    backend = BACKENDS[backend_name](**({"address": address} if backend_name == "ray" else {}),
                                     workers=workers, retries=retries)
    board = StatusBoard(specs)
    notice = "asking every running run to save a checkpoint and stop (press Ctrl-C again to abort)"
    with GracefulStop(notice=notice) as stop:
        try:
            backend.run(specs, board, stop)
        finally:
            board.close()
    print(board.summary(learners), flush=True)
    print(f"compare: rl-plasticity compare {sweep_dir} --out {sweep_dir / 'compare.png'}\n"
          f"watch:   tensorboard --logdir {sweep_dir}", flush=True)
    counts = board.counts()
    if stop.requested:
        print(f"stopped; continue with: rl-plasticity sweep --resume {sweep_dir}", file=sys.stderr)
        return stop.exit_code
    return 1 if counts["failed"] else 0
