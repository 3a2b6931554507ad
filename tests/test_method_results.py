"""scripts/method_results.py: the README's result tables, results.csv and summary.png come from the run
directories' own numbers; unfinished runs are listed with the checkpoint they reached."""

import csv
import importlib.util
import json
from pathlib import Path

import pytest

from rl_plasticity.run.checkpoint import save_checkpoint_in
from rl_plasticity.run.tblog import TBLogger

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "method_results.py"
spec = importlib.util.spec_from_file_location("method_results", SCRIPT)
method_results = importlib.util.module_from_spec(spec)
spec.loader.exec_module(method_results)


def fake_run(root: Path, name: str, results: dict | None, tags: dict, checkpoint: int | None = None) -> None:
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("problem: x\n")
    if results is not None:
        (run / "results.json").write_text(json.dumps(results))
    if checkpoint is not None:
        save_checkpoint_in(run, checkpoint, {"step": checkpoint})
    if not tags:
        return  # a run of one seed logs no mean over seeds
    with TBLogger(run / "tb" / "mean") as log:
        for tag, points in tags.items():
            for step, value in points:
                log.scalar(tag, value, step)


def numbers(early, late, early_key="early", late_key="late", **spans):
    spans = spans or ({"examples": 1_000_000, "bins": [[0.5] * 3] * 50, "late_window": 200_000} if early_key == "early" else
                      {"tasks": 80, "window": 10})
    return {"seeds": 3, early_key: {"mean": early, "se": 0.01, "n": 3}, late_key: {"mean": late, "se": 0.02, "n": 3},
            **spans}


@pytest.fixture
def runs(tmp_path):
    reg, pm = tmp_path / "reg", tmp_path / "pm"
    layer0 = "plasticity/net/layer0/"
    fake_run(reg, "bp", numbers(0.7, 1.2), {layer0 + "dormant_fraction": [(10, 0.5), (20, 0.9)]})
    fake_run(reg, "idbd", numbers(0.6, 0.9), {layer0 + "dormant_fraction": [(20, 0.4)],
                                             layer0 + "step_size_q50": [(10, 0.01), (20, 0.002)],
                                             layer0 + "step_size_collapsed_fraction": [(20, 0.25)],
                                             "plasticity/net/layer1/step_size_q50": [(20, 0.0001234)],
                                             "plasticity/net/layer1/step_size_collapsed_fraction": [(20, 0.5)]})
    fake_run(reg, "upgd", None, {}, checkpoint=200_000)
    fake_run(pm, "cpu_bp", numbers(0.66, 0.43, "first", "last"), {})
    one_seed = {"seeds": 1, "first": {"mean": 0.5, "se": None, "n": 1}, "last": {"mean": 0.25, "se": None, "n": 1},
                "tasks": 80, "window": 10}
    fake_run(pm, "cpu_short", numbers(0.7, 0.6, "first", "last", tasks=20, window=5), {})
    fake_run(pm, "cpu_cbp", one_seed, {})
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- results:regression -->\nold\n<!-- /results:regression -->\nmiddle\n"
                      "<!-- results:pmnist --><!-- /results:pmnist -->\n"
                      "<!-- results:step_sizes -->\nold\n<!-- /results:step_sizes -->\nend\n")
    docs = tmp_path / "docs"
    docs.mkdir()
    assert method_results.main(["--regression", str(reg), "--pmnist", str(pm), "--readme", str(readme),
                                "--docs", str(docs)]) == 0
    return readme.read_text(), docs


def test_tables_hold_each_runs_numbers_and_the_rest_of_the_readme_is_kept(runs):
    text, _ = runs
    assert text.startswith("intro\n<!-- results:regression -->\n| learner |") and "\nmiddle\n" in text
    assert text.endswith("<!-- /results:step_sizes -->\nend\n") and "old" not in text
    assert "| `bp` | 0.700 +- 0.010 | 1.200 +- 0.020 | 0.90 |" in text  # the last dormant fraction logged
    assert "| `idbd` | 0.600 +- 0.010 | 0.900 +- 0.020 | 0.40 |" in text
    assert "Not finished yet: `upgd` (at 200,000)." in text
    assert "| `cpu_bp` | 0.660 +- 0.010 | 0.430 +- 0.020 | - |" in text
    assert "| `cpu_cbp` | 0.500 (n=1) | 0.250 (n=1) | - |" in text
    # Headers name what the runs' own results.json say they measured; a run that measured other spans says so.
    assert "| learner | binned squared error, first 20k | binned squared error, last 200k of 1M |" in text
    assert "| learner | online accuracy, tasks 1-10 | online accuracy, tasks 71-80 |" in text
    assert "| `cpu_short` (tasks 1-5; tasks 16-20) | 0.700 +- 0.010 | 0.600 +- 0.020 | - |" in text
    # The step-size table joins the two streams by learner and shows the last median and collapsed fraction.
    assert "| `idbd` | 0.600 +- 0.010 | 0.900 +- 0.020 | 0.002 / 0.00012; 0.25 / 0.5 | queued |  |  |" in text
    assert "| `bp` | 0.700 +- 0.010 | 1.200 +- 0.020 | - | 0.660 +- 0.010 | 0.430 +- 0.020 | - |" in text
    assert "| `upgd` | at 200,000 |  |  |" not in text  # not a step-size learner


def test_csv_and_figure(runs):
    _, docs = runs
    with open(docs / "results.csv", newline="") as f:
        rows = {(r["stream"], r["learner"]): r for r in csv.DictReader(f)}
    assert set(rows) == {("regression", "bp"), ("regression", "idbd"), ("regression", "upgd"), ("pmnist", "cpu_bp"),
                         ("pmnist", "cpu_cbp"), ("pmnist", "cpu_short")}
    assert rows["regression", "bp"]["spans"] == "first 20k; last 200k of 1M"
    assert rows["regression", "idbd"]["late_step_size_collapsed_fraction"] == "0.25 / 0.5"
    assert rows["regression", "upgd"]["state"] == "at 200,000" and rows["regression", "upgd"]["late_mean"] == ""
    assert (docs / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_missing_runs_folder_is_one_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="no such folder of regression runs"):
        method_results.main(["--regression", str(tmp_path / "nope"), "--pmnist", str(tmp_path),
                             "--readme", str(tmp_path / "README.md"), "--docs", str(tmp_path)])


def test_a_readme_without_the_markers_is_refused(tmp_path):
    (tmp_path / "r").mkdir()
    readme = tmp_path / "README.md"
    readme.write_text("no markers\n")
    with pytest.raises(SystemExit, match="results:regression"):
        method_results.main(["--regression", str(tmp_path / "r"), "--pmnist", str(tmp_path / "r"),
                             "--readme", str(readme), "--docs", str(tmp_path)])
    assert readme.read_text() == "no markers\n"
