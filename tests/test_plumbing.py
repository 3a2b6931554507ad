"""Run plumbing: configs, run directories, checkpoints, TensorBoard logs, progress and stopping."""

from __future__ import annotations

import json
import os
import random
import signal
import threading

import numpy as np
import pytest
import torch
import yaml

from rl_plasticity.run import checkpoint as ckpt
from rl_plasticity.config import OneOf, Range, apply_overrides, load_config, read_yaml, validate
from rl_plasticity.errors import UserError
from rl_plasticity.run.progress import GracefulStop, progress_bar
from rl_plasticity.run.rundir import (check_new_run_dir, default_run_dir, new_run_dir, read_run_info,
                                      write_run_info)
from rl_plasticity.run.tblog import TBLogger, read_scalars

DEFAULTS = {
    "examples": 1000,
    "lr": 0.01,
    "learner": "bp",
    "bootstrap": True,
    "data_path": None,
    "hidden": [5],
    "cbp": {"replacement_rate": 1e-4, "maturity": 100, "utility": "contribution"},
}
RULES = {
    "examples": Range(low=0, low_open=True),
    "lr": Range(low=0, low_open=True),
    "cbp.replacement_rate": Range(0, 1),
    "cbp.utility": OneOf("contribution", "adaptable_contribution", "random"),
}


def write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- config


def test_validate_merges_defaults_without_mutating_them():
    cfg = validate({"cbp": {"maturity": 7}}, DEFAULTS, RULES)
    assert cfg["cbp"] == {"replacement_rate": 1e-4, "maturity": 7, "utility": "contribution"}
    assert cfg["examples"] == 1000
    assert DEFAULTS["cbp"]["maturity"] == 100


def test_unknown_key_suggests_the_close_one():
    with pytest.raises(UserError, match=r"unknown config key 'cbp\.replacment_rate' "
                                        r"\(did you mean 'cbp\.replacement_rate'\?\)"):
        validate({"cbp": {"replacment_rate": 0.1}}, DEFAULTS)
    with pytest.raises(UserError, match="unknown config key 'zzz'"):
        validate({"zzz": 1}, DEFAULTS)


@pytest.mark.parametrize("key, value, expected, got", [
    ("examples", "many", "int", "str"),
    ("examples", 1.5, "int", "float"),
    ("examples", True, "int", "bool"),  # bool is an int in Python, never in a config
    ("lr", False, "float", "bool"),
    ("learner", 3, "str", "int"),
    ("bootstrap", 1, "bool", "int"),
    ("hidden", 5, "list", "int"),
    ("cbp", 0.5, "mapping", "float"),
])
def test_wrong_type_names_key_expected_and_got(key, value, expected, got):
    with pytest.raises(UserError, match=rf"config key '{key}' must be {expected}, got {got}"):
        validate({key: value}, DEFAULTS)


def test_int_accepted_and_converted_where_float_expected():
    cfg = validate({"lr": 1, "cbp": {"replacement_rate": 0}}, DEFAULTS, RULES)
    assert cfg["lr"] == 1.0 and isinstance(cfg["lr"], float)
    assert isinstance(cfg["cbp"]["replacement_rate"], float)


def test_none_default_accepts_anything_and_lists_are_lists():
    assert validate({"data_path": "/data/mnist"}, DEFAULTS)["data_path"] == "/data/mnist"
    assert validate({"data_path": [1, 2]}, DEFAULTS)["data_path"] == [1, 2]
    assert validate({"hidden": [2000, 2000, 2000]}, DEFAULTS)["hidden"] == [2000, 2000, 2000]


@pytest.mark.parametrize("cfg, message", [
    ({"examples": 0}, "config key 'examples' must be > 0, got 0"),
    ({"lr": -0.1}, "config key 'lr' must be > 0, got -0.1"),
    ({"cbp": {"replacement_rate": 2}}, r"config key 'cbp.replacement_rate' must be in \[0, 1\], got 2.0"),
    ({"cbp": {"utility": "best"}}, "config key 'cbp.utility' must be one of 'contribution', "
                                   "'adaptable_contribution', 'random', got 'best'"),
])
def test_rules_are_checked_after_merging(cfg, message):
    with pytest.raises(UserError, match=message):
        validate(cfg, DEFAULTS, RULES)


def test_range_bounds():
    assert Range(0, 1).problem(0) is None and Range(0, 1).problem(1) is None
    assert Range(0, 1, low_open=True).problem(0) == "must be in (0, 1]"
    assert Range(high=1, high_open=True).problem(1) == "must be < 1"
    assert Range(low=2).problem(float("nan")) == "must be >= 2"


