"""What a run can return to a sweeper, and which way each is better."""

OBJECTIVE_DIRECTIONS = {
    "best_val_loss": "minimize",
    "best_val_acc": "maximize",
    "test_loss": "minimize",
    "test_acc": "maximize",
}
