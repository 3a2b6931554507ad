"""`rl-plasticity evaluate`: load a saved PPO policy (saved_policy.py) and run it on chosen physics, with
tables, sweeps over physics values, videos and TensorBoard (command.py)."""
