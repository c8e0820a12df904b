"""Parameter counts as the thesis reports them: total, and not in the fully connected classifier."""

from __future__ import annotations

from torch import nn


def count_parameters(model: nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    classifier = getattr(model, "classifier", None)
    in_fc = sum(p.numel() for p in classifier.parameters()) if classifier is not None else 0
    return {"total": total, "not_in_fc": total - in_fc, "in_fc": in_fc}


def residual_block_count(model: nn.Module) -> int:
    """Residual updates per forward pass: the ResNet counterpart of an ODE block's FNFE."""
    from models.complex import Stage
    from models.simple import ResidualBlock

    return sum(1 for m in model.modules() if isinstance(m, ResidualBlock) or (isinstance(m, Stage) and m.residual))
