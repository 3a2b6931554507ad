"""Write the slippery-Ant experiment's status: steps reached, newest checkpoint and wall time per run, and
each run's mean episodic return in every friction phase so far.

    python experiments/slippery_ant/status.py [--out docs/slippery_ant/status.md]

Wall time is the training time the runs logged themselves (the sum of each rollout's duration, from
`charts/sps`), so it leaves out start-up and the hours between sessions. A phase is the stretch between two
friction switches (`charts/friction` changes value); an episode counts in the phase it ended in.
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


def phase_returns(scalars: dict) -> list[tuple[float, float, int]]:
    """(friction, mean episodic return, episodes) of each phase, in order; the last one may be unfinished."""
    friction, returns = scalars.get("charts/friction", []), scalars.get("charts/episodic_return", [])
    phases: list[list] = []  # [friction, sum, count]
    i = -1
    for step, ret in returns:
        while i + 1 < len(friction) and friction[i + 1][0] <= step:
            i += 1
            if not phases or friction[i][1] != phases[-1][0]:
                phases.append([friction[i][1], 0.0, 0])
        if phases:
            phases[-1][1] += ret
            phases[-1][2] += 1
    return [(f, total / n if n else float("nan"), n) for f, total, n in phases]


def phase_table(runs: list[Path]) -> list[str]:
    rows = {run: phase_returns(read_scalars(run / "tb")) for run in runs}
    width = max((len(p) for p in rows.values()), default=0)
    lines = ["| learner | seed | " + " | ".join(f"phase {k + 1}" for k in range(width)) + " |",
             "|---|---|" + "---|" * width]
    for run, phases in rows.items():
        cells = [f"{ret:,.0f} (friction {f:.3g})" for f, ret, _ in phases] + [""] * (width - len(phases))
        lines.append(f"| {run.parent.name} | {run.name.removeprefix('seed_')} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=SWEEP.parents[1] / "docs" / "slippery_ant" / "status.md")
    args = parser.parse_args()
    runs = sorted(p for p in SWEEP.glob("*/seed_*") if (p / "config.yaml").is_file())
    lines = [f"# Slippery Ant: status on {dt.date.today().isoformat()}", "",
             "| learner | seed | steps logged | of 20M | newest checkpoint | training wall time | friction now |",
             "|---|---|---|---|---|---|---|", *map(run_row, runs), "",
             "Mean episodic return in each friction phase (2M steps each; the last one of a run may be unfinished):",
             "", *phase_table(runs), ""]
    args.out.write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
