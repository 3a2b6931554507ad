"""Selective weight reinitialisation, SWR (Hernandez-Garcia, Dohare, Luo, Sutton, 2025, "Reinitializing weights vs
units for maintaining plasticity in neural networks"): every `every` optimizer steps, the least useful individual
weights of each parameter tensor are re-initialised.

After every optimizer step, for each parameter tensor of each layer and each replica:
1. utility of each weight w, with g the gradient of this step's loss:
     gradient:  |w * g|  (the first-order estimate of the loss change if w were removed)
     magnitude: |w|
   with `utility_decay` d > 0, an exponential average u <- d u + (1 - d) |.| taken every step;
2. every `every` steps, the weights to re-initialise, in each tensor on its own (`selection`):
     proportional: the k of lowest utility, k = floor(rate * n) plus one more with probability frac(rate * n)
                   (n weights in the tensor; the draw comes from the replica's generator);
     threshold:    those whose utility is at most rate * the tensor's mean utility;
3. they get new values (`reinit`): `resample` draws them from the layer's init distribution (weights
   U(+-bound); biases 0, or U(+-bias_bound) where the layer has it; batch-norm weight 1, bias 0), `mean` sets
   them to that distribution's mean (0; batch-norm weight 1). Their optimizer state becomes a fresh
   parameter's, element by element (Adam's moments and step count, SGD's momentum), and their utility
   average restarts at 0.

What it acts on follows the paper's code (its SWR optimizer takes net.parameters(), each tensor with its own
init distribution): every parameter tensor of every layer, the output layer, biases and normalisation
weights included. Parameters outside the networks' layers (PPO's log-std) are left alone; a network with
parameters in any other kind of module is refused (its init distribution is unknown here).

Where this departs from the paper's code: the optimizer state of re-initialised weights is reset
(`reset_optimizer_state: false` keeps it, as that code does: its optimizers never see the re-initialisation);
only the re-initialised weights' utility averages restart (that code zeroes the whole tensor's average); the
random draws come from each replica's own generator, so replicas stay independent. The gradient is the one the
learner computed for this step, caught by hooks on the parameters (the learner hands its gradients straight to
the optimizer, not to .grad); the utility multiplies it by the weight after the optimizer step, as that code
does (it runs after optimizer.step() and reads p.grad).

Defaults: gradient utility, resample and proportional selection are the paper's recommended variant; the rate
and period (1% of each tensor every 100 steps, i.e. 1e-4 of the weights per step, CBP's default rate per unit)
are this toolkit's choice: tune them per problem.

With CBP or ReDo: a weight at exactly 0 has utility 0 under either utility, so the outgoing weights those
methods zero for a new unit are the first SWR redraws at its next event (the new unit then starts with small
random outgoing weights instead of zeros); ties among equal utilities break by index.
"""

from __future__ import annotations

import torch
from torch import nn

from rl_plasticity.config import OneOf, Range
from rl_plasticity.core.conv import BatchNorm, Conv2d
from rl_plasticity.core.layers import Linear
from rl_plasticity.core.methods.base import PlasticityMethod
from rl_plasticity.core.networks import LayerNorm

UTILITIES = ("gradient", "magnitude")
SELECTIONS = ("proportional", "threshold")
REINITS = ("resample", "mean")

# The `swr` config section: its defaults and rules, declared here only.
DEFAULTS = {"enabled": False, "rate": 0.01, "every": 100, "utility": "gradient", "selection": "proportional",
            "reinit": "resample", "utility_decay": 0.0, "reset_optimizer_state": True}
RULES = {"rate": Range(low=0, high=1), "every": Range(low=1), "utility": OneOf(*UTILITIES),
         "selection": OneOf(*SELECTIONS), "reinit": OneOf(*REINITS),
         "utility_decay": Range(low=0, high=1, high_open=True)}


def init_of(module: nn.Module, kind: str) -> tuple[float, float]:
    """(mean, half-width of the uniform) of the init distribution of `module`'s parameter `kind`."""
    if isinstance(module, (BatchNorm, LayerNorm)):  # gain 1, shift 0
        return (1.0 if kind == "weight" else 0.0), 0.0
    return 0.0, (module.bound if kind == "weight" else module.bias_bound)


def reinit_targets(nets: list[nn.Module]) -> list[tuple[nn.Parameter, float, float]]:
    """(parameter, init mean, init half-width) for every parameter of every layer of `nets`."""
    targets = []
    for net in nets:
        for module in net.modules():
            own = [(kind, p) for kind, p in module.named_parameters(recurse=False)]
            if not own:
                continue
            if not isinstance(module, (Linear, Conv2d, BatchNorm, LayerNorm)):
                raise ValueError(  # noqa: TRY004
                    f"swr cannot re-initialise the parameters of {type(module).__name__} (its init distribution "
                    f"is unknown); it handles Linear, Conv2d, BatchNorm and LayerNorm layers")
            targets += [(p, *init_of(module, kind)) for kind, p in own]
    return targets


