"""examples/sb3_friction_ant.py: SB3's PPO with CBP on the friction Ant writes the plasticity metrics to TensorBoard."""

import importlib.util
from pathlib import Path

import pytest

from rl_plasticity.run.tblog import read_scalars

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sb3_friction_ant.py"


def _example():
    spec = importlib.util.spec_from_file_location("sb3_friction_ant", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_trains_and_its_tensorboard_scalars_read_back(tmp_path, capsys):
    example = _example()
    assert example.main(["--steps", "2048", "--rollout-steps", "1024", "--metrics-every", "1024",
                         "--change-every", "1000", "--logdir", str(tmp_path)]) == 0
    assert f"tensorboard --logdir {tmp_path}" in capsys.readouterr().out
    scalars = read_scalars(tmp_path)
    for net, layer in (("actor", "mlp_extractor.policy_net.2"), ("critic", "mlp_extractor.value_net.0")):
        for metric in ("dormant_fraction", "stable_rank", "feature_norm", "mean_abs_weight", "cbp_replacements"):
            assert [s for s, _ in scalars[f"plasticity/{net}/{layer}/{metric}"]] == [1024, 2048]
        # The gradient metrics exist from the first update on; distance from init grows with it.
        assert [s for s, _ in scalars[f"plasticity/{net}/{layer}/grad_norm"]] == [2048]
        assert scalars[f"plasticity/{net}/{layer}/distance_from_init"][-1][1] > 0
    assert "train/value_loss" in scalars
    env, _ = example.make_env(1000)
    assert env.observation_space.shape == (111,)  # the paper config's Ant-v3 observation


def test_example_refuses_bad_arguments(capsys):
    with pytest.raises(SystemExit) as e:
        _example().main(["--steps", "0"])
    assert e.value.code == 2 and "--steps must be a positive integer, got 0" in capsys.readouterr().err
