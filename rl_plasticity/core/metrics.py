"""Plasticity metrics of a network's hidden units, computed per replica on a probe batch.

- dormant fraction: share of units active (> 0) on at most 1% of the probe inputs;
- stable rank, as the loss-of-plasticity paper uses it: the smallest k such that the top-k singular
  values of the [batch, units] feature matrix hold 99% of the sum of all singular values (this is
  not the Frobenius/spectral-norm ratio that also goes by that name);
- effective rank (Roy & Vetterli): exp of the entropy of the singular values normalised to sum 1;
- mean |weight| of each layer, and the total |weight change| since the last measurement.
"""

from __future__ import annotations

import torch


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


def _singular_values(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """([R, min(B, U)] descending, [R] bool: the replica's features are all finite).

    A diverged replica's NaN/inf features would make the SVD fail for every replica; they are zeroed
    for it, and the ranks report NaN for that replica.
    """
    f = features.double()
    finite = torch.isfinite(f).flatten(1).all(1)
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


@torch.no_grad()
def probe_metrics(net, probe: torch.Tensor, dormant: str = "spatial_mean") -> dict[str, torch.Tensor]:
    """Run the probe batch through `net` and measure every unit group: {'layer0/dormant_fraction': [R], ...}.

    dormant: "spatial_mean" averages a conv unit's activation over positions, then applies dormant_fraction;
    "official" is dormant_fraction_per_position. Ranks always use the position-averaged features."""
    net(probe)
    out = {}
    for group in net.groups:
        f = group.activation.flatten(3).mean(3) if group.activation.dim() > 3 else group.activation
        out[f"{group.name}/dormant_fraction"] = (dormant_fraction_per_position(group.activation)
                                                 if dormant == "official" else dormant_fraction(f))
        out[f"{group.name}/stable_rank"] = stable_rank(f)
        out[f"{group.name}/effective_rank"] = effective_rank(f)
    for i, layer in enumerate(net.layers):
        out[f"layer{i}/mean_abs_weight"] = mean_abs_weight(layer.weight)
    return out
