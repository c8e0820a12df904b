"""The complex architecture of thesis section 7.3.2: three stages of conv -> max-pool -> norm -> activation.

ResNet: each stage adds a zero-padded shortcut to the conv output before pooling (no 1x1 conv, so no
extra parameters). ODEnet: the image is zero-padded up to the last stage's channel count so the ODE state
keeps one shape; f strips all but `keep_zero_channels` of the zero channels, runs the three stages and
zero-pads the small output back to the full spatial size; after the block the spatial padding is removed
before the classifier ("Getting Correct Dimensions", thesis 7.3.2).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import ZeroPadChannels, make_activation, normalization, zero_pad_channels
from models.simple import BLOCK_KINDS, check_time_dependence, make_body
from models.solvers import SolverSpec
from models.time_dependent import TimeDependence, TimeDependent
from odeflow.errors import ConfigError, ModelDataMismatch, check_choice, check_positive

POOL = 2


def pooled_size(size: int, stages: int) -> int:
    """Spatial size after `stages` 2x2 max-pools with ceil_mode (28 -> 14 -> 7 -> 4)."""
    for _ in range(stages):
        size = math.ceil(size / POOL)
    return size


class Stage(nn.Module):
    """conv3x3 -> [+ zero-padded input] -> max-pool -> norm -> activation."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        residual: bool,
        kernel_size: int,
        act: str,
        norm: str,
        time: TimeDependence | None = None,
    ) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.residual = residual
        self.conv = (time or TimeDependence()).layer(
            lambda c: nn.Conv2d(c, out_channels, kernel_size, padding=kernel_size // 2), in_channels
        )
        self.post = nn.Sequential(
            nn.MaxPool2d(POOL, ceil_mode=True), normalization(norm, out_channels), make_activation(act)
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        """t: the time, for a stage of a time-dependent f."""
        y = self.conv(x) if t is None else self.conv(t, x)
        if self.residual:
            y = y + zero_pad_channels(x, self.out_channels)
        return self.post(y)


class PaddedStages(nn.Module):
    """f of the complex ODEnet: strip zero channels, run the stages, zero-pad back to the state's shape."""

    def __init__(self, stages: nn.Sequential, read_channels: int) -> None:
        super().__init__()
        self.stages = stages
        self.read_channels = read_channels

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.padded(self.stages(z[:, : self.read_channels]), z)

    @staticmethod
    def padded(y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return F.pad(y, (0, z.shape[-1] - y.shape[-1], 0, z.shape[-2] - y.shape[-2]))


class TimePaddedStages(PaddedStages, TimeDependent):
    """PaddedStages whose stages' convolutions depend on t."""

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        y = z[:, : self.read_channels]
        for stage in self.stages:
            y = stage(y, t)
        return self.padded(y, z)


class ComplexNet(nn.Module):
    """Thesis 7.3.2 complex ResNet (block="residual") or ODEnet (block="ode"), for (C, H, W) images.

    time_dependence, basis and basis_size make the ODEnet's three convolutions depend on t
    (models.time_dependent); a ResNet takes none only.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        block: str = "ode",
        stage_channels: Sequence[int] = (56, 128, 256),
        kernel_size: int = 3,
        keep_zero_channels: int = 1,
        activation: str = "relu",
        norm: str = "group",
        t_final: float = 1.0,
        solver: SolverSpec | None = None,
        time_dependence: str = "none",
        basis: str = "piecewise",
        basis_size: int = 4,
    ) -> None:
        super().__init__()
        time = TimeDependence(time_dependence, basis, basis_size, t_final)
        if len(input_shape) != 3:
            raise ModelDataMismatch(
                "(channels, height, width) images",
                input_shape,
                "train it on an image dataset (data=digits, data=fashion_mnist, data=cifar10), or this dataset with "
                "model=odenet_simple or a resnet_simple_* model",
            )
        if not stage_channels:
            raise ConfigError("stage_channels", stage_channels, "a non-empty list of channel counts")
        for c in stage_channels:
            check_positive("stage_channels", c)
        check_positive("kernel_size", kernel_size)
        check_positive("keep_zero_channels", keep_zero_channels, allow_zero=True)
        in_channels, height, width = input_shape
        out_channels = stage_channels[-1]
        self.out_size = (pooled_size(height, len(stage_channels)), pooled_size(width, len(stage_channels)))
        residual = check_choice("block", block, BLOCK_KINDS) == "residual"
        check_time_dependence(block, time)
        first = in_channels if residual else in_channels + keep_zero_channels
        if not residual and first > out_channels:
            raise ConfigError(
                "stage_channels",
                list(stage_channels),
                f"a last stage of at least {first} channels (input channels + keep_zero_channels)",
            )
        widths = [first, *stage_channels]
        stages = nn.Sequential(
            *(Stage(i, o, residual, kernel_size, activation, norm, time) for i, o in itertools.pairwise(widths))
        )
        if residual:
            # The complex ResNet's shortcuts live inside its stages (before pooling), not around them.
            self.stem: nn.Module = nn.Identity()
            self.body: nn.Module = stages
        else:
            self.stem = ZeroPadChannels(out_channels)
            padded = TimePaddedStages if time.active else PaddedStages
            self.body = make_body(block, [padded(stages, first)], solver, t_final)
        features = out_channels * self.out_size[0] * self.out_size[1]
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(features, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.body(self.stem(x))
        h, w = self.out_size
        return self.classifier(z[:, :, :h, :w])
