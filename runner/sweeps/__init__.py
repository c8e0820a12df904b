"""What a hyperopt sweep keeps and decides: trial pruning, the sweep's state file, the sweep report."""
