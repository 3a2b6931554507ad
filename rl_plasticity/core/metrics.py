"""Plasticity metrics of a network's hidden units and layers, computed per replica.

On a probe batch, per unit group:
- dormant fraction (the loss-of-plasticity paper, Dohare et al. 2024): share of units active (> 0) on at
  most 1% of the probe inputs;
- tau-dormant fraction (ReDo, Sokar et al. 2023, Definitions 3.1-3.2): a unit's score is its mean
  |activation| over the probe divided by the mean of that over the layer's units; the unit is tau-dormant
  when its score <= tau. tau (`log.dormant_tau`) defaults to 0, units that never activate on the probe:
  the default `dead_neurons_threshold` with which the official code (dopamine/labs/redo) logs dead
  neurons; ReDo's resets use larger values (`redo.threshold`, 0.1). A conv unit's score averages its
  positions too, as the official code does;
- stable rank, as the loss-of-plasticity paper uses it: the smallest k such that the top-k singular
  values of the [batch, units] feature matrix hold 99% of the sum of all singular values (this is
  not the Frobenius/spectral-norm ratio that also goes by that name);
- effective rank (Roy & Vetterli): exp of the entropy of the singular values normalised to sum 1;
- feature norm: the mean over probe inputs of the L2 norm of the layer's activation vector (a conv
  layer's whole [C, H, W] map).

From the latest update's loss gradients (`Learner.latest_gradients()`; no extra backward pass):
- gradient norm: the L2 norm of each layer's weight gradient;
- GraMa's inactive fraction (Liu, Obando-Ceron et al. 2025, "Measure gradients not activations!"): a
  unit's score is its gradient magnitude relative to the mean of its layer's units, and the unit is
  inactive when its score <= tau (`log.grama_tau`; default 0, units that get no gradient at all, as in
  the authors' code). The paper states the score per neuron (the batch mean of |dL/d neuron|); the
  authors' code (grad-based-plasticity-metrics, GradientReDo) computes it from the latest backward
  pass as the mean |gradient| of the unit's incoming weights, and so do we: those gradients exist
  already, so it costs no extra pass and no retained activation gradients. With one example per step
  (regression, permuted MNIST) the two agree exactly: incoming weight j's gradient is delta_i x_j
  (delta_i = dL/dz_i, z the unit's pre-activation), the unit's mean is |delta_i| mean_j |x_j|, and the
  layer-mean normalisation cancels mean_j |x_j| (tested). With a minibatch (PPO's 128) the weight
  gradient sums delta_i x over the batch before taking |.|, as the authors' code does.

Of the weights:
- mean |weight| of each layer, and the total |weight change| since the last measurement;
- distance from init: the L2 norm of each layer's weights minus their values when the run started
  (`DistanceFromInit`; its state goes into checkpoints, so a resumed run measures from the true init).

Weight-based metrics use weights only (not biases), as the paper's weight magnitude and change do.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from rl_plasticity.config import Range
from rl_plasticity.core.methods.redo import redo_scores

# The metric options of a problem's `log` section: their defaults and rules, declared here only.
LOG_DEFAULTS = {"dormant_tau": 0.0, "grama_tau": 0.0}
LOG_RULES = {"log.dormant_tau": Range(low=0), "log.grama_tau": Range(low=0)}


def dormant_fraction(features: torch.Tensor, active_at_most: float = 0.01) -> torch.Tensor:
    """features [R, B, U] -> [R]."""
    active_share = (features > 0).float().mean(1)
    return (active_share <= active_at_most).float().mean(1)


def dormant_fraction_per_position(features: torch.Tensor, threshold: float = 0.01) -> torch.Tensor:
    """features [R, B, U, ...] -> [R]: the official CIFAR definition (lop/incremental_cifar/post_run_analysis.py,
    compute_dormant_units_proportion): a unit's active share counts every (sample, position) pair, and the unit
    is dormant when that share is below `threshold` (strictly). Conv units are not averaged over positions first."""
    f = features.flatten(3) if features.dim() > 3 else features.unsqueeze(3)
    active_share = (f > 0).float().mean((1, 3))
    return (active_share < threshold).float().mean(1)


def _check_tau(tau: float) -> None:
    if not tau >= 0:
        raise ValueError(f"tau must be >= 0, got {tau!r}")


def _finite(t: torch.Tensor) -> torch.Tensor:
    """[R, ...] -> [R] bool: the replica's values are all finite (a diverged replica reports NaN)."""
    return torch.isfinite(t).flatten(1).all(1)


