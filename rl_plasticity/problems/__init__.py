"""Problems a config can name with `problem:`; each module defines DEFAULTS, RULES and
`run(cfg, seeds, run_dir, resume)`."""

PROBLEMS = {
    "regression": "rl_plasticity.problems.regression",
    "ppo": "rl_plasticity.problems.ppo",
}
