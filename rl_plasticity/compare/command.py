"""`rl-plasticity compare`: learners side by side across seeds, from TensorBoard logs.

A "seed run" is one folder of event files: `RUN/tb/` for a one-seed run (ppo), each `RUN/tb/seed_<k>/`
for a run that batches seeds (regression; its `tb/mean/` is skipped, it is not a seed). Runs are grouped
by learner: the `<learner>` folder of a sweep's `<learner>/seed_<k>/`, else the name of the config the
run was started from (run.json), else the run folder's name.

Binning: a value logged at step s falls in the bin (start, start + SIZE] holding s (step 0 in the
first), since a number logged at step s describes the steps up to s. Each seed run's values in a bin
are averaged first, so a run that logs more often (more episodes) does not weigh more; the learner's
summary (--stat: mean +- standard error, IQM or mean with a bootstrap CI; see summary.py) is then taken
over its seed runs.
"""

from __future__ import annotations

import csv
import dataclasses
import fnmatch
import io
import json
import math
import os
import re
import sys
from pathlib import Path

import numpy as np

from rl_plasticity.compare.summary import SeedSummary
from rl_plasticity.config import read_yaml
from rl_plasticity.errors import UserError
from rl_plasticity.problems import headline
from rl_plasticity.run.rundir import CONFIG_FILE, INFO_FILE, atomic_write
from rl_plasticity.run.tblog import read_scalars

PHYSICS_TAGS = ("charts/friction", "charts/mass")
FIGURE_FORMATS = ("png", "pdf", "svg", "eps")  # matplotlib writes these itself
BIN_FIELDS = ("metric", "learner", "bin_start", "bin_end")  # then the statistic's columns, then n_runs
_SEED_DIR = re.compile(r"^seed_\d+$")
_SKIPPED_LOGS = {"mean"}  # a batched run's mean over seeds is not a seed


@dataclasses.dataclass
class SeedRun:
    learner: str
    name: str  # shown in messages: learner/seed_k or the folder path
    problem: str | None
    scalars: dict[str, list[tuple[int, float]]]


# --------------------------------------------------------------------------- finding and reading runs


def find_run_dirs(paths: list[str]) -> list[Path]:
    """Run directories (folders with config.yaml) at or under each path, in a stable order."""
    found: list[Path] = []
    for raw in paths:
        root = Path(raw)
        if not root.exists():
            raise UserError(f"no such file or directory: {root}")
        if (root / CONFIG_FILE).is_file():
            found.append(root)
            continue
        for d, subdirs, files in os.walk(root):
            subdirs[:] = sorted(s for s in subdirs if not s.startswith("."))
            if CONFIG_FILE in files:
                found.append(Path(d))
                subdirs[:] = []  # a run directory holds no other runs
    return list(dict.fromkeys(found))


def learner_of(run_dir: Path) -> str:
    if _SEED_DIR.match(run_dir.name):
        return run_dir.parent.name
    try:
        command = json.loads((run_dir / INFO_FILE).read_text(encoding="utf-8")).get("command", [])
        if "train" in command:
            args = command[command.index("train") + 1:]
            config = next((a for a in args if a.endswith((".yaml", ".yml"))), None)
            if config:
                # Runs of one config with different --set values are different learners.
                return " ".join([Path(config).stem, *_overrides(args)])
    except (OSError, ValueError, AttributeError):
        pass
    return run_dir.name


def _overrides(args: list[str]) -> list[str]:
    """The KEY=VALUE overrides among a train command's arguments (`--set K=V` or `--set=K=V`), sorted, less
    the `log.*` ones: what and how often a run logs does not make it another learner."""
    found = [b if a == "--set" else a.removeprefix("--set=")
             for a, b in zip(args, [*args[1:], ""]) if a == "--set" or a.startswith("--set=")]
    return sorted(o for o in found if not o.startswith("log."))


def _problem_of(run_dir: Path) -> str | None:
    try:
        return read_yaml(run_dir / CONFIG_FILE).get("problem")
    except UserError:
        return None


def load_seed_runs(run_dirs: list[Path]) -> list[SeedRun]:
    """Every seed run's scalars, read from its event files."""
    runs = []
    for run_dir in run_dirs:
        tb = run_dir / "tb"
        if not tb.is_dir():
            continue  # started but logged nothing yet
        learner, problem = learner_of(run_dir), _problem_of(run_dir)
        by_log = _split_by_log_dir(tb, read_scalars(tb, by_run=True))
        for rel, scalars in sorted(by_log.items()):
            if Path(rel).name in _SKIPPED_LOGS:
                continue
            label = run_dir.name if rel == "." else f"{run_dir.name}/{rel}"
            runs.append(SeedRun(learner, f"{learner}/{label}", problem, scalars))
    return runs