def tau_dormant_fraction(features: torch.Tensor, tau: float = 0.0) -> torch.Tensor:
    """features [R, B, U, ...] -> [R]: share of units whose ReDo score is <= tau (NaN for non-finite features)."""
    _check_tau(tau)
    dormant = (redo_scores(features) <= tau).float().mean(1)
    return torch.where(_finite(features), dormant, float("nan"))


def feature_norm(features: torch.Tensor) -> torch.Tensor:
    """features [R, B, U, ...] -> [R]: mean over the batch of each input's activation-vector L2 norm."""
    return features.flatten(2).norm(dim=2).mean(1)


def grama_scores(weight_grad: torch.Tensor) -> torch.Tensor:
    """Incoming weight gradient [R, U, ...] -> [R, U]: each unit's mean |gradient| over its incoming weights,
    relative to the mean of that over the layer's units."""
    per_unit = weight_grad.abs().flatten(2).mean(2)
    return per_unit / per_unit.mean(1, keepdim=True).clamp_min(1e-12)


def grama_dormant_fraction(weight_grad: torch.Tensor, tau: float = 0.0) -> torch.Tensor:
    """Incoming weight gradient [R, U, ...] -> [R]: share of units whose GraMa score is <= tau."""
    _check_tau(tau)
    inactive = (grama_scores(weight_grad) <= tau).float().mean(1)
    return torch.where(_finite(weight_grad), inactive, float("nan"))


def grad_norm(grad: torch.Tensor) -> torch.Tensor:
    """[R, ...] -> [R]: the L2 norm of each replica's gradient."""
    return grad.flatten(1).norm(dim=1)


