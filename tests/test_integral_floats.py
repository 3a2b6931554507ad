"""Integer config keys take counts as people write them (`2e7`), in a file or with --set; a fraction is refused."""

import pytest
from sweeps import CONFIGS

from rl_plasticity.config import read_yaml, validate
from rl_plasticity.errors import UserError
from rl_plasticity.problems import resolve_config


def test_integral_floats_become_ints():
    out = validate({"steps": 2e7, "lr": 1e-3}, {"steps": 1, "lr": 0.1})
    assert out == {"steps": 20_000_000, "lr": 1e-3} and type(out["steps"]) is int


@pytest.mark.parametrize("value", [2.5, 1e400, float("nan"), True, "3"])
def test_other_values_for_an_int_are_refused(value):
    with pytest.raises(UserError, match="config key 'steps' must be int"):
        validate({"steps": value}, {"steps": 1})


def test_a_config_file_and_an_override_may_write_2e5(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text((CONFIGS / "bp.yaml").read_text().replace("examples: 1000000", "examples: 2e5"))
    cfg, _ = resolve_config(read_yaml(path), ["bin_size=2e4"])
    assert (cfg["examples"], cfg["bin_size"]) == (200_000, 20_000)
    assert type(cfg["examples"]) is int and type(cfg["bin_size"]) is int
    with pytest.raises(UserError, match=r"'bin_size' must be int, got float 20000.5"):
        resolve_config(read_yaml(path), ["bin_size=20000.5"])
