"""Write the slippery-Ant experiment's status table: steps reached, newest checkpoint and wall time per run.

    python experiments/slippery_ant/status.py [--out docs/slippery_ant/status.md]

Wall time is the training time the runs logged themselves (the sum of each rollout's duration, from
`charts/sps`), so it leaves out start-up and the hours between sessions.
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

from rl_plasticity.run.checkpoint import list_checkpoints
from rl_plasticity.run.tblog import read_scalars

SWEEP = Path(__file__).resolve().parent
ROLLOUT = 2048
TOTAL = 20_000_000


def run_row(run_dir: Path) -> str:
    scalars = read_scalars(run_dir / "tb")
    sps = scalars.get("charts/sps", [])
    steps = sps[-1][0] if sps else 0
    hours = sum(ROLLOUT / v for _, v in sps if v > 0) / 3600
    ckpts = list_checkpoints(run_dir)
    newest = f"{ckpts[-1][0]:,}" if ckpts else "-"
    friction = scalars.get("charts/friction", [])
    now = f"{friction[-1][1]:.3g}" if friction else "-"
    done = "done" if (run_dir / "results.json").is_file() else f"{100 * steps / TOTAL:.0f}%"
    return (f"| {run_dir.parent.name} | {run_dir.name.removeprefix('seed_')} | {steps:,} | {done} | {newest} | "
            f"{hours:.2f} h | {now} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=SWEEP.parents[1] / "docs" / "slippery_ant" / "status.md")
    args = parser.parse_args()
    runs = sorted(p for p in SWEEP.glob("*/seed_*") if (p / "config.yaml").is_file())
    lines = [f"# Slippery Ant: status on {dt.date.today().isoformat()}", "",
             "| learner | seed | steps logged | of 20M | newest checkpoint | training wall time | friction now |",
             "|---|---|---|---|---|---|---|", *map(run_row, runs), ""]
    args.out.write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