def test_overrides_parse_yaml_values_and_dotted_keys():
    base = {"lr": 0.01, "cbp": {"maturity": 100}}
    out = apply_overrides(base, ["lr=1e-4", "cbp.replacement_rate=1E-5", "cbp.maturity=10", "hidden=[3, 4]",
                                 "learner=cbp", "data_path=null"])
    assert out == {"lr": 1e-4, "hidden": [3, 4], "learner": "cbp", "data_path": None,
                   "cbp": {"maturity": 10, "replacement_rate": 1e-5}}
    assert isinstance(out["lr"], float)
    assert base == {"lr": 0.01, "cbp": {"maturity": 100}}  # a new dict, input untouched


@pytest.mark.parametrize("bad", ["lr", "=1", "cbp..maturity=1", "hidden=[1,"])
def test_malformed_override(bad):
    with pytest.raises(UserError, match="malformed"):
        apply_overrides({}, [bad])


def test_override_into_a_non_mapping():
    with pytest.raises(UserError, match="'lr' is not a mapping"):
        apply_overrides({"lr": 0.1}, ["lr.x=1"])


def test_yaml_scientific_floats_in_files(tmp_path):
    cfg = read_yaml(write(tmp_path / "a.yaml", "lr: 1e-4\nsteps: 2e6\nb: 1.0e3\nc: -3E-2\nname: e5\nn: 10\n"))
    assert cfg == {"lr": 1e-4, "steps": 2e6, "b": 1000.0, "c": -0.03, "name": "e5", "n": 10}
    assert all(isinstance(cfg[k], float) for k in ("lr", "steps", "b", "c"))


def test_missing_config_file(tmp_path):
    with pytest.raises(UserError, match="config file not found: .*nope.yaml"):
        read_yaml(tmp_path / "nope.yaml")


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path / "bad.yaml", "lr: 0.1\nexamples: 10\n  cbp: 3\n")
    with pytest.raises(UserError, match=r"invalid YAML in .*bad\.yaml line 3") as e:
        read_yaml(path)
    assert "\n" not in str(e.value)


def test_yaml_must_be_a_mapping_and_keys_unique(tmp_path):
    with pytest.raises(UserError, match="must hold a mapping"):
        read_yaml(write(tmp_path / "list.yaml", "- 1\n- 2\n"))
    with pytest.raises(UserError, match="line 2.*duplicate key 'lr'"):
        read_yaml(write(tmp_path / "dup.yaml", "lr: 0.1\nlr: 0.2\n"))
    assert read_yaml(write(tmp_path / "empty.yaml", "")) == {}


def test_load_config_reads_overrides_and_validates(tmp_path):
    path = write(tmp_path / "cbp.yaml", "learner: cbp\ncbp:\n  replacement_rate: 1e-3\n")
    cfg = load_config(path, ["examples=20", "cbp.maturity=5"], DEFAULTS, RULES)
    assert cfg["learner"] == "cbp" and cfg["examples"] == 20
    assert cfg["cbp"] == {"replacement_rate": 1e-3, "maturity": 5, "utility": "contribution"}
    with pytest.raises(UserError, match="'examples' must be > 0"):
        load_config(path, ["examples=0"], DEFAULTS, RULES)


# --------------------------------------------------------------------------- run directories


def _new_run_dir(path, force=False, keep=True):
    with new_run_dir(path, force=force, keep=lambda _: keep) as run:
        return run


def test_run_dir_refuses_to_overwrite_and_force_works(tmp_path):
    run = _new_run_dir(tmp_path / "runs" / "r1")
    assert run.is_dir()
    write_run_info(run, {"problem": "regression"}, [0])
    (run / "results.json").write_text("{}")
    with pytest.raises(UserError, match=r"run directory .*r1 exists; use --resume .*r1 to continue it or --force"):
        _new_run_dir(run)
    assert (run / "results.json").read_text() == "{}"
    _new_run_dir(run, force=True)
    assert run.is_dir() and not any(run.iterdir()) and sorted(p.name for p in run.parent.iterdir()) == ["r1"]
    _new_run_dir(run)  # an empty directory is fine to use


def test_force_replaces_only_run_directories(tmp_path):
    folder = tmp_path / "thesis"
    folder.mkdir()
    (folder / "config.yaml").write_text("mine: 1\n")  # a run's marker beside something no run writes
    (folder / "chapter1.tex").write_text("keep me")
    with pytest.raises(UserError, match=r"thesis exists and is not a run directory \(it holds chapter1.tex\)"):
        check_new_run_dir(folder, force=True)
    with pytest.raises(UserError, match="is a file, not a run directory; choose another --out") as e:
        check_new_run_dir(folder / "chapter1.tex", force=True)
    assert "--resume" not in str(e.value)
    assert sorted(p.name for p in folder.iterdir()) == ["chapter1.tex", "config.yaml"]


