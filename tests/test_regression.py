"""Slowly-changing regression through the learner core: batching, the CLI, resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from rl_plasticity.config import read_yaml
from rl_plasticity.problems import resolve_config
from rl_plasticity.problems.regression import RegressionRun
from rl_plasticity.problems.regression_stream import RegressionStream
from rl_plasticity.run.tblog import read_scalars

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "regression"
SMALL = ["stream.change_every=500", "bin_size=500", "examples=1500", "log.metrics_every=500",
         "log.probe_size=100", "log.checkpoint_every=500"]


def config(name, *overrides):
    cfg, _ = resolve_config(read_yaml(CONFIGS / f"{name}.yaml"), [*SMALL, *overrides])
    return cfg


def test_stream_targets_follow_the_ltu_definition():
    stream = RegressionStream([torch.Generator().manual_seed(3)], change_every=50)
    X, Y = stream.next_chunk()
    assert X.shape == (1, 50, 20) and Y.shape == (1, 50)
    assert torch.all(X[0, :, :15] == X[0, 0, :15])  # slow bits fixed within a phase
    x = X[0, 7]
    w, b, v, c = stream.w[0], stream.b[0], stream.v[0], stream.c[0]
    threshold = 0.7 * 21 - (20 - w.sum(1) + b) / 2
    assert Y[0, 7] == ((w @ x + b > threshold).float() @ v + c)
    later = [stream.next_chunk()[0] for _ in range(3)]
    assert any(not torch.equal(X2[0, 0, :15], X[0, 0, :15]) for X2 in later)  # slow bits re-drawn
    assert 0.3 < later[0][0, :, 15:].mean().item() < 0.7  # fast bits are random


def test_flip_one_changes_exactly_one_slow_bit():
    stream = RegressionStream([torch.Generator().manual_seed(0)], change_every=10, flip_one=True)
    a = stream.next_chunk()[0][0, 0, :15]
    b = stream.next_chunk()[0][0, 0, :15]
    assert (a != b).sum().item() == 1


def test_a_batched_seed_equals_that_seed_run_alone():
    cfg = config("cbp", "cbp.replacement_rate=0.01", "cbp.maturity_threshold=20", "snp.enabled=true",
                 "snp.noise_std=1e-4")
    together, alone = RegressionRun(cfg, [0, 1, 2]), RegressionRun(cfg, [1])
    for _ in range(3):
        together.train_chunk()
        alone.train_chunk()
    assert together.learner.methods[0].replacements[0][1] > 0  # replacements did happen
    assert [b[1] for b in together.bins] == [b[0] for b in alone.bins]
    for p, q in zip(together.net.parameters(), alone.net.parameters()):
        assert torch.equal(p[1], q[0])


def test_bp_error_is_reported_per_bin():
    run = RegressionRun(config("bp"), [0, 1])
    for _ in range(3):
        run.train_chunk()
    assert len(run.bins) == 3 and all(len(b) == 2 for b in run.bins)
    assert all(0 < e < 10 for b in run.bins for e in b)


def cli(*args, **kw):
    env = {**os.environ, "RL_PLASTICITY_NO_PROGRESS": "1"}
    return subprocess.run([sys.executable, "-m", "rl_plasticity.cli", *args], capture_output=True, text=True,
                          env=env, **kw)


def test_train_cli_writes_run_dir_results_and_tensorboard(tmp_path):
    out = tmp_path / "run"
    sets = [x for s in SMALL for x in ("--set", s)]
    r = cli("train", str(CONFIGS / "cbp.yaml"), "--seeds", "2", "--out", str(out), *sets)
    assert r.returncode == 0, r.stderr
    assert (out / "config.yaml").is_file()
    info = json.loads((out / "run.json").read_text())
    assert info["seeds"] == [0, 1] and "torch" in json.dumps(info)
    results = json.loads((out / "results.json").read_text())
    assert len(results["bins"]) == 3
    seed1 = read_scalars(out / "tb" / "seed_1")["charts/binned_error"]
    assert [v for _, v in seed1] == [float(torch.tensor(b[1], dtype=torch.float32)) for b in results["bins"]]
    mean = read_scalars(out / "tb" / "mean")
    assert "plasticity/net/layer0/dormant_fraction" in mean and "plasticity/net/layer0/cbp_replacements" in mean
    # an existing run directory is never overwritten without --resume or --force
    again = cli("train", str(CONFIGS / "cbp.yaml"), "--out", str(out), *sets)
    assert again.returncode == 2 and "--force" in again.stderr
    assert json.loads((out / "results.json").read_text()) == results


def test_one_seed_results_are_strict_json_and_the_summary_says_n_1(tmp_path):
    """One seed has no standard error: results.json holds null (not NaN, which strict readers refuse)."""
    sets = [x for s in SMALL for x in ("--set", s)]
    r = cli("train", str(CONFIGS / "bp.yaml"), "--seed", "3", "--out", str(tmp_path / "run"), *sets)
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "run" / "results.json").read_text()

    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    results = json.loads(text, parse_constant=refuse)
    assert results["early"]["se"] is None and results["early"]["n"] == 1
    assert "(n=1)" in r.stdout and "nan" not in r.stdout.lower()


def test_resume_after_sigterm_equals_an_uninterrupted_run(tmp_path):
    sets = ["--set", "examples=40000", "--set", "log.checkpoint_every=10000", "--set", "net.hidden=[50]"]
    straight = tmp_path / "straight"
    assert cli("train", str(CONFIGS / "cbp.yaml"), "--out", str(straight), *sets).returncode == 0
    stopped = tmp_path / "stopped"
    env = {**os.environ, "RL_PLASTICITY_NO_PROGRESS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "rl_plasticity.cli", "train", str(CONFIGS / "cbp.yaml"),
                             "--out", str(stopped), *sets], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    while not list((stopped / "checkpoints").glob("ckpt-*.pt")) if (stopped / "checkpoints").exists() else True:
        assert proc.poll() is None, proc.communicate()[1]  # a child that died early fails the test, never hangs it
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err  # stopped by SIGTERM, checkpoint saved
    assert "--resume" in out and not (stopped / "results.json").exists()  # it really stopped early
    r = cli("train", "--resume", str(stopped))
    assert r.returncode == 0, r.stderr
    a = json.loads((straight / "results.json").read_text())
    b = json.loads((stopped / "results.json").read_text())
    assert a["bins"] == b["bins"]
    assert [v for _, v in read_scalars(stopped / "tb" / "seed_0")["charts/binned_error"]] == \
        [v for _, v in read_scalars(straight / "tb" / "seed_0")["charts/binned_error"]]
