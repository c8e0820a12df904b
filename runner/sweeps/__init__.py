"""What a hyperopt sweep keeps and decides: search space, trial GPUs, pruning, its state file and report."""
