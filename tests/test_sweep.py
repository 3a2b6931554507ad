"""Sweeps: every config x seed as its own run, on local processes and on a real local Ray cluster;
restarting after a kill; failed runs; bad input."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sweeps import CONFIGS, LEARNERS, TINY, cli, finished_local_sweep, sweep_argv

from rl_plasticity.cli import main as cli_main
from rl_plasticity.run.tblog import read_scalars
from rl_plasticity.sweep.command import parse_seeds

HOOKS = Path(__file__).resolve().parent / "hooks"


def check_finished_sweep(out, learners=LEARNERS, seeds=(0, 1), overrides=TINY):
    manifest = json.loads((out / "sweep.json").read_text())
    assert [c["learner"] for c in manifest["configs"]][:len(learners)] == list(learners)
    assert manifest["seeds"] == list(seeds) and manifest["overrides"] == overrides
    for learner in learners:
        for seed in seeds:
            run = out / learner / f"seed_{seed}"
            assert (run / "results.json").is_file() and not (run / "error.log").exists()
            assert json.loads((run / "run.json").read_text())["seeds"] == [seed]
            assert "charts/binned_error" in read_scalars(run / "tb" / f"seed_{seed}")


@pytest.fixture(scope="session")
def local_sweep(tmp_path_factory):
    return finished_local_sweep(tmp_path_factory)


def test_local_sweep_lays_out_one_run_per_learner_and_seed(local_sweep):
    out, r = local_sweep
    check_finished_sweep(out)
    assert "4 runs on the local backend" in r.stdout
    assert "done     bp/seed_1" in r.stderr
    summary = r.stdout.split("runs on the local backend")[1]
    assert "bp" in summary and "l2" in summary and "failed" in summary
    # TensorBoard: the layout run and the run names learner/seed_k come from the folders.
    layout = out / "layout"
    assert any("tfevents" in f.name for f in layout.iterdir())
    by_run = read_scalars(out, by_run=True)
    assert "bp/seed_0/tb/seed_0/charts/binned_error" in by_run
    assert "l2/seed_1/tb/seed_1/charts/binned_error" in by_run


def test_custom_scalars_layout_has_one_chart_per_metric(local_sweep):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.custom_scalar import layout_pb2, metadata

    acc = EventAccumulator(str(local_sweep[0] / "layout"))
    acc.Reload()
    tensor = acc.Tensors(metadata.CONFIG_SUMMARY_TAG)[0].tensor_proto
    layout = layout_pb2.Layout.FromString(tensor.string_val[0])
    charts = {c.title: list(c.multiline.tag) for cat in layout.category for c in cat.chart}
    assert charts["binned squared error"] == [r"^charts/binned_error$"]
    assert charts["dormant fraction"] == [r"^plasticity/.*/dormant_fraction$"]


def test_rerunning_a_finished_sweep_redoes_nothing(local_sweep):
    out, _ = local_sweep
    results = sorted(out.glob("*/seed_*/results.json"))
    before = {p: p.stat().st_mtime_ns for p in results}
    r = cli("sweep", "--resume", str(out))
    assert r.returncode == 0, r.stderr
    assert {p: p.stat().st_mtime_ns for p in results} == before
    assert "done     " not in r.stderr  # nothing ran
    # Each run's log holds exactly one attempt.
    for log in (out / ".sweep" / "logs").glob("*/*.log"):
        assert log.read_text().count("=== ") == 1


def test_ray_sweep_on_a_local_cluster_gives_the_same_runs_and_retries_crashes(tmp_path, local_sweep):
    pytest.importorskip("ray")
    # A network too big to allocate: the run crashes (exit 1, a traceback), which a retry might fix;
    # bad input such as a diverging step size is not retried.
    crash = tmp_path / "crash.yaml"
    crash.write_text((CONFIGS / "bp.yaml").read_text().replace("hidden: [5]", "hidden: [100000000000]"))
    out = tmp_path / "ray"
    argv = sweep_argv(out, "--backend", "ray", "--workers", "2", "--retries", "1")
    r = cli(*argv[:3], str(crash), *argv[3:])
    assert r.returncode == 1, r.stderr + r.stdout
    assert "6 runs on the ray backend" in r.stdout
    check_finished_sweep(out)
    for learner in LEARNERS:  # same config and seed: same numbers, whichever backend ran it
        for seed in (0, 1):
            ours = json.loads((out / learner / f"seed_{seed}" / "results.json").read_text())["bins"]
            theirs = json.loads((local_sweep[0] / learner / f"seed_{seed}" / "results.json").read_text())["bins"]
            assert ours == theirs
    for seed in (0, 1):
        assert f"FAILED   crash/seed_{seed}" in r.stderr
        error = (out / "crash" / f"seed_{seed}" / "error.log").read_text()
        assert "exit code 1" in error and "Traceback" in error
        assert (out / ".sweep" / "logs" / "crash" / f"seed_{seed}.log").read_text().count("=== ") == 2  # retried


def _wait_for(predicate, timeout=120.0):
    """Polls for a state the runs reach by themselves; the timeout only stops a test that hangs."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_sweep_restarts_without_redoing_finished_runs(tmp_path, local_sweep, sig):
    out = tmp_path / "killed"
    overrides = [*TINY, "examples=3000"]
    learners = ["bp", "l2", "linear"]
    argv = [sys.executable, "-m", "rl_plasticity.cli",
            *sweep_argv(out, "--workers", "1", learners=learners, seeds="0-0", overrides=overrides)]
    first, second = out / "bp" / "seed_0", out / "l2" / "seed_0"
    paused = tmp_path / "paused"
    # Runs start in order, one at a time. The second one pauses after its first checkpoint until it is
    # asked to stop (tests/hooks), so the kill always lands while it works and before the third starts.
    env = {**os.environ, "RL_PLASTICITY_NO_PROGRESS": "1", "PYTHONPATH": str(HOOKS),
           "RLP_TEST_PAUSE_AFTER_CHECKPOINT": str(second), "RLP_TEST_PAUSE_MARKER": str(paused)}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    _wait_for(paused.is_file)
    assert (first / "results.json").is_file() and any((second / "checkpoints").glob("ckpt-*.pt"))
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    if sig == signal.SIGTERM:
        assert proc.returncode == 143 and "stopped  l2/seed_0" in err
    else:
        assert proc.returncode == -signal.SIGKILL
    finished_at = (first / "results.json").stat().st_mtime_ns
    assert not (second / "results.json").exists()

    assert not (out / "linear").exists()
    r = cli(*argv[3:])  # the same command again; it waits for the stopping run's lock if it must
    assert r.returncode == 0, r.stderr
    check_finished_sweep(out, learners=learners, seeds=(0,), overrides=overrides)
    assert (first / "results.json").stat().st_mtime_ns == finished_at
    logs = out / ".sweep" / "logs"
    assert (logs / "bp" / "seed_0.log").read_text().count("=== ") == 1
    second_log = (logs / "l2" / "seed_0.log").read_text()
    assert second_log.count("=== ") == 2 and f"train --resume {second}" in second_log
    # The resumed run's numbers equal an uninterrupted run's: its first bins match the same seed's shorter run.
    resumed = json.loads((second / "results.json").read_text())["bins"]
    uninterrupted = json.loads((local_sweep[0] / "l2" / "seed_0" / "results.json").read_text())["bins"]
    assert len(resumed) == 6 and resumed[:2] == uninterrupted


