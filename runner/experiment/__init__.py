"""One run from a composed config to its results: the four stages, training, evaluation, factories, checkpoints."""
