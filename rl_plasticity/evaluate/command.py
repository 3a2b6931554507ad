"""`rl-plasticity evaluate`: run a saved PPO policy for a few episodes on a chosen physics.

    rl-plasticity evaluate RUN_DIR --episodes 10 --friction 0.2 --video ant.mp4
    rl-plasticity evaluate RUN_DIR/checkpoints/ckpt-2000000.pt --phase 3 --tensorboard
    rl-plasticity evaluate RUN_DIR --sweep-friction 0.02,0.2,2.0 --plot sweep.png

Episodes are repeatable: the env's first reset is seeded with --seed and the action noise (unless
--deterministic) comes from a generator seeded the same way. Observations are normalised with the
statistics saved in the checkpoint, which evaluation never updates. The same episode loop serves
the optional evaluation at the end of each physics phase during training (problems/mujoco_eval.py).
"""

from __future__ import annotations

import csv
import io
import math
import shlex
from pathlib import Path

import numpy as np

from rl_plasticity.errors import UserError
from rl_plasticity.evaluate.saved_policy import load_policy, locate
from rl_plasticity.problems.mujoco_env import OPTION, Physics, phase_physics, physics, schedule_kind
from rl_plasticity.problems.mujoco_eval import Evaluation, run_episodes
from rl_plasticity.run.owner import hold
from rl_plasticity.run.rundir import atomic_write
from rl_plasticity.run.tblog import TBLogger
from rl_plasticity.run.video import check_frame_size, write_mp4

DEFAULT_VIDEO_SIZE = 480


# --------------------------------------------------------------------------- reporting


def format_table(rows: list[Evaluation]) -> str:
    def pm(mean: float, se: float, digits: int) -> str:
        return f"{mean:.{digits}f} +- {se:.{digits}f}" if not math.isnan(se) else f"{mean:.{digits}f}"

    header = ["physics", "episodes", "return (mean +- SE)", "length (mean +- SE)"]
    body = [[r.physics.label() if r.physics else "as trained", str(len(r.returns)),
             pm(r.return_mean, r.return_se, 1), pm(r.length_mean, r.length_se, 1)] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(header, *body)]
    return "\n".join("  ".join(x.ljust(w) for x, w in zip(line, widths)).rstrip() for line in [header, *body])


