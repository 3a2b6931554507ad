"""Shrink-and-perturb (Ash & Adams, 2020), applied after every optimizer step:
    theta <- (1 - shrink) * theta + noise_std * N(0, 1)

Each replica draws its noise from its own generator, in chunks of several steps at once (one draw
per chunk instead of one per step and tensor; small nets get long chunks, big nets short ones so the
buffer, which checkpoints carry, stays around a million numbers); a replica's noise sequence does
not depend on how many replicas run beside it.
"""

from __future__ import annotations

import torch

from rl_plasticity.config import OneOf, Range
from rl_plasticity.core.methods.base import PlasticityMethod

MAX_CHUNK_STEPS = 256
BUFFER_NUMBERS = 2**20  # per replica

# The `snp` config section: its defaults and rules, declared here only.
# scope: "networks" acts on the parameters of the networks (the official code's choice in both PPO, which
# leaves the log-std alone, and the supervised problems, whose parameters are all in the network); "all" also
# on the learner's other parameters (PPO's log-std).
DEFAULTS = {"enabled": False, "shrink": 0.0, "noise_std": 0.0, "scope": "networks"}
RULES = {"shrink": Range(low=0, high=1, high_open=True), "noise_std": Range(low=0), "scope": OneOf("networks", "all")}


class ShrinkPerturb(PlasticityMethod):
    name, label, defaults, rules = "snp", "SNP", DEFAULTS, RULES

    def __init__(self, params: list[torch.nn.Parameter], generators, nets=(), shrink: float = DEFAULTS["shrink"],
                 noise_std: float = DEFAULTS["noise_std"], scope: str = DEFAULTS["scope"]):
        """`params`: the learner's parameters; with scope "networks", those of them inside `nets` (all of
        them when no nets are given)."""
        self.check(locals())
        in_nets = {id(p) for net in nets for p in net.parameters()}
        self.params = [p for p in params if scope == "all" or not nets or id(p) in in_nets]
        self.generators = generators
        self.shrink, self.noise_std = shrink, noise_std
        # Every param has the replica axis first; a replica's slice of all params is one flat vector.
        self.sizes = [p[0].numel() for p in self.params]
        self.chunk_steps = max(1, min(MAX_CHUNK_STEPS, BUFFER_NUMBERS // sum(self.sizes)))
        self.buffer: torch.Tensor | None = None  # [R, chunk_steps, sum(sizes)]
        self.position = self.chunk_steps

    @classmethod
    def from_config(cls, section, target):
        return cls(target.params, target.generators, nets=target.nets, **cls.options(section))

    def _next_noise(self) -> list[torch.Tensor]:
        if self.position == self.chunk_steps:
            n = sum(self.sizes)
            # Drawn on the CPU (where the generators live), then moved beside the parameters.
            noise = torch.stack([torch.randn(self.chunk_steps, n, generator=g) for g in self.generators])
            self.buffer = noise.to(self.params[0].device)
            self.position = 0
        flat = self.buffer[:, self.position]
        self.position += 1
        return [chunk.reshape(p.shape) for chunk, p in zip(flat.split(self.sizes, dim=1), self.params)]

    @torch.no_grad()
    def after_step(self, learner=None) -> None:
        if self.shrink:
            torch._foreach_mul_(self.params, 1 - self.shrink)
        if self.noise_std:
            torch._foreach_add_(self.params, self._next_noise(), alpha=self.noise_std)

    def state_dict(self) -> dict:
        return {"position": self.position, "buffer": None if self.buffer is None else self.buffer.clone()}

    def load_state_dict(self, sd: dict) -> None:
        self.position = int(sd["position"])
        self.buffer = None if sd["buffer"] is None else sd["buffer"].to(self.params[0].device, copy=True)
