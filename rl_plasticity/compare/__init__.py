"""`rl-plasticity compare`: group runs by learner, bin their TensorBoard scalars, plot a line and band per
learner (mean +- SE, or IQM or mean with a bootstrap CI) and write the CSV (options.py adds the command's
statistic options to the CLI, command.py reads and bins, summary.py summarises seeds, plot.py draws)."""
