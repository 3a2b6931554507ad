"""Problems a config can name with `problem:`; each module defines DEFAULTS, RULES and
`run(cfg, seeds, run_dir, resume)`."""

PROBLEMS = {
    "regression": "rl_plasticity.problems.regression",
    "ppo": "rl_plasticity.problems.ppo",
    "permuted_mnist": "rl_plasticity.problems.permuted_mnist",
    "continual_imagenet": "rl_plasticity.problems.continual_imagenet",
    "incremental_cifar": "rl_plasticity.problems.incremental_cifar",
}