def sweep_csv(rows: list[Evaluation]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([rows[0].physics.name, "episodes", "return_mean", "return_se", "length_mean", "length_se"])
    for r in rows:
        writer.writerow([repr(r.physics.value), len(r.returns), repr(r.return_mean), repr(r.return_se),
                         repr(r.length_mean), repr(r.length_se)])
    return out.getvalue()


def sweep_plot(rows: list[Evaluation], title: str) -> bytes:
    """PNG of mean return +- SE against the physics value, log x axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r.physics.value for r in rows]
    y = np.array([r.return_mean for r in rows])
    se = np.nan_to_num(np.array([r.return_se for r in rows]))
    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=120)
    ax.errorbar(x, y, yerr=se, marker="o", capsize=3)
    ax.set_xscale("log")
    ax.set_xlabel(rows[0].physics.name)
    ax.set_ylabel(f"return (mean +- SE, {len(rows[0].returns)} episodes)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png")
    plt.close(fig)
    return out.getvalue()


# --------------------------------------------------------------------------- command line


def parse_values(text: str, kind: str) -> list[Physics]:
    option = "--sweep-" + Physics(kind, 1.0).name
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise UserError(f"{option} needs comma-separated values, e.g. 0.02,0.2,2.0")
    values = []
    for p in parts:
        try:
            values.append(float(p))
        except ValueError:
            raise UserError(f"{option}: {p!r} is not a number") from None
    return [_checked(kind, v, option) for v in values]


def _checked(kind: str, value: float, option: str) -> Physics:
    try:
        return physics(kind, value)
    except UserError as e:
        raise UserError(str(e).replace(OPTION[kind], option, 1)) from None


def _targets(args, saved) -> tuple[list[Physics | None], bool]:
    """(physics values to evaluate, whether it is a sweep) from the mutually exclusive options."""
    if args.sweep_friction is not None:
        return parse_values(args.sweep_friction, "friction"), True
    if args.sweep_mass is not None:
        return parse_values(args.sweep_mass, "mass_scale"), True
    if args.friction is not None:
        return [physics("friction", args.friction)], False
    if args.mass is not None:
        return [physics("mass_scale", args.mass)], False
    if args.phase is not None:
        return [phase_physics(saved.cfg, saved.seed, args.phase)], False
    kind = schedule_kind(saved.cfg["env"]["id"])
    # Default: the physics the policy was training on when the checkpoint was taken.
    return [Physics(kind, saved.physics_value) if kind and saved.physics_value else None], False


def _video_path(base: Path, target: Physics | None, sweep: bool) -> Path:
    if not sweep or target is None:
        return base
    return base.with_name(f"{base.stem}-{target.name}{target.value:g}{base.suffix}")


def main(args) -> int:
    if args.episodes < 1:
        raise UserError(f"--episodes must be >= 1, got {args.episodes}")
    if args.seed < 0:
        raise UserError(f"--seed must be >= 0, got {args.seed}")
    if args.max_episode_steps is not None and args.max_episode_steps < 1:
        raise UserError(f"--max-episode-steps must be >= 1, got {args.max_episode_steps}")
    video_size = check_frame_size(args.video_size) if (args.video or args.tensorboard) else None
    if args.video is not None and Path(args.video).suffix.lower() != ".mp4":
        raise UserError(f"--video must name an .mp4 file, got {args.video}")
    if args.video is not None and not Path(args.video).parent.is_dir():
        raise UserError(f"--video folder does not exist: {Path(args.video).parent}")
    if args.plot is not None:
        if args.sweep_friction is None and args.sweep_mass is None:
            raise UserError("--plot goes with --sweep-friction or --sweep-mass")
        if Path(args.plot).suffix.lower() != ".png":
            raise UserError(f"--plot must name a .png file, got {args.plot}")
    sweep = args.sweep_friction is not None or args.sweep_mass is not None
    if args.tensorboard or (sweep and args.plot is None):  # it writes into the run directory: own it meanwhile
        command = shlex.join(["rl-plasticity", *(getattr(args, "argv", None) or ["evaluate"])])
        with hold(locate(args.path)[1], command=command):
            return _evaluate(args, video_size)
    return _evaluate(args, video_size)


def _evaluate(args, video_size: int | None) -> int:
    saved = load_policy(args.path)
    targets, sweep = _targets(args, saved)
    print(f"checkpoint {saved.checkpoint} (step {saved.step}, seed {saved.seed}); "
          f"{args.episodes} episode(s), {'deterministic' if args.deterministic else 'sampled'} actions, "
          f"eval seed {args.seed}")
    rows = []
    for target in targets:
        result = run_episodes(saved.policy, saved.cfg, target, args.episodes, args.seed,
                              deterministic=args.deterministic, video_size=video_size,
                              max_episode_steps=args.max_episode_steps)
        rows.append(result)
        if args.video is not None:
            path = write_mp4(_video_path(Path(args.video), target, sweep), result.frames, result.fps)
            print(f"video: {path} ({len(result.frames)} frames, first episode, return {result.returns[0]:.1f})")
    print(format_table(rows))
    if sweep:
        _write_sweep(args, saved, rows)
    if args.tensorboard:
        _log_tensorboard(saved, rows)
    return 0


def _write_sweep(args, saved, rows: list[Evaluation]) -> None:
    name = rows[0].physics.name
    plot = Path(args.plot) if args.plot else saved.run_dir / "eval" / f"sweep-{name}-step{saved.step}.png"
    plot.parent.mkdir(parents=True, exist_ok=True)
    title = f"{saved.run_dir.name} step {saved.step}: {len(rows[0].returns)} episodes per value"
    atomic_write(plot, sweep_plot(rows, title))
    atomic_write(plot.with_suffix(".csv"), sweep_csv(rows))
    print(f"plot: {plot}\ntable: {plot.with_suffix('.csv')}")


def _log_tensorboard(saved, rows: list[Evaluation]) -> None:
    with TBLogger(saved.run_dir / "tb") as log:
        for r in rows:
            where = "" if len(rows) == 1 or r.physics is None else f"/{r.physics.label().replace(' ', '_')}"
            log.scalar(f"eval{where}/return_mean", r.return_mean, saved.step)
            log.scalar(f"eval{where}/length_mean", r.length_mean, saved.step)
            if not math.isnan(r.return_se):
                log.scalar(f"eval{where}/return_se", r.return_se, saved.step)
            if r.physics is not None:
                log.scalar(f"eval{where}/{r.physics.name}", r.physics.value, saved.step)
            log.video(f"eval{where}/video", r.frames, saved.step, fps=r.fps)
    print(f"tensorboard: eval/ tags at step {saved.step} in {saved.run_dir / 'tb'}")
