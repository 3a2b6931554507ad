"""Evaluating saved policies: repeatable episodes, the saved normaliser, mp4 and TensorBoard videos,
physics sweeps, phase values, evaluation during training, and clear errors for bad input.

Everything runs on tiny networks, short episodes and 96x96 frames.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
import yaml

from rl_plasticity.cli import main as cli_main
from rl_plasticity.errors import UserError
from rl_plasticity.evaluate.command import run_episodes
from rl_plasticity.evaluate.saved_policy import load_policy
from rl_plasticity.problems.mujoco_env import Physics, make_eval_env, phase_physics, physics
from rl_plasticity.run.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from rl_plasticity.run.tblog import read_scalars
from rl_plasticity.run.video import write_mp4

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs/quickstart/friction_ant_cbp.yaml")
# Physics switches every 100 steps; episodes end by 40 steps; checkpoints every 128 steps.
TINY = ["total_steps=256", "env.change_every=100", "env.max_episode_steps=40", "net.hidden=[16,16]",
        "ppo.rollout_steps=128", "ppo.minibatch_size=64", "ppo.epochs=1", "ppo.normalize_obs=true",
        "log.checkpoint_every=128", "log.metrics_every=256", "log.probe_size=32"]


def sets(items: list[str]) -> list[str]:
    return [x for item in items for x in ("--set", item)]


def evaluate(*args: str) -> int:
    return cli_main(["evaluate", *args])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eval") / "run"
    assert cli_main(["train", CONFIG, "--seed", "0", "--out", str(out), *sets(TINY)]) == 0
    return out


# --------------------------------------------------------------------------- loading


def test_evaluation_uses_the_saved_normaliser_and_never_updates_it(run_dir):
    saved = load_policy(run_dir)
    stored = load_checkpoint(latest_checkpoint(run_dir))["env"]["obs_norm"]
    stats = saved.policy.obs_norm.stats
    assert saved.step == 256 and saved.checkpoint == latest_checkpoint(run_dir)
    assert stats.count == stored["count"] > 200  # the statistics of training, not a fresh normaliser
    np.testing.assert_array_equal(stats.mean, stored["mean"].numpy())
    np.testing.assert_array_equal(stats.var, stored["var"].numpy())
    before = (stats.mean.copy(), stats.var.copy(), stats.count)
    run_episodes(saved.policy, saved.cfg, physics("friction", 0.5), episodes=2, seed=0, max_episode_steps=15)
    np.testing.assert_array_equal(stats.mean, before[0])
    np.testing.assert_array_equal(stats.var, before[1])
    assert stats.count == before[2]


def test_same_seed_gives_the_same_returns(run_dir):
    saved = load_policy(run_dir / "checkpoints" / "ckpt-256.pt")
    target = physics("friction", 0.2)
    first = run_episodes(saved.policy, saved.cfg, target, episodes=3, seed=7, max_episode_steps=20)
    again = run_episodes(load_policy(run_dir).policy, saved.cfg, target, episodes=3, seed=7, max_episode_steps=20)
    other = run_episodes(saved.policy, saved.cfg, target, episodes=3, seed=8, max_episode_steps=20)
    assert first.returns == again.returns and first.lengths == again.lengths
    assert first.returns != other.returns
    mean = run_episodes(saved.policy, saved.cfg, target, episodes=2, seed=7, deterministic=True, max_episode_steps=20)
    assert mean.returns != first.returns[:2]  # --deterministic really drops the noise


def test_checkpoints_from_before_eval_settings_existed_still_load(run_dir, tmp_path):
    sd = load_checkpoint(latest_checkpoint(run_dir))
    cfg = json.loads(sd["config"])
    cfg.pop("eval")
    sd["config"] = json.dumps(cfg, sort_keys=True)
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("tb", "eval"))
    raw = yaml.safe_load((copy / "config.yaml").read_text())
    raw.pop("eval")
    (copy / "config.yaml").write_text(yaml.safe_dump(raw))
    save_checkpoint(copy / "checkpoints" / "ckpt-999.pt", sd)
    assert load_policy(copy).step == 256


# --------------------------------------------------------------------------- physics


def test_phase_values_replay_the_runs_schedule(run_dir):
    import gymnasium as gym

    from rl_plasticity import envs  # noqa: F401 - registers the env
    from rl_plasticity.problems.mujoco_ppo import make_env
    from rl_plasticity.run.seeding import derive_seed

    saved = load_policy(run_dir)
    env, limit = make_env(saved.cfg)  # no time limit: it is ours to count, as in the runner
    assert isinstance(env, gym.Env)
    seen, length = {}, 0
    _, info = env.reset(seed=derive_seed(saved.seed, "env"))
    seen[info["phase"]] = info["friction"]
    rng = np.random.default_rng(0)
    for _ in range(saved.cfg["total_steps"]):
        _, _, terminated, truncated, info = env.step(rng.uniform(-1, 1, env.action_space.shape))
        length += 1
        if terminated or truncated or length >= limit:
            _, info = env.reset()
            length = 0
            seen[info["phase"]] = info["friction"]
    assert {0, 1, 2} <= set(seen)
    for phase, value in seen.items():
        assert phase_physics(saved.cfg, saved.seed, phase) == Physics("friction", value)


def test_eval_env_sets_either_kind_of_physics(run_dir):
    cfg = load_policy(run_dir).cfg
    env, _ = make_eval_env(cfg, Physics("friction", 0.3))
    env.reset(seed=0)
    assert np.all(env.unwrapped.model.geom_friction[:, 0] == 0.3)
    base_mass = env.unwrapped.model.body_mass.copy()
    env.close()
    env, _ = make_eval_env(cfg, Physics("mass_scale", 2.0))  # a friction run at another mass
    env.reset(seed=0)
    np.testing.assert_allclose(env.unwrapped.model.body_mass, 2.0 * base_mass)
    assert np.all(env.unwrapped.model.geom_friction[:, 0] == 1.0)  # the Ant's own friction
    env.close()


# --------------------------------------------------------------------------- video


def test_mp4_decodes_with_one_frame_per_step_headless(run_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    assert os.environ["MUJOCO_GL"] == "egl"
    saved = load_policy(run_dir)
    result = run_episodes(saved.policy, saved.cfg, physics("friction", 1.0), episodes=2, seed=0,
                          video_size=96, max_episode_steps=12)
    assert len(result.frames) == result.lengths[0] + 1  # after the reset, then after every step
    path = write_mp4(tmp_path / "ant.mp4", result.frames, result.fps)
    frames = imageio.mimread(path)
    assert len(frames) == len(result.frames) and frames[0].shape == (96, 96, 3)
    assert float(np.abs(frames[-1].astype(int) - frames[0].astype(int)).mean()) > 0.5  # the scene moves
    assert [p.name for p in tmp_path.iterdir()] == ["ant.mp4"]  # no temporary left behind


def test_cli_writes_video_and_tensorboard(run_dir, tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    video = tmp_path / "out.mp4"
    assert evaluate(str(run_dir), "--episodes", "2", "--friction", "0.5", "--video", str(video),
                    "--video-size", "96", "--max-episode-steps", "10", "--tensorboard", "--deterministic") == 0
    out = capsys.readouterr().out
    assert "friction 0.5" in out and "return (mean +- SE)" in out
    assert len(imageio.mimread(video)) == 11
    scalars = read_scalars(run_dir / "tb")
    assert scalars["eval/friction"] == [(256, 0.5)] and len(scalars["eval/return_mean"]) == 1
    tb_files = [d for d, _, files in os.walk(run_dir / "tb") if any("tfevents" in f for f in files)]
    images = set()
    for d in tb_files:
        acc = EventAccumulator(d, size_guidance={"images": 0})
        acc.Reload()
        images |= set(acc.Tags()["images"])
    assert "eval/video" in images


def test_sweep_writes_table_plot_and_csv(run_dir, tmp_path, capsys):
    plot = tmp_path / "sweep.png"
    assert evaluate(str(run_dir), "--sweep-friction", "0.05, 0.5,2", "--episodes", "2",
                    "--max-episode-steps", "8", "--plot", str(plot)) == 0
    out = capsys.readouterr().out
    assert all(f"friction {v}" in out for v in ("0.05", "0.5", "2"))
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader(plot.with_suffix(".csv").open()))
    assert [float(r["friction"]) for r in rows] == [0.05, 0.5, 2.0]
    assert all(int(r["episodes"]) == 2 and np.isfinite(float(r["return_mean"])) for r in rows)


# --------------------------------------------------------------------------- during training


def test_phase_end_evaluation_logs_and_leaves_training_unchanged(run_dir, tmp_path):
    out = tmp_path / "run"
    extra = ["eval.at_phase_end=true", "eval.episodes=1", "eval.video=true", "eval.video_size=96"]
    assert cli_main(["train", CONFIG, "--seed", "0", "--out", str(out), *sets(TINY + extra)]) == 0
    scalars = read_scalars(out / "tb")
    # Phases 0 and 1 end within the run (switches near steps 100 and 200); phase 2 ends with the run.
    assert [p for _, p in scalars["eval/phase"]] == [0.0, 1.0, 2.0]
    assert len(scalars["eval/return_mean"]) == 3 and len(scalars["eval/friction"]) == 3
    ours, reference = (load_checkpoint(list_checkpoints(d)[-1][1]) for d in (out, run_dir))
    params = [sd["agent"]["learner"]["params"] for sd in (ours, reference)]
    assert len(params[0]) == len(params[1]) and all(torch.equal(a, b) for a, b in zip(*params))
    assert ours["returns"] == reference["returns"]


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("args, words", [
    (["--friction", "0"], ["--friction", "positive"]),
    (["--friction", "-1"], ["--friction", "positive"]),
    (["--friction", "nan"], ["--friction", "positive"]),
    (["--friction", "50"], ["--friction 50", "outside", "[0.001, 10]"]),
    (["--mass", "100"], ["--mass 100", "outside", "[0.05, 20]"]),
    (["--sweep-friction", "0.1,abc"], ["--sweep-friction", "'abc'"]),
    (["--sweep-mass", "1,0"], ["--sweep-mass", "positive"]),
    (["--episodes", "0"], ["--episodes"]),
    (["--video", "out.avi"], ["--video", ".mp4"]),
    (["--video", "out.mp4", "--video-size", "100"], ["multiple of 16"]),
    (["--phase", "-1"], ["--phase", ">= 0"]),
    (["--friction", "1", "--plot", "out.png"], ["--plot", "--sweep-friction"]),
    (["--sweep-mass", "1,2", "--plot", "out.jpg"], ["--plot", ".png"]),
])
def test_bad_options_are_user_errors(run_dir, tmp_path, capsys, args, words):
    args = [a.replace("out.", str(tmp_path / "out.")) for a in args]
    assert evaluate(str(run_dir), *args, "--max-episode-steps", "2") == 2
    err = capsys.readouterr().err
    assert err.startswith("rl-plasticity: error:") and err.count("\n") == 1
    assert all(w in err for w in words), err
    assert not any(tmp_path.iterdir())


def test_missing_paths_and_foreign_checkpoints_are_user_errors(run_dir, tmp_path, capsys):
    assert evaluate(str(tmp_path / "nope")) == 2
    assert "no such run directory or checkpoint" in capsys.readouterr().err

    lone = tmp_path / "lone.pt"
    shutil.copy(latest_checkpoint(run_dir), lone)
    assert evaluate(str(lone)) == 2
    assert "cannot find the run's config.yaml" in capsys.readouterr().err

    other = tmp_path / "other"
    (other / "checkpoints").mkdir(parents=True)
    raw = yaml.safe_load((run_dir / "config.yaml").read_text())
    raw["net"]["hidden"] = [8, 8]
    (other / "config.yaml").write_text(yaml.safe_dump(raw))
    assert evaluate(str(other)) == 2
    assert "has no checkpoints yet" in capsys.readouterr().err
    shutil.copy(latest_checkpoint(run_dir), other / "checkpoints" / "ckpt-256.pt")
    assert evaluate(str(other)) == 2
    err = capsys.readouterr().err
    assert "does not match" in err and "net.hidden" in err


def test_direct_physics_checks():
    with pytest.raises(UserError, match="outside the supported range"):
        physics("mass_scale", 0.01)
    with pytest.raises(UserError, match="physics kind"):
        physics("gravity", 1.0)
