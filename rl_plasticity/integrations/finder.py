"""Find the hidden-unit groups of a plain PyTorch model, or read them from the user's declaration.

Found automatically: chains of weight layers in an `nn.Sequential` (nested ones are read as one
chain), i.e. Linear/Conv layers separated by an activation and optionally a norm
(LayerNorm/BatchNorm), pooling, dropout and a Flatten between conv and linear layers. Each weight
layer followed by an activation and another weight layer computes a group of hidden units; the last
layer is the output. A model that is not a Sequential is searched for Sequential submodules holding
all its weight layers. Anything else is declared: pairs of module names (incoming, outgoing), or
`UnitSpec` for a norm layer or several outgoing layers.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from rl_plasticity.integrations.groups import NORM_LAYERS, WEIGHT_LAYERS, ModuleUnitGroup

PASSIVE_MODULES = ("torch.nn.modules.pooling", "torch.nn.modules.dropout", "torch.nn.modules.flatten",
                   "torch.nn.modules.linear")  # the last for nn.Identity (nn.Linear is a weight layer)

HOW_TO_DECLARE = ("Declare the groups yourself: groups=[('fc1', 'fc2'), ('fc2', 'head')], pairs of (layer that "
                  "computes the units, layer that reads them) named as in model.named_modules(); use "
                  "rl_plasticity.UnitSpec(incoming, outgoing, norm=...) for a norm layer or several outgoing layers.")


class UnitsNotFound(ValueError):
    """The model's hidden units cannot be found automatically."""

    def __init__(self, reason: str):
        super().__init__(f"cannot find the hidden units automatically: {reason}. {HOW_TO_DECLARE}")


@dataclass(frozen=True)
class UnitSpec:
    """One hidden-unit group, by module names: the layer computing the units, the layer(s) reading
    them, and an optional norm layer on them (reset with the units)."""

    incoming: str
    outgoing: str | tuple[str, ...]
    norm: str | None = None
    name: str | None = None

    @property
    def outgoing_names(self) -> tuple[str, ...]:
        return (self.outgoing,) if isinstance(self.outgoing, str) else tuple(self.outgoing)


def _is_activation(m: nn.Module) -> bool:
    return type(m).__module__ == "torch.nn.modules.activation" and not any(True for _ in m.parameters())


def _flatten_chain(seq: nn.Sequential, prefix: str) -> list[tuple[str, nn.Module]]:
    chain = []
    for name, child in seq.named_children():
        full = f"{prefix}{name}"
        chain += _flatten_chain(child, full + ".") if isinstance(child, nn.Sequential) else [(full, child)]
    return chain


def chain_specs(chain: list[tuple[str, nn.Module]]) -> list[UnitSpec]:
    """Unit groups of an ordered chain of (name, module): each weight layer with an activation and a
    later weight layer after it. Raises UnitsNotFound at anything it cannot place."""
    specs: list[UnitSpec] = []
    incoming, norm, activated = None, None, False
    for name, m in chain:
        if isinstance(m, WEIGHT_LAYERS):
            if incoming is not None and activated:
                specs.append(UnitSpec(incoming, name, norm))
            incoming, norm, activated = name, None, False
        elif isinstance(m, NORM_LAYERS):
            if norm is not None:
                raise UnitsNotFound(f"two norm layers ({norm!r}, {name!r}) after one weight layer")
            norm = name
        elif _is_activation(m):
            activated = True
        elif type(m).__module__ not in PASSIVE_MODULES:
            raise UnitsNotFound(f"module {name!r} ({type(m).__name__}) is not a layer the finder knows")
    return specs


def find_unit_specs(model: nn.Module) -> list[UnitSpec]:
    """The unit groups of `model`, found from its Sequential chains."""
    if isinstance(model, nn.Sequential):
        chains = [_flatten_chain(model, "")]
    else:
        chains, covered = [], set()
        for name, m in model.named_modules():
            if isinstance(m, nn.Sequential) and not any(name.startswith(c + ".") for c in covered):
                chain = _flatten_chain(m, name + "." if name else "")
                if any(isinstance(x, WEIGHT_LAYERS) for _, x in chain):
                    chains.append(chain)
                    covered.add(name)
        in_chains = {id(x) for chain in chains for _, x in chain}
        loose = [n for n, m in model.named_modules() if isinstance(m, WEIGHT_LAYERS) and id(m) not in in_chains]
        if loose:
            raise UnitsNotFound(f"{type(model).__name__} is not an nn.Sequential and its layers {loose[:3]} are "
                                "wired in its own forward()")
    specs = [s for chain in chains for s in chain_specs(chain)]
    if not specs:
        raise UnitsNotFound(f"{type(model).__name__} has no hidden layer (a weight layer followed by an activation "
                            "and another weight layer)")
    return specs


def _as_spec(g) -> UnitSpec:
    if isinstance(g, UnitSpec):
        return g
    if isinstance(g, (tuple, list)) and len(g) == 2 and all(isinstance(x, str) for x in g):
        return UnitSpec(g[0], g[1])
    raise TypeError(f"a declared unit group is a pair of module names or a UnitSpec, got {g!r}")


def build_groups(model: nn.Module, declared=None, init="torch") -> list[ModuleUnitGroup]:
    """ModuleUnitGroups for the declared groups, or for those found automatically when none are declared."""
    specs = [_as_spec(g) for g in declared] if declared is not None else find_unit_specs(model)
    modules = dict(model.named_modules())

    def get(name: str) -> nn.Module:
        if name not in modules:
            raise ValueError(f"no module named {name!r} in {type(model).__name__}; names are those of "
                             f"model.named_modules(), e.g. {[n for n in modules if n][:6]}")
        return modules[name]

    groups = []
    for s in specs:
        incoming = get(s.incoming)
        if not isinstance(incoming, WEIGHT_LAYERS):
            raise ValueError(f"{s.incoming!r} computes no units: it is a {type(incoming).__name__}, "
                             "not a Linear or Conv layer")
        norm = None if s.norm is None else get(s.norm)
        groups.append(ModuleUnitGroup(s.name or s.incoming, incoming, [get(n) for n in s.outgoing_names], norm,
                                      init=init))
    return groups