def test_a_failed_start_leaves_no_trace_and_puts_a_replaced_run_back(tmp_path):
    old = _new_run_dir(tmp_path / "run")
    write_run_info(old, {"problem": "regression"}, [0])
    before = {p.name: p.read_bytes() for p in old.iterdir()}
    for out, force in ((tmp_path / "a" / "b" / "new", False), (old, True)):
        with pytest.raises(UserError, match="diverged"):
            with new_run_dir(out, force=force, keep=lambda _: False) as run:
                (run / "tb").mkdir()
                raise UserError("diverged")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert {p.name: p.read_bytes() for p in old.iterdir()} == before


def test_force_never_deletes_the_current_directory(tmp_path, monkeypatch):
    write_run_info(tmp_path, {"problem": "regression"}, [0])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="refusing to delete"):
        check_new_run_dir(".", force=True)
    assert (tmp_path / "config.yaml").exists()


def test_default_run_dir_name_is_unique(tmp_path):
    import datetime as dt

    now = dt.datetime(2026, 11, 24, 15, 30, 0)
    first = default_run_dir("configs/regression/cbp.yaml", root=tmp_path, now=now)
    assert first == tmp_path / "regression-cbp-20261124-153000"
    first.mkdir()
    second = default_run_dir("configs/regression/cbp.yaml", root=tmp_path, now=now)
    assert second != first and second.name.startswith("regression-cbp-20261124-153000")
    assert not second.exists()


def test_run_info_round_trip(tmp_path):
    run = _new_run_dir(tmp_path / "run")
    config = validate({"lr": 1e-4, "cbp": {"replacement_rate": 1e-10}}, DEFAULTS)
    write_run_info(run, config, seeds=[0, 1, 2], extra={"problem": "regression"})
    info = json.loads((run / "run.json").read_text())
    for field in ("seeds", "command", "started", "python", "versions", "git", "problem"):
        assert field in info, field
    assert "hostname" not in info  # a committed run names no machine
    assert info["seeds"] == [0, 1, 2]
    for package in ("torch", "numpy", "gymnasium", "mujoco", "stable-baselines3", "tensorboard"):
        assert package in info["versions"]
    assert info["versions"]["torch"] is not None
    assert info["git"] is None or set(info["git"]) == {"commit", "dirty"}
    again, info2 = read_run_info(run)
    assert again == config  # floats such as 1e-10 survive the YAML round trip
    assert info2 == info
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # no temporary files


def test_read_run_info_rejects_other_directories(tmp_path):
    with pytest.raises(UserError, match="not a run directory"):
        read_run_info(tmp_path)
    with pytest.raises(UserError, match="run directory not found"):
        read_run_info(tmp_path / "missing")


# --------------------------------------------------------------------------- checkpoints


def _state(value: float = 1.0) -> dict:
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, betas=(0.99, 0.99))
    net(torch.ones(4, 3)).sum().backward()
    opt.step()
    return {"model": net.state_dict(), "optim": opt.state_dict(), "step": 7, "value": value,
            "name": "run", "done": False, "nothing": None, "history": [1.0, 2.0], "pair": (1, "a")}


def test_checkpoint_round_trip(tmp_path):
    state = _state()
    ckpt.save_checkpoint(tmp_path / "c.pt", state)
    back = ckpt.load_checkpoint(tmp_path / "c.pt")
    assert back["step"] == 7 and back["pair"] == (1, "a") and back["done"] is False and back["nothing"] is None
    for k, v in state["model"].items():
        assert torch.equal(back["model"][k], v)
    assert back["optim"]["param_groups"][0]["betas"] == (0.99, 0.99)


def test_crash_during_save_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    ckpt.save_checkpoint(path, _state(1.0))
    before = path.read_bytes()

    def crashing_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(path, _state(2.0))
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert ckpt.load_checkpoint(path)["value"] == 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]  # no temporary file left


def test_non_finite_tensor_is_never_saved(tmp_path):
    path = tmp_path / "c.pt"
    ckpt.save_checkpoint(path, _state())
    before = path.read_bytes()
    bad = _state()
    bad["optim"]["state"][0]["exp_avg"][0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"state\['optim'\]\['state'\]\[0\]\['exp_avg'\] holds NaN or inf"):
        ckpt.save_checkpoint(path, bad)
    with pytest.raises(ValueError, match="NaN or inf"):
        ckpt.save_checkpoint(path, {"x": [torch.tensor([float("inf")])]})
    assert path.read_bytes() == before