class SelectiveWeightReinit(PlasticityMethod):
    name, label, defaults, rules = "swr", "SWR", DEFAULTS, RULES

    def __init__(self, nets: list[nn.Module], optimizer, generators: list[torch.Generator | None],
                 rate: float = DEFAULTS["rate"], every: int = DEFAULTS["every"], utility: str = DEFAULTS["utility"],
                 selection: str = DEFAULTS["selection"], reinit: str = DEFAULTS["reinit"],
                 utility_decay: float = DEFAULTS["utility_decay"],
                 reset_optimizer_state: bool = DEFAULTS["reset_optimizer_state"]):
        self.check(locals())
        if not nets:
            raise ValueError("swr needs the networks whose weights it re-initialises; build the learner with "
                             "nets=[...]")
        self.optimizer, self.generators = optimizer, generators
        self.rate, self.every, self.utility_type, self.selection = rate, every, utility, selection
        self.reinit, self.utility_decay, self.reset_optimizer_state = reinit, utility_decay, reset_optimizer_state
        self.targets = self.find_targets(nets)
        self.params = [p for p, _, _ in self.targets]
        self.trace = [torch.zeros_like(p.detach()) for p in self.params] if utility_decay else None
        self.grads: list[torch.Tensor | None] = [None] * len(self.params)
        if utility == "gradient":
            self.hooks = self.gradient_hooks()
        self.steps = 0
        self.reinitialised = torch.zeros(len(generators), dtype=torch.long)

    def find_targets(self, nets: list[nn.Module]) -> list[tuple[torch.Tensor, float, float]]:
        """(parameter [R, ...], init mean, init half-width) of every tensor SWR acts on."""
        return reinit_targets(nets)

    def gradient_hooks(self) -> list:
        """The learner's gradients reach only the optimizer: catch them on the way, into `self.grads`."""
        return [p.register_hook(self._grad_catcher(i)) for i, p in enumerate(self.params)]

    @classmethod
    def from_config(cls, section, target):
        return cls(target.nets, target.optimizer, target.generators, **cls.options(section))

    def _grad_catcher(self, i: int):
        def catch(grad: torch.Tensor) -> None:
            self.grads[i] = grad
        return catch

    def _utility(self, i: int) -> torch.Tensor | None:
        """This step's utility of every weight of tensor i, or None where its gradient is unknown."""
        w = self.params[i].detach()
        if self.utility_type == "magnitude":
            return w.abs()
        g = self.grads[i]
        return None if g is None else (w * g).abs()

    @torch.no_grad()
    def after_step(self, learner=None) -> None:
        self.steps += 1
        due = self.steps % self.every == 0
        if self.trace is not None:
            for i, trace in enumerate(self.trace):
                u = self._utility(i)
                if u is not None:
                    trace.mul_(self.utility_decay).add_(u, alpha=1 - self.utility_decay)
        if due:
            for i in range(len(self.params)):
                u = self.trace[i] if self.trace is not None else self._utility(i)
                if u is not None:
                    self._reinit_tensor(i, u)
        self.grads = [None] * len(self.params)  # a later step must not see this step's gradients

    def _choose(self, u: torch.Tensor) -> torch.Tensor:
        """u [R, n] -> mask [R, n] of the weights to re-initialise."""
        if self.selection == "threshold":
            return u <= self.rate * u.mean(1, keepdim=True)
        n = u.shape[1]
        whole, frac = divmod(self.rate * n, 1.0)
        counts = [int(whole) + int(frac > 0 and torch.rand(1, generator=g).item() < frac) for g in self.generators]
        most = max(counts)
        mask = torch.zeros_like(u, dtype=torch.bool)
        if most:
            # A stable sort, not topk: ties (zero weights are common) break by index, so a replica's choice
            # does not depend on how many its neighbours draw.
            lowest = torch.argsort(u, dim=1, stable=True)[:, :most]
            wanted = torch.arange(most, device=u.device) < torch.tensor(counts, device=u.device).unsqueeze(1)
            mask.scatter_(1, lowest, wanted)
        return mask

    def _reinit_tensor(self, i: int, utility: torch.Tensor) -> None:
        p, mean, half_width = self.targets[i]
        mask = self._choose(utility.reshape(utility.shape[0], -1))
        counts = mask.sum(1)
        if not bool(counts.any()):
            return
        flat = p.detach().view(p.shape[0], -1)
        if self.reinit == "resample" and half_width > 0:
            # Drawn on the CPU (where the generators live), replica by replica, in the mask's row-major order.
            # A replica with nothing to redraw draws nothing, as it would running alone.
            draws = [torch.empty(k, dtype=p.dtype).uniform_(-half_width, half_width, generator=g) if k else
                     torch.empty(0, dtype=p.dtype) for k, g in zip(counts.tolist(), self.generators)]
            flat[mask] = torch.cat(draws).to(p.device) + mean
        else:
            flat[mask] = mean
        if self.reset_optimizer_state:
            self.optimizer.reset_elements(p, mask.view(p.shape))
        if self.trace is not None:
            self.trace[i].view(p.shape[0], -1)[mask] = 0.0
        self.reinitialised += counts.cpu()

    def stats(self) -> dict[str, float]:
        return {"reinitialised": float(self.reinitialised.float().mean())}

    def state_dict(self) -> dict:
        return {"steps": self.steps, "reinitialised": self.reinitialised.clone(),
                "trace": None if self.trace is None else [t.clone() for t in self.trace]}

    def load_state_dict(self, sd: dict) -> None:
        self.steps = int(sd["steps"])
        self.reinitialised.copy_(sd["reinitialised"])
        if self.trace is not None:
            for dst, src in zip(self.trace, sd["trace"]):
                dst.copy_(src)

