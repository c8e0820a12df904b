"""What a hyperopt sweep keeps and decides: its search space, each trial's GPU, trial pruning, the sweep's state
file, the sweep report."""