def test_values_weights_only_would_refuse_are_caught_at_save(tmp_path):
    with pytest.raises(TypeError, match=r"state\['x'\].*numpy"):
        ckpt.save_checkpoint(tmp_path / "c.pt", {"x": np.float64(1.0)})
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04 truncated"])
def test_corrupt_checkpoint_is_a_user_error(tmp_path, content):
    path = tmp_path / "c.pt"
    path.write_bytes(content)
    with pytest.raises(UserError, match=r"checkpoint .*c\.pt is corrupt or not a checkpoint") as e:
        ckpt.load_checkpoint(path)
    assert "\n" not in str(e.value)


def test_truncated_checkpoint_is_a_user_error(tmp_path):
    path = tmp_path / "c.pt"
    ckpt.save_checkpoint(path, _state())
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(UserError, match="corrupt or not a checkpoint"):
        ckpt.load_checkpoint(path)


def test_pickled_objects_are_not_loaded(tmp_path):
    path = tmp_path / "c.pt"
    torch.save({"a": np.arange(3)}, path)  # needs unpickling numpy: refused
    with pytest.raises(UserError, match="not plain data"):
        ckpt.load_checkpoint(path)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(UserError, match="checkpoint not found"):
        ckpt.load_checkpoint(tmp_path / "none.pt")


def test_rng_state_round_trip(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.normal(), random.gauss(0, 1)  # leave cached Gaussians in the state too
    ckpt.save_checkpoint(tmp_path / "c.pt", {"rng": ckpt.rng_state()})

    def draws():
        return (torch.rand(5).tolist(), torch.randn(2).tolist(), np.random.rand(5).tolist(),
                np.random.normal(), random.random(), random.gauss(0, 1))

    expected = draws()
    draws()
    ckpt.set_rng_state(ckpt.load_checkpoint(tmp_path / "c.pt")["rng"])
    assert draws() == expected


@pytest.mark.parametrize("bit_generator", [np.random.PCG64, np.random.MT19937, np.random.Philox, np.random.SFC64])
def test_numpy_generator_state_round_trip(tmp_path, bit_generator):
    gen = np.random.Generator(bit_generator(12345))
    gen.random(3), gen.integers(0, 10, 3)  # a half-used 32-bit buffer is part of the state
    ckpt.save_checkpoint(tmp_path / "g.pt", {"gen": ckpt.generator_state(gen)})
    expected = gen.random(6).tolist()
    other = np.random.Generator(bit_generator(0))
    ckpt.set_generator_state(other, ckpt.load_checkpoint(tmp_path / "g.pt")["gen"])
    assert other.random(6).tolist() == expected


def test_pcg64_state_dict_round_trips_as_is_under_weights_only(tmp_path):
    gen = np.random.default_rng(7)
    gen.random(3)
    state = gen.bit_generator.state
    assert state["state"]["state"] > 2**64  # 128-bit Python ints
    ckpt.save_checkpoint(tmp_path / "g.pt", {"gen": state})
    back = ckpt.load_checkpoint(tmp_path / "g.pt")["gen"]
    assert back == state
    expected = gen.random(4).tolist()
    other = np.random.default_rng(0)
    other.bit_generator.state = back
    assert other.random(4).tolist() == expected


def test_checkpoints_in_run_dir_keep_the_last_k(tmp_path):
    assert ckpt.latest_checkpoint(tmp_path) is None
    for step in (100, 200, 1000, 300):
        ckpt.save_checkpoint_in(tmp_path, step, {"step": step}, keep=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["ckpt-1000.pt", "ckpt-300.pt"]
    assert ckpt.latest_checkpoint(tmp_path).name == "ckpt-1000.pt"  # by step, not by name
    assert ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path))["step"] == 1000


# --------------------------------------------------------------------------- TensorBoard


def test_tensorboard_scalars_round_trip(tmp_path):
    assert not (tmp_path / "tb").exists()
    with TBLogger(tmp_path / "tb") as log:
        assert not (tmp_path / "tb").exists()  # nothing written before the first value
        for step in range(5):
            log.scalar("charts/return", step * 1.5, step)
            log.scalars({"policy": torch.tensor(0.5), "value": None}, step, prefix="losses")
        log.histogram("plasticity/actor/l0/weights", torch.randn(100), 4)
        log.histogram("plasticity/actor/l0/empty", [float("nan")], 4)
    scalars = read_scalars(tmp_path / "tb")
    assert scalars == {"charts/return": [(s, s * 1.5) for s in range(5)],
                       "losses/policy": [(s, 0.5) for s in range(5)]}


