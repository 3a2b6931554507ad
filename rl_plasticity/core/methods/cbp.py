"""Continual backprop (Dohare et al., Nature 2024): keep replacing a tiny fraction of the least useful
mature hidden units with fresh ones.

After every optimizer step, for each unit group and each replica:
1. every unit ages by 1;
2. utility: an exponential average (decay d) of the unit's instantaneous utility, divided by
   (1 - d^age) so young units are not judged by a zero-started average;
     contribution:            mean|outgoing w| * mean_batch |h|
     adaptable_contribution:  mean|outgoing w| * mean_batch |h - mean h| / mean|incoming w|
     random:                  a fresh uniform draw at replacement time
3. units older than the maturity threshold are eligible; replacement_rate * (#eligible) is added to
   an accumulator and floor(accumulator) eligible units with the lowest utility are replaced
   (`replacement_count="accumulate"`, the paper's description); or, as the official RL and
   supervised code does (lop/algos/gnt.py, GnT.test_features), x = replacement_rate * (#eligible)
   is used alone: below 1 it is one unit with probability x, else floor(x) (`"bernoulli"`: the
   same expected rate, drawn from the method's generator);
4. a replaced unit gets incoming weights from its layer's own init distribution, bias 0, outgoing
   weights 0, utility 0, age 0, and a fresh optimizer state (moments and step). Its running mean
   activation times its outgoing weights moves into the outgoing bias first, so replacing a unit
   leaves the network's output unchanged on average.

Two switches reproduce the official code's behaviour where it departs from the paper's algorithm:
`reset_optimizer_state=False` leaves the optimizer state of replaced units alone (the official PPO
and ImageNet runs used torch's Adam, whose state GnT.update_optim_params never touches), and
`transfer_mean_to_bias=False` skips the bias transfer (GnT.test_features zeroes the mean activation
before gen_new_features reads it, so the official transfer always adds zero).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from rl_plasticity.config import OneOf, Range
from rl_plasticity.core.methods.base import PlasticityMethod
from rl_plasticity.core.units import UnitGroup

UTILITIES = ("contribution", "adaptable_contribution", "random")
REPLACEMENT_COUNTS = ("accumulate", "bernoulli")

# The `cbp` config section: its defaults and rules, declared here only.
DEFAULTS = {"enabled": False, "replacement_rate": 1e-4, "maturity_threshold": 100, "decay_rate": 0.99,
            "utility": "contribution", "transfer_mean_to_bias": True, "reset_optimizer_state": True,
            "replacement_count": "accumulate"}
RULES = {
    "replacement_rate": Range(low=0, high=1),
    "maturity_threshold": Range(low=0),
    "decay_rate": Range(low=0, high=1, high_open=True),
    "utility": OneOf(*UTILITIES),
    "replacement_count": OneOf(*REPLACEMENT_COUNTS),
}


def _per_unit(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[R, U] -> broadcastable against `like` [R, U, ...]."""
    return t.reshape(*t.shape, *[1] * (like.dim() - 2))


