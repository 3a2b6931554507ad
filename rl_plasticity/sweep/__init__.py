"""`rl-plasticity sweep`: every (config x seed) as its own run, on local processes or Ray, restartable.

command.py parses the sweep and keeps its manifest; backends.py runs the runs; runs.py starts and
watches one run's process (child.py is that process's entry point); status.py draws the status line;
tblayout.py writes the TensorBoard layout that compares learners."""
