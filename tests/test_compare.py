"""Comparison plots: the binned table equals the numbers in the event files; runs are grouped by learner;
physics changes are found; --stat picks mean +- SE, IQM or mean with a bootstrap CI and every output names it;
bad input names what exists."""

import csv
import math
import statistics
from pathlib import Path

import matplotlib
import matplotlib.image
import pytest
from sweeps import LEARNERS, finished_local_sweep

from rl_plasticity.cli import main as cli_main
from rl_plasticity.compare.command import bin_index, find_run_dirs, load_seed_runs, physics_changes
from rl_plasticity.compare.plot import legend_columns, line_style
from rl_plasticity.run.rundir import write_run_info
from rl_plasticity.run.tblog import TBLogger, read_scalars


@pytest.fixture(scope="session")
def local_sweep(tmp_path_factory):
    return finished_local_sweep(tmp_path_factory)[0]


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def check_png(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = matplotlib.image.imread(path).shape
    assert width > 500 and height > 300


def test_compare_sweep_matches_the_event_files(local_sweep, tmp_path, capsys):
    fig = tmp_path / "fig.png"
    assert cli_main(["compare", str(local_sweep), "--bin", "500", "--out", str(fig)]) == 0
    check_png(fig)
    rows = read_csv(tmp_path / "fig.csv")
    assert list(rows[0]) == ["metric", "learner", "bin_start", "bin_end", "mean", "se", "n_runs"]
    # Recompute independently: each seed logs its binned error at steps 500 and 1000.
    expected = {}
    for learner in LEARNERS:
        per_step = {}
        for seed in (0, 1):
            for step, value in read_scalars(local_sweep / learner / f"seed_{seed}" / "tb" / f"seed_{seed}")[
                    "charts/binned_error"]:
                per_step.setdefault(step, []).append(value)
        for step, values in per_step.items():
            expected[(learner, step)] = (statistics.mean(values), statistics.stdev(values) / math.sqrt(2))
    assert len(rows) == len(expected) == 4
    for row in rows:
        assert row["metric"] == "charts/binned_error" and row["n_runs"] == "2"
        assert int(row["bin_end"]) - int(row["bin_start"]) == 500
        mean, se = expected[(row["learner"], int(row["bin_end"]))]
        assert float(row["mean"]) == pytest.approx(mean, rel=1e-12)
        assert float(row["se"]) == pytest.approx(se, rel=1e-9)
    assert [r["learner"] for r in rows] == ["bp", "bp", "l2", "l2"]  # the sweep's own order
    assert "charts/binned_error" in capsys.readouterr().out


def test_several_metrics_and_globs_make_one_panel_each(local_sweep, tmp_path):
    fig = tmp_path / "metrics.png"
    assert cli_main(["compare", str(local_sweep), "--out", str(fig), "--metric", "charts/binned_error",
                     "--metric", "plasticity/net/*/dormant_fraction", "--metric", "plasticity/net/layer0/stable_rank",
                     "--metric", "plasticity/net/layer*/mean_abs_weight"]) == 0
    check_png(fig)
    metrics = list(dict.fromkeys(r["metric"] for r in read_csv(tmp_path / "metrics.csv")))
    assert metrics == ["charts/binned_error", "plasticity/net/layer0/dormant_fraction",
                       "plasticity/net/layer0/stable_rank", "plasticity/net/layer0/mean_abs_weight",
                       "plasticity/net/layer1/mean_abs_weight"]


def fake_run(run_dir: Path, command_config: str, problem: str, logs: dict) -> None:
    """A run directory made by hand: config, run.json naming its config, and event files {subdir: {tag: points}}."""
    run_dir.mkdir(parents=True)
    write_run_info(run_dir, {"problem": problem}, [0], extra={"command": ["rl-plasticity", "train", command_config]})
    for sub, tags in logs.items():
        with TBLogger(run_dir / "tb" / sub) as log:
            for tag, points in tags.items():
                for step, value in points:
                    log.scalar(tag, value, step)


def test_batched_runs_count_each_seed_and_group_by_config_name(tmp_path):
    # A regression run batching two seeds (tb/seed_k + tb/mean) and a second run of the same config.
    fake_run(tmp_path / "a", "configs/regression/cbp.yaml", "regression",
             {"seed_0": {"charts/binned_error": [(10, 1.0), (20, 3.0)]},
              "seed_1": {"charts/binned_error": [(10, 2.0), (20, 5.0)]},
              "mean": {"charts/binned_error": [(10, 99.0), (20, 99.0)]}})
    fake_run(tmp_path / "b", "/x/cbp.yaml", "regression", {"seed_7": {"charts/binned_error": [(10, 3.0)]}})
    runs = load_seed_runs(find_run_dirs([str(tmp_path)]))
    assert sorted(r.name for r in runs) == ["cbp/a/seed_0", "cbp/a/seed_1", "cbp/b/seed_7"]
    fig = tmp_path / "fig.png"
    assert cli_main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--bin", "10", "--out", str(fig)]) == 0
    rows = read_csv(tmp_path / "fig.csv")
    assert [(r["bin_end"], float(r["mean"]), r["n_runs"]) for r in rows] == [("10", 2.0, "3"), ("20", 4.0, "2")]
    assert float(rows[0]["se"]) == pytest.approx(1 / math.sqrt(3))


def test_runs_of_one_config_with_different_overrides_are_different_learners(tmp_path):
    for name, extra in (("k3", []), ("k1", ["--set", "weight_clipping.kappa=1"]),
                        ("k2", ["--seeds", "2", "--set=weight_clipping.kappa=2", "--set", "log.every=5"]),
                        ("k2_lr", ["--set=weight_clipping.kappa=2", "--set", "optimizer.lr=0.1"]),
                        ("lr_k2", ["--set=optimizer.lr=0.1", "--set", "weight_clipping.kappa=2"])):
        run_dir = tmp_path / name
        run_dir.mkdir()
        write_run_info(run_dir, {"problem": "regression"}, [0],
                       extra={"command": ["rl-plasticity", "train", "configs/regression/weight_clipping.yaml", *extra]})
        with TBLogger(run_dir / "tb" / "seed_0") as log:
            log.scalar("charts/binned_error", 1.0, 10)
    learners = {r.learner for r in load_seed_runs(find_run_dirs([str(tmp_path)]))}
    # Logging options do not make another learner; the order of the overrides does not matter.
    assert learners == {"weight_clipping", "weight_clipping weight_clipping.kappa=1",
                        "weight_clipping weight_clipping.kappa=2",
                        "weight_clipping optimizer.lr=0.1 weight_clipping.kappa=2"}


def test_ppo_runs_average_episodes_per_run_and_mark_friction_changes(tmp_path):
    # Episodes end at uneven steps; a run's episodes in one bin count once, as their mean.
    friction = [(0, 1.0), (100, 1.0), (200, 0.1), (300, 0.1)]
    fake_run(tmp_path / "std" / "seed_0", "c/std.yaml", "ppo",
             {".": {"charts/episodic_return": [(50, 1.0), (90, 3.0), (150, 10.0)], "charts/friction": friction}})
    fake_run(tmp_path / "std" / "seed_1", "c/std.yaml", "ppo",
             {".": {"charts/episodic_return": [(60, 4.0), (140, 20.0)], "charts/friction": friction}})
    fake_run(tmp_path / "cbp" / "seed_0", "c/cbp.yaml", "ppo",
             {".": {"charts/episodic_return": [(100, 5.0), (101, 6.0)], "charts/friction": friction}})
    runs = load_seed_runs(find_run_dirs([str(tmp_path)]))
    assert physics_changes(runs) == {"friction": [200]}
    fig = tmp_path / "ppo.png"
    assert cli_main(["compare", str(tmp_path), "--bin", "100", "--out", str(fig)]) == 0  # default: episodic return
    check_png(fig)
    got = {(r["learner"], r["bin_end"]): (float(r["mean"]), r["n_runs"]) for r in read_csv(tmp_path / "ppo.csv")}
    assert got == {("cbp", "100"): (5.0, "1"), ("cbp", "200"): (6.0, "1"),
                   ("std", "100"): (3.0, "2"), ("std", "200"): (15.0, "2")}


def test_bins_hold_the_steps_up_to_their_end():
    import numpy as np

    assert bin_index(np.array([0, 1, 500, 501, 1000]), 500).tolist() == [0, 0, 0, 1, 1]


@pytest.mark.parametrize("make, argv, words", [
    (lambda p: None, [], ["no runs found"]),
    (lambda p: fake_run(p / "r", "c/bp.yaml", "regression", {"seed_0": {"charts/binned_error": [(1, 1.0)]}}),
     ["--metric", "charts/episodic_return"], ["no run has metric 'charts/episodic_return'", "charts/binned_error"]),
    (lambda p: fake_run(p / "r", "c/bp.yaml", "regression", {"seed_0": {"charts/binned_error": [(1, 1.0)]}}),
     ["--metric", "losses/*"], ["'losses/*'", "tags found: charts/binned_error"]),
    (lambda p: fake_run(p / "r", "c/x.yaml", "mnist", {".": {"charts/task_accuracy": [(1, 1.0)]}}),
     [], ["no default metric", "mnist", "charts/task_accuracy"]),
    (lambda p: None, ["--bin", "0"], ["--bin"]),
])
def test_bad_compare_input_is_one_clear_error(tmp_path, capsys, make, argv, words):
    make(tmp_path)
    fig = tmp_path / "fig.png"
    assert cli_main(["compare", str(tmp_path), "--out", str(fig), *argv]) == 2
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and line.startswith("rl-plasticity: error:")
    for w in words:
        assert w in line
    assert not fig.exists() and not (tmp_path / "fig.csv").exists()


def test_metric_takes_several_tags_after_one_flag_and_repeated_flags():
    from rl_plasticity.cli import build_parser

    args = build_parser().parse_args(["compare", "sweep", "--metric", "a", "b/*", "--metric", "c", "--out", "f.png"])
    assert args.metric == ["a", "b/*", "c"] and args.paths == ["sweep"]


# One learner with 8 seeds (bin 10 holds the hand-checked IQM case) and one with a single seed.
EIGHT_SEEDS = [1.0, 2.0, 3.0, 4.0, 100.0, 5.0, 6.0, 7.0]


def stat_runs(root: Path) -> Path:
    fake_run(root / "cbp", "c/cbp.yaml", "regression",
             {f"seed_{k}": {"charts/binned_error": [(10, v), (20, v + k)]} for k, v in enumerate(EIGHT_SEEDS)})
    fake_run(root / "bp", "c/bp.yaml", "regression", {"seed_0": {"charts/binned_error": [(10, 3.0), (20, 4.0)]}})
    return root


def run_compare(tmp_path, *argv, name="fig.png"):
    fig = tmp_path / name
    assert cli_main(["compare", str(tmp_path / "runs"), "--bin", "10", "--out", str(fig), *argv]) == 0
    return fig, read_csv(fig.with_suffix(".csv"))


@pytest.mark.filterwarnings("error")  # one seed gives no interval, and no NaN warning either
def test_iqm_ci_on_event_files(tmp_path, capsys):
    stat_runs(tmp_path / "runs")
    fig, rows = run_compare(tmp_path, "--stat", "iqm-ci", "--bootstrap-samples", "200")
    check_png(fig)
    assert list(rows[0]) == ["metric", "learner", "bin_start", "bin_end", "iqm", "ci95_low", "ci95_high", "n_runs"]
    got = {(r["learner"], r["bin_end"]): r for r in rows}
    cbp10, cbp20 = got[("cbp", "10")], got[("cbp", "20")]
    assert float(cbp10["iqm"]) == 4.5 and cbp10["n_runs"] == "8"  # mean of 3, 4, 5, 6: the outlier is cut
    assert float(cbp20["iqm"]) == statistics.mean(sorted(v + k for k, v in enumerate(EIGHT_SEEDS))[2:6])
    for r in (cbp10, cbp20):
        assert float(r["ci95_low"]) <= float(r["iqm"]) <= float(r["ci95_high"])
        assert float(r["ci95_low"]) < float(r["ci95_high"])
    bp10 = got[("bp", "10")]
    assert float(bp10["iqm"]) == 3.0 and math.isnan(float(bp10["ci95_low"])) and math.isnan(float(bp10["ci95_high"]))
    out, err = capsys.readouterr()
    assert "last bin, IQM [95% bootstrap CI]:" in out
    assert f"4.5 [{float(cbp10['ci95_low']):.4g}, {float(cbp10['ci95_high']):.4g}]" not in out  # last bin is 20
    assert "  bp               4  (n=1" in out  # the value alone, no interval
    notes = [line for line in err.splitlines() if "one seed run" in line]
    assert notes == ["note: one seed run gives no 95% bootstrap CI: bp is shown without a band where n=1"]
    # Repeatable: the bootstrap's seed is fixed.
    _, again = run_compare(tmp_path, "--stat", "iqm-ci", "--bootstrap-samples", "200", name="again.png")
    assert again == rows


def test_mean_ci_brackets_the_mean(tmp_path):
    stat_runs(tmp_path / "runs")
    _, rows = run_compare(tmp_path, "--stat", "mean-ci", "--bootstrap-samples", "200")
    assert list(rows[0])[4:] == ["mean", "ci95_low", "ci95_high", "n_runs"]
    cbp10 = next(r for r in rows if r["learner"] == "cbp" and r["bin_end"] == "10")
    assert float(cbp10["mean"]) == statistics.mean(EIGHT_SEEDS)
    # The outlier makes the mean's interval far wider than the IQM's.
    assert float(cbp10["ci95_low"]) < statistics.mean(EIGHT_SEEDS) < float(cbp10["ci95_high"])
    assert float(cbp10["ci95_high"]) - float(cbp10["ci95_low"]) > 20


def test_mean_se_is_the_default_and_unchanged(tmp_path):
    stat_runs(tmp_path / "runs")
    run_compare(tmp_path, name="default.png")
    run_compare(tmp_path, "--stat", "mean-se", name="explicit.png")
    assert (tmp_path / "default.csv").read_bytes() == (tmp_path / "explicit.csv").read_bytes()
    rows = read_csv(tmp_path / "default.csv")
    cbp10 = next(r for r in rows if r["learner"] == "cbp" and r["bin_end"] == "10")
    assert float(cbp10["mean"]) == statistics.mean(EIGHT_SEEDS)
    assert float(cbp10["se"]) == pytest.approx(statistics.stdev(EIGHT_SEEDS) / math.sqrt(8), rel=1e-12)


@pytest.mark.parametrize("stat, words", [
    ("mean-se", ["line: mean, band: +-1 standard error", "mean +- 1 standard error over seeds"]),
    ("iqm-ci", ["line: IQM, band: 95% bootstrap CI", "interquartile mean (middle 50% of seeds)",
                "95% percentile-bootstrap CI (200 resamples, seed 0)"]),
    ("mean-ci", ["line: mean, band: 95% bootstrap CI", "mean over seeds; band: 95% percentile-bootstrap CI"]),
])
def test_figure_names_its_statistic(tmp_path, stat, words):
    stat_runs(tmp_path / "runs")
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # keep the figure's text as text
        fig, _ = run_compare(tmp_path, "--stat", stat, "--bootstrap-samples", "200", name="fig.svg")
    svg = fig.read_text()
    for w in words:
        assert w in svg


@pytest.mark.parametrize("argv, words", [
    (["--stat", "median"], ["--stat", "invalid choice: 'median'", "mean-se", "iqm-ci", "mean-ci"]),
    (["--stat", "iqm-ci", "--bootstrap-samples", "5"], ["--bootstrap-samples", "at least 100"]),
    (["--bootstrap-samples", "many"], ["--bootstrap-samples", "whole number"]),
])
def test_bad_stat_options_are_argparse_errors(tmp_path, capsys, argv, words):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["compare", str(tmp_path), "--out", str(tmp_path / "fig.png"), *argv])
    assert exit_info.value.code == 2
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and line.startswith("rl-plasticity: error:")
    for w in words:
        assert w in line
    assert not (tmp_path / "fig.png").exists()


@pytest.mark.parametrize("n", [3, 10, 11, 20, 45])
def test_every_learner_gets_its_own_colour_and_line_style(n):
    assert len({line_style(i, n) for i in range(n)}) == n


def test_legend_columns_shrink_to_fit_long_learner_names():
    assert legend_columns(["bp (n=30)", "cbp (n=30)", "l2 (n=30)", "snp (n=30)", "redo (n=30)"]) == 4
    assert legend_columns(["bp (n=3)", "cbp (n=3)"]) == 2
    long = [f"weight_clipping weight_clipping.kappa={k} optimizer.lr=0.001 (n=30)" for k in range(5)]
    assert legend_columns(long) == 1
