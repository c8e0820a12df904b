"""Registries for the layer choices a config can name: activations and normalizations."""

from __future__ import annotations

import torch
from torch import nn

from odeflow.errors import check_choice

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "softplus": nn.Softplus, "none": nn.Identity}
NORMALIZATIONS = ("group", "batch", "none")


def make_activation(name: str, key: str = "activation") -> nn.Module:
    return ACTIVATIONS[check_choice(key, name, ACTIVATIONS)]()


def group_count(channels: int, max_groups: int = 32) -> int:
    """The largest divisor of `channels` that is at most `max_groups` (GroupNorm needs a divisor)."""
    return max(g for g in range(1, min(max_groups, channels) + 1) if channels % g == 0)


def normalization(name: str, channels: int, image: bool = True, key: str = "norm") -> nn.Module:
    """GroupNorm, BatchNorm (2d for images, 1d for vectors) or nothing, over `channels` features."""
    check_choice(key, name, NORMALIZATIONS)
    if name == "group":
        # On vectors a group of one feature would normalise it to a constant; one group is LayerNorm.
        return nn.GroupNorm(group_count(channels) if image else 1, channels)
    if name == "batch":
        return nn.BatchNorm2d(channels) if image else nn.BatchNorm1d(channels)
    return nn.Identity()


def zero_pad_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Append zero channels (dim 1) up to `channels`: augmentation (Dupont et al. 2019) and ResNet shortcuts."""
    extra = channels - x.shape[1]
    if extra <= 0:
        return x
    return torch.cat([x, x.new_zeros((x.shape[0], extra) + tuple(x.shape[2:]))], dim=1)


class ZeroPadChannels(nn.Module):
    """Append zero channels so the output has `channels` channels."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return zero_pad_channels(x, self.channels)
