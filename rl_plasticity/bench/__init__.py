"""Benchmarks: `rl-plasticity bench NAME [--json]`.

Each module listed in BENCHES defines `add_arguments(parser)` (optional) and `run(args) -> dict`:
it prints human-readable lines while it works and returns its figures; the CLI prints them as one
JSON object on the last line when --json is given. The CLI imports every benchmark module to build
its parser, so the modules import what they measure (torch, gymnasium, SB3, problems) inside `run`.
"""

BENCHES = {
    "regression": "rl_plasticity.bench.regression",
    "envs": "rl_plasticity.bench.envs",
    "ppo": "rl_plasticity.bench.ppo_speed",
    "supervised": "rl_plasticity.bench.supervised",
    "sb3": "rl_plasticity.bench.sb3",
    "heads": "rl_plasticity.bench.frozen_heads",
}