def test_read_scalars_by_run_and_after_resume(tmp_path, monkeypatch):
    # TensorBoard reads a folder's event files in name order, `events.out.tfevents.<seconds>.<host>.<pid>.<n>`.
    # A resumed run is a later process, so its file's seconds sort after the first one's; within this one
    # test process the counter n would decide instead, and it sorts as text (10 before 9). The resumed
    # logger below therefore writes one second later, as a real resume does.
    import time as time_module

    for seed in (0, 1):
        with TBLogger(tmp_path / f"seed{seed}") as log:
            for step in range(6):
                log.scalar("charts/return", float(seed * 10 + step), step)
    # A resumed run rewrites steps from its checkpoint (step 3) onwards.
    later = time_module.time() + 1
    monkeypatch.setattr(time_module, "time", lambda: later)
    with TBLogger(tmp_path / "seed0", purge_step=3) as log:
        for step in range(3, 5):
            log.scalar("charts/return", 100.0 + step, step)
    by_run = read_scalars(tmp_path, by_run=True)
    assert by_run["seed0/charts/return"] == [(0, 0.0), (1, 1.0), (2, 2.0), (3, 103.0), (4, 104.0)]
    assert by_run["seed1/charts/return"] == [(s, 10.0 + s) for s in range(6)]
    merged = read_scalars(tmp_path)
    assert list(merged) == ["charts/return"] and len(merged["charts/return"]) == 11


def test_read_scalars_missing_dir(tmp_path):
    with pytest.raises(UserError, match="log directory not found"):
        read_scalars(tmp_path / "nope")


# --------------------------------------------------------------------------- progress and stopping


def test_progress_bar_can_be_disabled(monkeypatch):
    monkeypatch.setenv("RL_PLASTICITY_NO_PROGRESS", "1")
    with progress_bar(10, "train", "step") as bar:
        assert bar.disable
        bar.update(3)
        bar.set_postfix(ret=1.0)
    monkeypatch.delenv("RL_PLASTICITY_NO_PROGRESS")
    with progress_bar(10, "train", "step", initial=4) as bar:
        assert not bar.disable and bar.n == 4 and bar.mininterval == 0.5


def _wait_for(condition, timeout: float = 2.0) -> bool:
    import time

    end = time.monotonic() + timeout
    while not condition() and time.monotonic() < end:
        time.sleep(0.01)
    return condition()


def test_graceful_stop_turns_sigterm_into_a_flag():
    before = signal.getsignal(signal.SIGTERM)
    with GracefulStop(notice=None) as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert _wait_for(lambda: stop.requested)
        assert stop.signal_name == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before


def test_graceful_stop_second_sigint_aborts():
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        with GracefulStop(notice=None) as stop:
            os.kill(os.getpid(), signal.SIGINT)
            assert _wait_for(lambda: stop.requested)
            os.kill(os.getpid(), signal.SIGINT)
            _wait_for(lambda: False, timeout=1.0)
    assert signal.getsignal(signal.SIGINT) is before


def test_graceful_stop_is_a_no_op_outside_the_main_thread():
    seen = {}

    def work():
        with GracefulStop() as stop:
            seen["requested"] = stop.requested
            seen["handler"] = signal.getsignal(signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert seen == {"requested": False, "handler": before}


def test_config_written_by_a_run_is_plain_yaml(tmp_path):
    run = _new_run_dir(tmp_path / "run")
    write_run_info(run, {"betas": (0.9, 0.999), "lr": 1e-4}, seeds=[0])
    assert yaml.safe_load((run / "config.yaml").read_text()) == {"betas": [0.9, 0.999], "lr": 1e-4}


def test_run_info_command_is_relative_to_the_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "configs" / "cbp.yaml"
    config.parent.mkdir()
    config.write_text("problem: regression\n")
    run = _new_run_dir(tmp_path / "sweep" / "cbp" / "seed_0")
    write_run_info(run, {"problem": "regression"}, [0],
                   command=["train", str(config), "--out", str(run), "--set", f"data.path={tmp_path}",
                            "--set", "optimizer.lr=0.01", "--seed", "0"])
    command = json.loads((run / "run.json").read_text())["command"]
    assert command == ["rl-plasticity", "train", "../../../configs/cbp.yaml", "--out", ".", "--set",
                       "data.path=../../..", "--set", "optimizer.lr=0.01", "--seed", "0"]
    assert str(tmp_path) not in (run / "run.json").read_text()
