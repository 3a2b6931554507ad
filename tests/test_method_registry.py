"""The method registry: each method owns its config section, and builders derive everything from it."""

import copy

import pytest
import torch

from rl_plasticity.config import Numbers, OneOf, Range, validate
from rl_plasticity.core import builders
from rl_plasticity.core.builders import METHOD_DEFAULTS, METHOD_RULES, build_learner
from rl_plasticity.core.methods import METHODS, ContinualBackprop, PlasticityMethod, ReDo, Reset, ShrinkPerturb
from rl_plasticity.core.networks import MLP
from rl_plasticity.errors import UserError

# A literal copy of METHOD_DEFAULTS and METHOD_RULES as builders.py wrote them by hand before the
# registry: the derived sections must still hold these, key order included (it decides which error a
# config with several mistakes reports first, and the order of keys in a resolved config); sections and
# keys registered since then come after them.
TODAY_DEFAULTS = {
    "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.0, "betas": [0.9, 0.999], "eps": 1e-8,
                  "weight_decay": 0.0},
    "cbp": {"enabled": False, "replacement_rate": 1e-4, "maturity_threshold": 100, "decay_rate": 0.99,
            "utility": "contribution", "transfer_mean_to_bias": True, "reset_optimizer_state": True,
            "replacement_count": "accumulate"},
    "redo": {"enabled": False, "threshold": 0.1, "every": 100, "reset_optimizer_state": True},
    "snp": {"enabled": False, "shrink": 0.0, "noise_std": 0.0},
}

TODAY_RULES = {
    "optimizer.name": OneOf("sgd", "adam"),
    "optimizer.lr": Range(low=0, low_open=True),
    "optimizer.momentum": Range(low=0, high=1, high_open=True),
    "optimizer.betas": Numbers(2, Range(low=0, high=1, high_open=True)),  # added after the registry
    "optimizer.eps": Range(low=0, low_open=True),
    "optimizer.weight_decay": Range(low=0),
    "cbp.replacement_rate": Range(low=0, high=1),
    "cbp.maturity_threshold": Range(low=0),
    "cbp.decay_rate": Range(low=0, high=1, high_open=True),
    "cbp.utility": OneOf("contribution", "adaptable_contribution", "random"),
    "cbp.replacement_count": OneOf("accumulate", "bernoulli"),
    "redo.threshold": Range(low=0),
    "redo.every": Range(low=1),
    "snp.shrink": Range(low=0, high=1, high_open=True),
    "snp.noise_std": Range(low=0),
}


def _ordered(d):
    """A nested dict as nested (key, value) lists, so that == also compares key order and types."""
    if isinstance(d, dict):
        return [(k, _ordered(v)) for k, v in d.items()]
    return (type(d), d)


def _rule_key(rule):
    return type(rule), repr(rule)


def _as_before(defaults: dict) -> dict:
    """The sections and keys that existed before the registry, in their order."""
    return {name: {k: v for k, v in defaults[name].items() if k in section} for name, section in TODAY_DEFAULTS.items()}


def test_derived_defaults_hold_todays_literal_copy():
    for defaults in (METHOD_DEFAULTS, builders.method_defaults()):
        assert list(defaults)[:len(TODAY_DEFAULTS)] == list(TODAY_DEFAULTS)
        assert _ordered(_as_before(defaults)) == _ordered(TODAY_DEFAULTS)
        for name, section in TODAY_DEFAULTS.items():  # keys added since come after the old ones
            assert list(defaults[name])[:len(section)] == list(section)


def test_derived_rules_hold_todays_literal_copy():
    for rules in (METHOD_RULES, builders.method_rules()):
        old = [key for key in rules if key in TODAY_RULES]
        assert old == list(TODAY_RULES)
        grown = {"optimizer.name"}  # registered optimizers add choices after sgd and adam
        assert [_rule_key(rules[k]) for k in old if k not in grown] == \
            [_rule_key(r) for k, r in TODAY_RULES.items() if k not in grown]
        assert rules["optimizer.name"].choices[:2] == ("sgd", "adam")


def test_registry_order_and_sections():
    assert list(METHODS) == ["cbp", "redo", "snp", "reset", "l2_init", "parseval", "swr", "weight_clipping",
                             "hare_tortoise"]
    assert list(METHODS.values())[:4] == [ContinualBackprop, ReDo, ShrinkPerturb, Reset]
    for name, method in METHODS.items():
        assert method.name == name
        assert name in METHOD_DEFAULTS, name
        assert METHOD_DEFAULTS[name]["enabled"] is False
        assert METHOD_DEFAULTS[name] == method.defaults
        assert all(key in method.defaults and key != "enabled" for key in method.rules)


def test_problem_defaults_hold_every_registered_section():
    # Problem modules spread METHOD_DEFAULTS into their DEFAULTS; a registered method therefore has its
    # section, disabled, in every problem's config.
    assert [section for section in METHOD_DEFAULTS if section != "optimizer"] == list(METHODS)
    for name, method in METHODS.items():
        assert METHOD_DEFAULTS[name] == method.defaults and METHOD_DEFAULTS[name]["enabled"] is False
        assert METHOD_DEFAULTS[name] is not method.defaults  # problems get a copy, never the declaration


def test_constructor_defaults_come_from_the_section():
    import inspect

    for method in METHODS.values():
        sig = inspect.signature(method.__init__)
        for key, value in method.defaults.items():
            if key == "enabled":
                continue
            assert sig.parameters[key].default == value, (method.name, key)


