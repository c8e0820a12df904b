"""Parameter counts as the thesis reports them: total, and not in the fully connected classifier."""
from __future__ import annotations

from torch import nn


def count_parameters(model: nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    classifier = getattr(model, "classifier", None)
    in_fc = sum(p.numel() for p in classifier.parameters()) if classifier is not None else 0
    return {"total": total, "not_in_fc": total - in_fc, "in_fc": in_fc}