def test_a_run_with_bad_input_fails_alone_with_its_error_saved(tmp_path):
    out = tmp_path / "bad"
    small = [*TINY, "examples=500"]
    assert cli_main(sweep_argv(out, "--workers", "2", seeds="0-0", overrides=small)) == 0
    # Break one learner's stored config and drop its run: only that run fails when the sweep continues.
    (out / "configs" / "l2.yaml").write_text((out / "configs" / "l2.yaml").read_text() + "bogus_key: 1\n")
    shutil.rmtree(out / "l2" / "seed_0")
    r = cli("sweep", "--resume", str(out), "--retries", "2")
    assert r.returncode == 1
    assert "FAILED   l2/seed_0" in r.stderr and "bogus_key" in r.stdout
    assert (out / "bp" / "seed_0" / "results.json").is_file()
    error = (out / "l2" / "seed_0" / "error.log").read_text()
    assert "exit code 2" in error and "unknown config key" in error
    assert (out / ".sweep" / "logs" / "l2" / "seed_0.log").read_text().count("=== ") == 2  # first run + one try: bad input is not retried


@pytest.mark.parametrize("text, seeds", [("0-3", [0, 1, 2, 3]), ("3", [0, 1, 2]), ("0,5,2", [0, 2, 5]),
                                         ("0-1,7-8", [0, 1, 7, 8]), ("4-4", [4])])
def test_parse_seeds(text, seeds):
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize("argv, words", [
    (["--seeds", "3-1"], ["backwards"]),
    (["--seeds", "a-b"], ["--seeds", "0-29"]),
    (["--seeds", "0-1", "--set", "examples=lots"], ["examples"]),
    (["--seeds", "0-1", "--address", "127.0.0.1:6379"], ["--backend ray"]),
    (["--seeds", "0-1", "--workers", "0"], ["--workers"]),
])
def test_bad_sweep_input_is_one_clear_error(tmp_path, capsys, argv, words):
    out = tmp_path / "sweep"
    assert cli_main(["sweep", str(CONFIGS / "bp.yaml"), "--out", str(out), *argv]) == 2
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and line.startswith("rl-plasticity: error:")
    for w in words:
        assert w in line


def test_sweep_refuses_same_named_configs_and_changed_overrides(tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    (other / "bp.yaml").write_text((CONFIGS / "bp.yaml").read_text())
    assert cli_main(["sweep", str(CONFIGS / "bp.yaml"), str(other / "bp.yaml"), "--seeds", "0-0"]) == 2
    assert "both named 'bp'" in capsys.readouterr().err
    out = tmp_path / "s"
    assert cli_main(sweep_argv(out, seeds="0-0", learners=["bp"], overrides=[*TINY, "examples=500"])) == 0
    assert cli_main(sweep_argv(out, seeds="0-0", learners=["bp"], overrides=TINY)) == 2
    assert "one set of overrides" in capsys.readouterr().err
    assert cli_main(["sweep", "--resume", str(tmp_path)]) == 2
    assert "not a sweep directory" in capsys.readouterr().err
