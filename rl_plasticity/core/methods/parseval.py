"""Parseval regularisation (Chung, Cherif, Precup & Meger, "Parseval regularization for continual
reinforcement learning", NeurIPS 2024): keep each layer's rows (its units' incoming weight vectors)
orthogonal and of equal norm with the penalty, added to the loss,
    strength * (reference_width / units)^2 * ||W W^T - scale * I||_F^2
for every layer but the network's output layer, as the paper does (its official code regularises the hidden
layers of the actor and the critic, the input layer included, and never the output layers or the biases).
Conv weights [out, in, k, k] are flattened to [out, in*k*k], so a unit is an output channel (the paper has
no convs; this is the usual extension).

Defaults follow the official code (github wechu/parseval_reg): strength 1e-3 (its gridworld and Metaworld
setting; 1e-4 on LunarLander and the quadruped), scale = init_gain^2 = 2 (its default orthogonal init has
gain sqrt(2), so W W^T = 2 I at init), and the factor (64 / units)^2, which the code applies because the
strength was tuned for 64-unit layers (the penalty sums units^2 entries). `reference_width` sets that 64; a
layer's `units` is its own number of rows (the code uses the one hidden width of its nets). Note the core's
uniform inits have E[row norm^2] = fan_in * bound^2 / 3: 1 for LeCun (PPO here), 2 for Kaiming-ReLU, so
`scale: 1.0` is the value that matches a LeCun-initialised net the way 2 matches the paper's.

Left out: the paper's extra capacity, learnable per-unit "diagonal layers" (y = c * x + b after each
regularised layer, Metaworld) and a learnable input scale (the quadruped), which change the architecture,
not the regulariser; and its ablations (row-normalised penalty, neuron subgroups).

Via `after_loss`, so autograd gives the penalty's exact gradient 4 * coef * (W W^T - scale I) W. Replicas:
the Gram matrices are batched over the replica axis and the penalty is summed over replicas, so each
replica's gradient is its own. Biases, PPO's log_std and the batch-norm and layer-norm scales and shifts are
left alone.
"""

from __future__ import annotations

import functools
import operator

import torch
from torch import nn

from rl_plasticity.config import Range
from rl_plasticity.core.methods.base import PlasticityMethod, net_layers, output_layer

# The `parseval` config section: its defaults and rules, declared here only.
DEFAULTS = {"enabled": False, "strength": 1e-3, "scale": 2.0, "reference_width": 64}
RULES = {"strength": Range(low=0), "scale": Range(low=0), "reference_width": Range(low=1)}


def regularised_weights(nets: list[nn.Module]) -> list[torch.Tensor]:
    """The weights Parseval acts on: every layer of every net except its output layer."""
    return [layer.weight for net in nets for layer in net_layers(net) if layer is not output_layer(net)]


class Parseval(PlasticityMethod):
    name, label, defaults, rules = "parseval", "Parseval", DEFAULTS, RULES

    def __init__(self, nets: list[nn.Module], strength: float = DEFAULTS["strength"],
                 scale: float = DEFAULTS["scale"], reference_width: int = DEFAULTS["reference_width"]):
        self.check(locals())
        self.strength, self.scale, self.reference_width = strength, scale, reference_width
        self.weights = regularised_weights(nets)
        self.coefficients = [strength * (reference_width / w.shape[1]) ** 2 for w in self.weights]
        self._eyes = {}
        for w in self.weights:  # one identity per layer size, shared
            self._eyes.setdefault(w.shape[1], torch.eye(w.shape[1], dtype=w.dtype, device=w.device))

    @classmethod
    def from_config(cls, section, target):
        if not target.nets:
            raise ValueError("Parseval regularisation acts on the networks' layers: pass them as `nets` to "
                             "build_learner")
        if not regularised_weights(target.nets):
            return None  # linear learners: no layer but the output layer
        return cls(target.nets, **cls.options(section))

    def _deviations(self) -> list[torch.Tensor]:
        """Per layer, W W^T - scale I of each replica: [R, units, units]."""
        deviations = []
        for w in self.weights:
            rows = w.flatten(2)  # [R, units, fan_in]
            deviations.append(torch.baddbmm(self._eyes[w.shape[1]], rows, rows.transpose(1, 2), beta=-self.scale))
        return deviations

    def penalty(self) -> torch.Tensor:
        """The penalty summed over layers and replicas (each replica's gradient is its own)."""
        terms = [d.square().sum() * c for c, d in zip(self.coefficients, self._deviations())]
        return functools.reduce(operator.add, terms)

    def after_loss(self, learner, loss: torch.Tensor) -> torch.Tensor:
        return loss + self.penalty() if self.strength and self.weights else loss

    @torch.no_grad()
    def stats(self) -> dict[str, float]:
        """The penalty of each replica (without strength and width factors), averaged over replicas."""
        if not self.weights:
            return {}
        per_replica = sum(d.square().sum((1, 2)) for d in self._deviations())
        return {"deviation": float(per_replica.mean())}
