"""`rl-plasticity compare`: group runs by learner, bin their TensorBoard scalars, plot mean +- SE and
write the CSV (command.py reads and bins, plot.py draws)."""
