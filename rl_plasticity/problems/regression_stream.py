"""The slowly-changing regression stream (Dohare et al., Nature 2024), one independent stream per seed.

Inputs are `inputs` bits: the first `slow_bits` stay fixed for `change_every` examples and are then
re-drawn (or, with flip_one, one of them flips), the rest are random every example. The target is a
fixed random network of linear threshold units: weights and biases in {-1, +1}; unit i fires when
w_i.x + b_i exceeds beta * (inputs + 1) - S_i with S_i = (inputs - sum(w_i) + b_i) / 2, i.e. the
number of its negative input weights shifted by half its bias, exactly as the paper's reference
implementation computes it (the paper's numbers come from it); the output sums the fired units
with weights in {-1, +1}, plus a bias in {-1, +1}.
"""

from __future__ import annotations

import torch


def _signs(shape, g: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 2, shape, generator=g).float() * 2 - 1


class RegressionStream:
    """Yields chunks of `change_every` examples per seed: X [R, T, inputs], Y [R, T]."""

    def __init__(self, generators: list[torch.Generator], inputs: int = 20, slow_bits: int = 15,
                 change_every: int = 10_000, target_hidden: int = 100, beta: float = 0.7, flip_one: bool = False):
        self.generators = generators
        self.inputs, self.slow_bits, self.change_every, self.flip_one = inputs, slow_bits, change_every, flip_one
        self.w, self.b, self.v, self.c, self.tau = [], [], [], [], []
        for g in generators:  # the target network is each stream's first draw
            w, b = _signs((target_hidden, inputs), g), _signs((target_hidden,), g)
            self.w.append(w), self.b.append(b)
            self.v.append(_signs((target_hidden,), g)), self.c.append(_signs((), g))
            self.tau.append(beta * (inputs + 1) - (inputs - w.sum(1) + b) / 2)
        self.slow = [torch.randint(0, 2, (slow_bits,), generator=g).float() for g in generators]
        self.chunks_drawn = 0

    def target(self, r: int, x: torch.Tensor) -> torch.Tensor:
        fired = ((x @ self.w[r].T + self.b[r]) > self.tau[r]).float()
        return fired @ self.v[r] + self.c[r]

    def _draw_slow(self, r: int, g: torch.Generator) -> None:
        if self.chunks_drawn == 0:
            return  # the first chunk uses the initial bits
        if self.flip_one:
            i = int(torch.randint(0, self.slow_bits, (1,), generator=g))
            self.slow[r][i] = 1 - self.slow[r][i]
        else:
            self.slow[r] = torch.randint(0, 2, (self.slow_bits,), generator=g).float()

    def next_chunk(self) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for r, g in enumerate(self.generators):
            self._draw_slow(r, g)
            fast = torch.randint(0, 2, (self.change_every, self.inputs - self.slow_bits), generator=g).float()
            x = torch.cat([self.slow[r].expand(self.change_every, -1), fast], dim=1)
            xs.append(x), ys.append(self.target(r, x))
        self.chunks_drawn += 1
        return torch.stack(xs), torch.stack(ys)

    def state_dict(self) -> dict:
        return {"generators": [g.get_state() for g in self.generators], "slow": [s.clone() for s in self.slow],
                "chunks_drawn": self.chunks_drawn}

    def load_state_dict(self, sd: dict) -> None:
        for g, s in zip(self.generators, sd["generators"]):
            g.set_state(s)
        self.slow = [s.clone() for s in sd["slow"]]
        self.chunks_drawn = int(sd["chunks_drawn"])