def _split_by_log_dir(tb: Path, scalars: dict) -> dict[str, dict]:
    """read_scalars(by_run=True) keys are `<log folder>/<tag>`; split them back by folder."""
    folders = sorted({Path(d).relative_to(tb).as_posix() for d, _, files in os.walk(tb)
                      if any("tfevents" in f for f in files)}, key=len, reverse=True)
    out: dict[str, dict] = {}
    for key, points in scalars.items():
        rel = next((f for f in folders if f != "." and key.startswith(f + "/")), ".")
        tag = key if rel == "." else key[len(rel) + 1:]
        out.setdefault(rel, {})[tag] = points
    return out


# --------------------------------------------------------------------------- choosing metrics


def choose_metrics(runs: list[SeedRun], requested: list[str]) -> list[str]:
    """Requested tags (globs expand to every matching tag), or each problem's default."""
    available = sorted({tag for r in runs for tag in r.scalars})
    if not requested:
        problems = list(dict.fromkeys(r.problem for r in runs))
        requested = [m for p in problems for m in headline(p).metrics]
        if not requested:
            raise UserError(f"no default metric for problem(s) {', '.join(map(str, problems))}; "
                            f"pass --metric TAG; tags found: {_listing(available)}")
    metrics = []
    for pattern in requested:
        matches = fnmatch.filter(available, pattern) if any(c in pattern for c in "*?[") else \
            [pattern] if pattern in available else []
        if not matches:
            raise UserError(f"no run has metric {pattern!r}; tags found: {_listing(available)}")
        metrics.extend(m for m in matches if m not in metrics)
    return metrics


def _listing(tags: list[str], limit: int = 40) -> str:
    shown = ", ".join(tags[:limit])
    return shown + (f" ... and {len(tags) - limit} more" if len(tags) > limit else "") if tags else "(none)"


# --------------------------------------------------------------------------- binning


def default_bin(runs: list[SeedRun], metric: str, target_bins: int = 100) -> int:
    """A round width giving about `target_bins` bins over the longest run.

    A metric logged on a regular grid (every 20,000 examples) gets a whole number of grid steps per
    bin, so no bin is half empty; episode returns, logged at uneven steps, get a round number.
    """
    steps = [np.unique([s for s, _ in r.scalars[metric]]) for r in runs if metric in r.scalars]
    last = max(int(s[-1]) for s in steps)
    gaps = np.concatenate([np.diff(s) for s in steps if len(s) > 1] or [np.array([1])])
    interval = max(1, int(np.median(gaps)))
    wanted = max(1.0, last / target_bins)
    if all(int(s[0]) % interval == 0 for s in steps) and not np.any(gaps % interval):
        return interval * _round(max(1.0, wanted / interval))
    return max(interval, _round(wanted))


def _round(x: float) -> int:
    """The nearest (on a log scale) of 1, 2, 5, 10, 20, 50... to `x` (>= 1)."""
    candidates = [m * 10 ** k for k in range(len(str(int(x))) + 1) for m in (1, 2, 5)]
    return min(candidates, key=lambda c: abs(math.log(c / x)))


def bin_index(steps: np.ndarray, size: int) -> np.ndarray:
    return np.maximum(np.ceil(steps / size).astype(np.int64) - 1, 0)


def binned_table(runs: list[SeedRun], metric: str, size: int, learners: list[str],
                 summary: SeedSummary | None = None) -> list[dict]:
    """Rows of csv_fields(summary) for one metric: per learner and bin, the summary over seed runs."""
    summary = summary or SeedSummary()
    rows = []
    for learner in learners:
        per_bin: dict[int, list[float]] = {}
        for run in (r for r in runs if r.learner == learner and metric in r.scalars):
            steps, values = (np.array(x, dtype=np.float64) for x in zip(*run.scalars[metric]))
            idx = bin_index(steps, size)
            for b in np.unique(idx):
                per_bin.setdefault(int(b), []).append(float(values[idx == b].mean()))
        for b in sorted(per_bin):
            v = np.array(per_bin[b])
            rows.append({"metric": metric, "learner": learner, "bin_start": b * size, "bin_end": (b + 1) * size,
                         **summary.summarise(v), "n_runs": len(v)})
    return rows


def physics_changes(runs: list[SeedRun]) -> dict[str, list[int]]:
    """Steps where friction or mass changed, per tag; seeds' nearby switches are drawn as one line."""
    out = {}
    for tag in PHYSICS_TAGS:
        steps = sorted(s for r in runs if tag in r.scalars
                       for (s, v), (_, prev) in zip(r.scalars[tag][1:], r.scalars[tag][:-1]) if v != prev)
        if not steps:
            continue
        span = max(s for r in runs for pts in r.scalars.values() for s, _ in pts[-1:]) or 1
        merged = [steps[0]]
        for s in steps[1:]:
            if s - merged[-1] > 0.01 * span:
                merged.append(s)
        out[tag.split("/")[-1]] = merged
    return out