class ContinualBackprop(PlasticityMethod):
    name, label, defaults, rules = "cbp", "CBP", DEFAULTS, RULES

    def __init__(self, groups: list[UnitGroup], optimizer, generators: list[torch.Generator | None],
                 replacement_rate: float = DEFAULTS["replacement_rate"],
                 maturity_threshold: int = DEFAULTS["maturity_threshold"],
                 decay_rate: float = DEFAULTS["decay_rate"], utility: str = DEFAULTS["utility"],
                 transfer_mean_to_bias: bool = DEFAULTS["transfer_mean_to_bias"],
                 reset_optimizer_state: bool = DEFAULTS["reset_optimizer_state"],
                 replacement_count: str = DEFAULTS["replacement_count"]):
        self.check(locals())
        self.groups, self.optimizer, self.generators = groups, optimizer, generators
        self.replacement_rate, self.maturity_threshold = replacement_rate, maturity_threshold
        self.decay_rate, self.utility_type, self.transfer_mean_to_bias = decay_rate, utility, transfer_mean_to_bias
        self.reset_optimizer_state, self.replacement_count = reset_optimizer_state, replacement_count
        self.log_decay = math.log(decay_rate) if decay_rate > 0 else -math.inf
        dev = [g.incoming.weight.device for g in groups]  # state lives beside the units it describes
        self.age = [torch.zeros(g.replicas, g.num_units, device=d) for g, d in zip(groups, dev)]
        self.utility = [torch.zeros(g.replicas, g.num_units, device=d) for g, d in zip(groups, dev)]
        # [R, U], or [R, U, 2] for paired (CReLU) units: the bias transfer needs one mean per half.
        self.mean_activation = [torch.zeros(g.replicas, g.num_units, *g.mean_shape, device=d)
                                for g, d in zip(groups, dev)]
        # Kept on the host: while every unit is mature the replacement count needs no tensor op at all.
        self.accumulator = [np.zeros(g.replicas) for g in groups]
        self.replacements = [torch.zeros(g.replicas, dtype=torch.long, device=d) for g, d in zip(groups, dev)]
        # Only the adaptable utility and the bias transfer read the mean activation: skip its average otherwise.
        self._tracks_mean = transfer_mean_to_bias or utility == "adaptable_contribution"
        # Bounds on every unit's age, kept on the host (ages only grow, or drop to 0 when a unit is made new):
        # until the oldest passes maturity no unit is eligible, and once the youngest has, every unit is, so
        # neither case needs a device sync.
        self._oldest = [0] * len(groups)
        self._youngest = [0] * len(groups)

    def _bias_correction(self, age: torch.Tensor) -> torch.Tensor:
        return -torch.expm1(age * self.log_decay)  # 1 - d^age, accurate for small ages

    @torch.no_grad()
    def after_step(self, learner=None) -> None:
        for i, group in enumerate(self.groups):
            self._update_group(i, group, learner)

    def _update_group(self, i: int, group: UnitGroup, learner=None) -> None:
        d, age = self.decay_rate, self.age[i]
        age += 1
        self._oldest[i] += 1
        self._youngest[i] += 1
        act = group.activation.flatten(3) if group.activation.dim() > 3 else group.activation.unsqueeze(3)
        # act: [R, B, U, positions]; batch and spatial positions are averaged alike.
        if self._tracks_mean:
            self.mean_activation[i].mul_(d).add_(group.batch_mean(act), alpha=1 - d)
        if self.utility_type == "contribution":
            instant = group.mean_abs_outgoing() * act.abs().mean((1, 3))
            self.utility[i].mul_(d).add_(instant, alpha=1 - d)
        elif self.utility_type == "adaptable_contribution":
            mean = self.mean_activation[i] / _per_unit(self._bias_correction(age), self.mean_activation[i])
            spread = (act - mean.reshape(mean.shape[0], 1, mean.shape[1], -1)).abs().mean((1, 3))
            instant = group.mean_abs_outgoing() * spread / group.mean_abs_incoming()
            self.utility[i].mul_(d).add_(instant, alpha=1 - d)

        if self._oldest[i] <= self.maturity_threshold:
            return
        if self._youngest[i] > self.maturity_threshold and group.num_units:
            n_eligible = np.full(group.replicas, group.num_units)
        else:
            n_eligible = (age > self.maturity_threshold).sum(1).cpu().numpy()
            if not n_eligible.any():
                return
        if self.replacement_count == "bernoulli":
            n_replace = self._bernoulli_count(n_eligible)
        else:
            acc = self.accumulator[i]
            # The rate times the count in float32, then summed in float64: the arithmetic the accumulator has
            # always had (torch multiplies a Python float by a count tensor in float32), so runs stay identical.
            acc += np.float32(self.replacement_rate) * n_eligible.astype(np.float32)
            n_replace = np.floor(acc)
            acc -= n_replace
        if not n_replace.any():
            return
        eligible = age > self.maturity_threshold
        self._replace(i, group, eligible, torch.from_numpy(n_replace.astype(np.int64)), learner)

    def _bernoulli_count(self, n_eligible: np.ndarray) -> np.ndarray:
        """[R]: x = rate * n_eligible per replica; below 1, one unit with probability x; else floor(x)."""
        expected = self.replacement_rate * n_eligible
        draws = torch.cat([torch.rand(1, dtype=torch.float64, generator=g) for g in self.generators]).numpy()
        return np.where(expected < 1, (draws <= expected).astype(np.float64), np.floor(expected))

    def bias_corrected_utility(self, i: int) -> torch.Tensor:
        return self.utility[i] / self._bias_correction(self.age[i]).clamp_min(1e-12)

    def _choose(self, i: int, eligible: torch.Tensor, n_replace: torch.Tensor) -> torch.Tensor:
        """Mask [R, U] of the n_replace[r] eligible units of lowest utility in each replica."""
        mask = torch.zeros_like(eligible)
        utility = self.bias_corrected_utility(i)
        for r in (n_replace > 0).nonzero().flatten().tolist():
            candidates = eligible[r].nonzero().flatten()
            if self.utility_type == "random":
                scores = torch.rand(len(candidates), generator=self.generators[r]).to(candidates.device)
            else:
                scores = utility[r, candidates]
            k = min(int(n_replace[r]), len(candidates))
            # Stable sort: among equal utilities the lowest index goes first, so choices are repeatable.
            mask[r, candidates[torch.argsort(scores, stable=True)[:k]]] = True
        return mask

    def _replace(self, i: int, group: UnitGroup, eligible: torch.Tensor, n_replace: torch.Tensor,
                 learner=None) -> None:
        mask = self._choose(i, eligible, n_replace)
        if self.transfer_mean_to_bias:
            m = self.mean_activation[i]
            mean = m / _per_unit(self._bias_correction(self.age[i]).clamp_min(1e-12), m)
            group.add_to_outgoing_bias(mean * _per_unit(mask, m))
        group.reinit(mask, self.generators)
        if self.reset_optimizer_state:
            for pu in group.all_params():
                self.optimizer.reset_units(pu, mask)
        self.tell_units_reset(learner, group, mask)
        self.replacements[i] += mask.sum(1)

    def forget_units(self, group: UnitGroup, mask: torch.Tensor) -> None:
        """A fresh unit has utility 0, mean activation 0 and age 0 (whichever method made it fresh)."""
        i = next((i for i, g in enumerate(self.groups) if g is group), None)
        if i is None:
            return
        self._youngest[i] = 0
        self.utility[i][mask] = 0
        self.mean_activation[i][mask] = 0
        self.age[i][mask] = 0

    def stats(self) -> dict[str, float]:
        return {f"{g.name}/replacements": float(self.replacements[i].float().mean())
                for i, g in enumerate(self.groups)}

    def state_dict(self) -> dict:
        names = ("age", "utility", "mean_activation", "replacements")
        state = {k: [t.clone() for t in getattr(self, k)] for k in names}
        return {**state, "accumulator": [torch.from_numpy(a.copy()) for a in self.accumulator]}

    def load_state_dict(self, sd: dict) -> None:
        for k, tensors in sd.items():
            for dst, src in zip(getattr(self, k), tensors):
                if k == "accumulator":
                    dst[:] = src.cpu().numpy()
                else:
                    dst.copy_(src)
        self._oldest = [int(a.max()) if a.numel() else 0 for a in self.age]
        self._youngest = [int(a.min()) if a.numel() else 0 for a in self.age]