def test_config_errors_keep_their_text():
    cfg = {"cbp": {"decay_rate": 1.0}}
    with pytest.raises(UserError, match=r"^config key 'cbp.decay_rate' must be in \[0, 1\), got 1.0$"):
        validate(cfg, METHOD_DEFAULTS, METHOD_RULES)
    with pytest.raises(UserError, match=r"^config key 'redo.every' must be >= 1, got 0$"):
        validate({"redo": {"every": 0}}, METHOD_DEFAULTS, METHOD_RULES)


def test_constructor_checks_use_the_declared_rules():
    net = MLP([2, 3, 1], activation="relu", init="lecun")
    from rl_plasticity.core.optim import SGD

    opt, gens = SGD(net.parameters(), lr=0.1), [torch.Generator().manual_seed(0)]
    with pytest.raises(ValueError, match=r"^CBP replacement_rate must be in \[0, 1\], got 2$"):
        ContinualBackprop(net.groups, opt, gens, replacement_rate=2)
    with pytest.raises(ValueError, match=r"^CBP decay_rate must be in \[0, 1\), got 1.0$"):
        ContinualBackprop(net.groups, opt, gens, decay_rate=1.0)
    with pytest.raises(ValueError, match="CBP utility must be one of 'contribution'"):
        ContinualBackprop(net.groups, opt, gens, utility="nope")
    with pytest.raises(ValueError, match=r"^ReDo threshold must be >= 0, got -1$"):
        ReDo(net.groups, opt, gens, threshold=-1)
    with pytest.raises(ValueError, match=r"^ReDo every must be >= 1, got 0$"):
        ReDo(net.groups, opt, gens, every=0)
    with pytest.raises(ValueError, match=r"^SNP shrink must be in \[0, 1\), got 1.0$"):
        ShrinkPerturb(list(net.parameters()), gens, shrink=1.0)
    # Numbers of other real types (numpy's, say) are checked by value, as before.
    np = pytest.importorskip("numpy")
    ShrinkPerturb(list(net.parameters()), gens, shrink=np.float32(0.5))


class _Fake(PlasticityMethod):
    name = "fake"
    defaults = {"enabled": False, "strength": 1.0, "label": "a"}
    rules = {"strength": Range(low=0)}

    def __init__(self, params, strength=defaults["strength"], label=defaults["label"]):
        self.params, self.strength, self.label = params, strength, label

    @classmethod
    def from_config(cls, section, target):
        return cls(target.params, **cls.options(section))


def test_a_method_registered_at_runtime_is_built_from_its_section(monkeypatch):
    monkeypatch.setitem(METHODS, "fake", _Fake)
    defaults = builders.method_defaults()
    assert defaults["fake"] == _Fake.defaults and list(defaults)[-1] == "fake"
    assert "fake.strength" in builders.method_rules()
    with pytest.raises(UserError, match=r"config key 'fake.strength' must be >= 0, got -1"):
        validate({"fake": {"strength": -1}}, defaults, builders.method_rules())

    net = MLP([2, 3, 1], activation="relu", init="lecun")
    cfg = copy.deepcopy(defaults)
    cfg["fake"] = {"enabled": True, "strength": 3.0, "label": "b"}
    cfg["snp"]["enabled"] = True
    learner = build_learner(net.parameters(), net.groups, cfg, [torch.Generator().manual_seed(0)])
    assert [m.name for m in learner.methods] == ["snp", "fake"]  # registry order
    fake = learner.methods[-1]
    assert isinstance(fake, _Fake) and (fake.strength, fake.label) == (3.0, "b")
    assert fake.params == list(net.parameters())

    cfg["fake"]["enabled"] = False
    learner = build_learner(net.parameters(), net.groups, cfg, [torch.Generator().manual_seed(0)])
    assert [m.name for m in learner.methods] == ["snp"]


def test_build_learner_builds_the_enabled_methods_with_their_settings():
    net = MLP([2, 3, 1], activation="relu", init="lecun")
    cfg = copy.deepcopy(METHOD_DEFAULTS)
    for name in ("cbp", "redo", "snp"):
        cfg[name]["enabled"] = True
    cfg["cbp"].update(replacement_rate=0.5, utility="random", replacement_count="bernoulli",
                      transfer_mean_to_bias=False)
    cfg["redo"].update(threshold=0.2, every=7, reset_optimizer_state=False)
    cfg["snp"].update(shrink=0.01, noise_std=0.02)
    learner = build_learner(net.parameters(), net.groups, cfg, [torch.Generator().manual_seed(0)])
    cbp, redo, snp = learner.methods
    assert (type(cbp), type(redo), type(snp)) == (ContinualBackprop, ReDo, ShrinkPerturb)
    assert (cbp.replacement_rate, cbp.utility_type, cbp.replacement_count, cbp.transfer_mean_to_bias,
            cbp.reset_optimizer_state, cbp.maturity_threshold, cbp.decay_rate) == \
        (0.5, "random", "bernoulli", False, True, 100, 0.99)
    assert cbp.optimizer is learner.optimizer and cbp.groups == net.groups
    assert (redo.threshold, redo.every, redo.reset_optimizer_state) == (0.2, 7, False)
    assert (snp.shrink, snp.noise_std) == (0.01, 0.02) and snp.params == list(net.parameters())

    # Methods acting on units are skipped when there are no unit groups, as before.
    learner = build_learner(net.parameters(), [], cfg, [torch.Generator().manual_seed(0)])
    assert [m.name for m in learner.methods] == ["snp"]