# --------------------------------------------------------------------------- the command


def learner_order(runs: list[SeedRun], paths: list[str]) -> list[str]:
    """A sweep's own config order where there is one, else alphabetical."""
    order: list[str] = []
    for raw in paths:
        manifest = Path(raw) / "sweep.json"
        if manifest.is_file():
            try:
                order += [c["learner"] for c in json.loads(manifest.read_text(encoding="utf-8"))["configs"]]
            except (OSError, ValueError, KeyError, TypeError):
                pass
    present = {r.learner for r in runs}
    return [x for x in dict.fromkeys(order) if x in present] + sorted(present - set(order))


def x_label(runs: list[SeedRun]) -> str:
    labels = {headline(r.problem).x_label for r in runs}
    return labels.pop() if len(labels) == 1 else "step"


def csv_fields(summary: SeedSummary) -> tuple[str, ...]:
    """mean-se: ... mean, se, n_runs; iqm-ci: ... iqm, ci95_low, ci95_high, n_runs; mean-ci likewise with mean."""
    return (*BIN_FIELDS, *summary.columns, "n_runs")


def write_csv(path: Path, rows: list[dict], summary: SeedSummary) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=csv_fields(summary), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()} for row in rows)
    atomic_write(path, buf.getvalue())


def main(args) -> int:
    from rl_plasticity.compare.plot import plot_comparison  # matplotlib only once there is something to plot

    if args.bin is not None and args.bin < 1:
        raise UserError(f"--bin must be >= 1, got {args.bin}")
    out = Path(args.out)
    if out.suffix.lower()[1:] not in FIGURE_FORMATS:
        raise UserError(f"--out {out}: give a figure file ending in {', '.join('.' + f for f in FIGURE_FORMATS)} "
                        "(such as compare.png)")
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give a figure file name such as {out / 'compare.png'}")
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: folder {out.parent} does not exist")
    run_dirs = find_run_dirs(args.paths)
    runs = load_seed_runs(run_dirs)
    if not runs:
        where = ", ".join(args.paths)
        raise UserError(f"no runs found in {where}: expected run directories (config.yaml and tb/ event files)"
                        + (f"; found {len(run_dirs)} run directories without TensorBoard logs" if run_dirs else ""))
    metrics = choose_metrics(runs, args.metric)
    learners = learner_order(runs, args.paths)
    for metric in metrics:
        missing = [r.name for r in runs if metric not in r.scalars]
        if missing:
            print(f"note: {len(missing)} of {len(runs)} runs have no {metric} (e.g. {missing[0]})", file=sys.stderr)
    summary = SeedSummary(args.stat, args.bootstrap_samples)
    # One width for every panel, so the panels' points line up.
    width = args.bin or max(default_bin(runs, metric) for metric in metrics)
    tables = {metric: binned_table(runs, metric, width, learners, summary) for metric in metrics}
    _note_single_seeds(tables, learners, summary)
    changes = physics_changes(runs)
    counts = {learner: sum(r.learner == learner for r in runs) for learner in learners}
    atomic_write(out, plot_comparison(tables, learners, counts, changes, x_label(runs), summary,
                                      fmt=out.suffix.lower()[1:]))
    csv_path = out.with_suffix(".csv")
    write_csv(csv_path, [row for metric in metrics for row in tables[metric]], summary)
    print(_report(tables, learners, width, summary))
    print(f"wrote {out} and {csv_path}")
    return 0


def _note_single_seeds(tables: dict, learners: list[str], summary: SeedSummary) -> None:
    """Say once which learners have bins with one seed run: there the spread is undefined and no band is drawn."""
    alone = [x for x in learners
             if any(r["learner"] == x and r["n_runs"] == 1 for rows in tables.values() for r in rows)]
    if alone:
        print(f"note: one seed run gives no {summary.spread}: {', '.join(alone)} "
              f"{'is' if len(alone) == 1 else 'are'} shown without a band where n=1", file=sys.stderr)


def _report(tables: dict, learners: list[str], width: int, summary: SeedSummary) -> str:
    """The last bin of each metric per learner, as a quick look without opening the figure."""
    lines = []
    for metric, rows in tables.items():
        lines.append(f"{metric} (bins of {width:,} steps), last bin, {summary.label}:")
        for learner in learners:
            mine = [r for r in rows if r["learner"] == learner]
            if mine:
                r = mine[-1]
                lines.append(f"  {learner:<16} {summary.format(r)}  (n={r['n_runs']}, "
                             f"steps {r['bin_start']:,}-{r['bin_end']:,})")
    return "\n".join(lines)
