"""Weight clipping (Elsayed, Lan, Lyle & Mahmood, "Weight clipping for deep continual and reinforcement
learning", RLJ 2024): after every optimizer step, each weight of layer l is clipped to [-kappa s_l, kappa s_l],
where s_l is the half-width of the layer's uniform init U(-s_l, s_l) (the paper's Algorithm 1).

Here s_l is the layer's own `.bound`, the bound its weights (and CBP's / ReDo's redrawn units) are drawn
from. The official code computes s_l as 1/sqrt(fan_in), PyTorch's default bound, whatever init the network
really used; with the core's LeCun or Kaiming inits the bound they were drawn from is the one that means
"kappa times the init range". Biases are clipped to the same +-kappa s_l as their layer's weights: the official
code (InitBounds.get) gives a bias the bound of the weight tensor before it, 1/sqrt(fan_in), which is that
layer's weight bound. The output layer is clipped too unless `clip_output_layer` is False (the official PPO
script's `clip_last_layer`, on by default).

kappa defaults to 3.0, the official PPO script's value (rl_experiments/ppo_continuous_action_clipped.py); the
paper tunes it per problem over {1, ..., 5} in its supervised streams.

Only the weights and biases of the Linear and Conv2d layers are clipped. PPO's log_std and the scales and
shifts of batch norm and layer norm are left alone: they are not layer weights and have no init bound (the
official code, which clips every parameter of the optimizer, would clip CleanRL's [1, A] log_std to
+-kappa/sqrt(A) and a batch norm's scale, which starts at 1, to +-kappa/sqrt(fan_in of the conv before it):
artefacts of its bound bookkeeping).

Replicas are clipped independently (element-wise); the bound is a property of the layer, the same for every
replica. Units re-initialised by CBP or ReDo are drawn inside +-s_l, so for kappa >= 1 clipping never undoes a
reset. The method has no state of its own.

With CBP's bias transfer: the next layer's bias is clipped too, so a transferred mean that takes it past
the bound is cut back in the same step (the output then moves where the transfer meant to keep it).
"""

from __future__ import annotations

import torch
from torch import nn

from rl_plasticity.config import OneOf, Range
from rl_plasticity.core.methods.base import PlasticityMethod, net_layers, output_layer

# The `weight_clipping` config section: its defaults and rules, declared here only.
DEFAULTS = {"enabled": False, "kappa": 3.0, "clip_output_layer": True}
RULES = {"kappa": Range(low=0, low_open=True), "clip_output_layer": OneOf(True, False)}


class WeightClipping(PlasticityMethod):
    name, label, defaults, rules = "weight_clipping", "weight clipping", DEFAULTS, RULES

    def __init__(self, nets: list[nn.Module], kappa: float = DEFAULTS["kappa"],
                 clip_output_layer: bool = DEFAULTS["clip_output_layer"]):
        self.check(locals())
        self.kappa, self.clip_output_layer = kappa, clip_output_layer
        self.tensors: list[torch.Tensor] = []
        self.highs: list[float] = []
        for net in nets:
            head = output_layer(net)
            for layer in net_layers(net):
                if layer is head and not clip_output_layer:
                    continue
                if getattr(layer, "bound", None) is None:
                    raise ValueError(f"weight clipping needs each layer's init bound (`.bound`), which "
                                     f"{type(layer).__name__} lacks: build the net from rl_plasticity.core's "
                                     f"Linear and Conv2d layers")
                for p in (layer.weight, layer.bias):
                    if p is not None:
                        self.tensors.append(p)
                        self.highs.append(float(kappa * layer.bound))
        self.lows = [-h for h in self.highs]

    @classmethod
    def from_config(cls, section, target):
        if not target.nets:
            raise ValueError("weight clipping acts on the networks' layers: pass them as `nets` to build_learner")
        return cls(target.nets, **cls.options(section))

    @torch.no_grad()
    def after_step(self, learner=None) -> None:
        if self.tensors:
            torch._foreach_clamp_max_(self.tensors, self.highs)
            torch._foreach_clamp_min_(self.tensors, self.lows)

    @torch.no_grad()
    def stats(self) -> dict[str, float]:
        """The fraction of clipped weights and biases that sit at their bound (all replicas together)."""
        if not self.tensors:
            return {}
        at_bound = sum(int((t.abs() >= h).sum()) for t, h in zip(self.tensors, self.highs))
        return {"at_bound_fraction": at_bound / sum(t.numel() for t in self.tensors)}