def _singular_values(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """([R, min(B, U)] descending, [R] bool: the replica's features are all finite).

    A diverged replica's NaN/inf features would make the SVD fail for every replica; they are zeroed
    for it, and the ranks report NaN for that replica.
    """
    f = features.double()
    finite = _finite(f)
    return torch.linalg.svdvals(torch.where(finite[:, None, None], f, 0.0)), finite


def stable_rank(features: torch.Tensor, share: float = 0.99) -> torch.Tensor:
    """features [R, B, U] -> [R] (float; NaN for a replica with non-finite features)."""
    sv, finite = _singular_values(features)
    total = sv.sum(1, keepdim=True)
    cumulative = sv.cumsum(1) / total.clamp_min(1e-300)
    k = (cumulative < share - 1e-12).sum(1) + 1
    k = torch.where(total.squeeze(1) > 0, k, torch.zeros_like(k)).float()
    return torch.where(finite, k, float("nan"))


def effective_rank(features: torch.Tensor) -> torch.Tensor:
    """features [R, B, U] -> [R] (NaN for a replica with non-finite features)."""
    sv, finite = _singular_values(features)
    p = sv / sv.sum(1, keepdim=True).clamp_min(1e-300)
    entropy = -(p * torch.log(p.clamp_min(1e-300))).sum(1)
    return torch.where(finite, torch.exp(entropy).float(), float("nan"))


def mean_abs_weight(weight: torch.Tensor) -> torch.Tensor:
    """[R, ...] -> [R]."""
    return weight.detach().abs().flatten(1).mean(1)


class WeightChange:
    """Total |change| of a set of replica-batched parameters since the previous call, per replica."""

    def __init__(self, params):
        self.params = list(params)
        self.previous = [p.detach().clone() for p in self.params]

    def __call__(self) -> torch.Tensor:
        total = sum((p.detach() - q).abs().flatten(1).sum(1) for p, q in zip(self.params, self.previous))
        self.previous = [p.detach().clone() for p in self.params]
        return total


class DistanceFromInit:
    """L2 distance of each layer's weights from their values when this object was made (the run's start),
    per replica: {'layer0/distance_from_init': [R], ...}. Its state_dict (the initial weights) belongs in
    the run's checkpoint: a resumed run then measures from the init it really started from."""

    def __init__(self, net):
        self.layers = list(net.layers)
        self.initial = [layer.weight.detach().clone() for layer in self.layers]

    @torch.no_grad()
    def __call__(self) -> dict[str, torch.Tensor]:
        return {f"layer{i}/distance_from_init": (layer.weight - w0).flatten(1).norm(dim=1)
                for i, (layer, w0) in enumerate(zip(self.layers, self.initial))}

    def state_dict(self) -> list[torch.Tensor]:
        return [w.to("cpu", copy=True) for w in self.initial]

    @torch.no_grad()
    def load_state_dict(self, saved: list[torch.Tensor]) -> None:
        if len(saved) != len(self.initial) or any(a.shape != b.shape for a, b in zip(saved, self.initial)):
            raise ValueError("checkpoint's initial weights do not match this network's shapes")
        for w0, s in zip(self.initial, saved):
            w0.copy_(s)


@torch.no_grad()
def probe_metrics(net, probe: torch.Tensor, dormant: str = "spatial_mean", tau: float = 0.0
                  ) -> dict[str, torch.Tensor]:
    """Run the probe batch through `net` and measure every unit group: {'layer0/dormant_fraction': [R], ...}.

    dormant: "spatial_mean" averages a conv unit's activation over positions, then applies dormant_fraction;
    "official" is dormant_fraction_per_position. Ranks use the position-averaged features, and both outputs of
    a paired (CReLU) unit: the features the next layer reads.
    tau: ReDo's threshold of the tau-dormant fraction."""
    net(probe)
    out = {}
    for group in net.groups:
        a = group.activation
        f = a.flatten(3).mean(3) if a.dim() > 3 else a
        out[f"{group.name}/dormant_fraction"] = (dormant_fraction_per_position(a)
                                                 if dormant == "official" else dormant_fraction(f))
        out[f"{group.name}/tau_dormant_fraction"] = tau_dormant_fraction(a, tau)
        ranked = a.flatten(2) if getattr(group, "mean_shape", ()) else f  # a paired (CReLU) unit: 2U features
        out[f"{group.name}/stable_rank"] = stable_rank(ranked)
        out[f"{group.name}/effective_rank"] = effective_rank(ranked)
        out[f"{group.name}/feature_norm"] = feature_norm(a)
    for i, layer in enumerate(net.layers):
        out[f"layer{i}/mean_abs_weight"] = mean_abs_weight(layer.weight)
    return out


@torch.no_grad()
def gradient_metrics(net, grads: Mapping[torch.Tensor, torch.Tensor], grama_tau: float = 0.0
                     ) -> dict[str, torch.Tensor]:
    """From `grads` (parameter -> its latest loss gradient, e.g. `Learner.latest_gradients()`): each layer's
    weight-gradient norm and each unit group's GraMa inactive fraction. Layers without a gradient (no
    update yet) are left out."""
    out = {}
    for group in net.groups:
        g = grads.get(group.incoming.weight)
        if g is not None:
            out[f"{group.name}/grama_dormant_fraction"] = grama_dormant_fraction(g, grama_tau)
    for i, layer in enumerate(net.layers):
        g = grads.get(layer.weight)
        if g is not None:
            out[f"layer{i}/grad_norm"] = grad_norm(g)
    return out


def net_metrics(net, probe: torch.Tensor, grads: Mapping[torch.Tensor, torch.Tensor] | None = None,
                distance: DistanceFromInit | None = None, dormant: str = "spatial_mean", tau: float = 0.0,
                grama_tau: float = 0.0) -> dict[str, torch.Tensor]:
    """Every metric above of one net: the probe's, the gradients' (when given) and the distance from init
    (when given), keyed like probe_metrics."""
    out = probe_metrics(net, probe, dormant=dormant, tau=tau)
    if grads is not None:
        out.update(gradient_metrics(net, grads, grama_tau))
    if distance is not None:
        out.update(distance())
    return out
