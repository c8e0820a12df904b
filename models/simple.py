"""The simple architecture of thesis section 7.3.1, as an ODEnet or a ResNet of matched structure.

stem (1x1 conv with stride, or a linear layer for vector data) -> optional activation -> zero-augment ->
body (one ODE block, or N residual blocks) -> linear classifier. The body's f is conv3x3 -> norm ->
activation (linear -> norm -> activation for vectors), the same function in both families.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from models.layers import ZeroPadChannels, make_activation, normalization
from models.ode_block import ODEBlock
from models.solvers import SolverSpec
from models.time_dependent import TimeDependence
from odeflow.errors import ConfigError, ModelDataMismatch, check_choice, check_positive

BLOCK_KINDS = ("ode", "residual")


class ResidualBlock(nn.Module):
    """z + f(z): one explicit Euler step of size 1."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z + self.net(z)


def dynamics(width: int, image: bool, act: str, norm: str, time: TimeDependence | None = None) -> nn.Sequential:
    """f of the simple models: conv3x3 (or linear) -> norm -> activation, width preserved; with `time`, the
    conv (or linear) layer depends on t."""
    time = time or TimeDependence()
    layer = time.layer(
        (lambda c: nn.Conv2d(c, width, 3, padding=1)) if image else (lambda c: nn.Linear(c, width)), width
    )
    return time.sequential(layer, normalization(norm, width, image=image), make_activation(act))


def check_time_dependence(block: str, time: TimeDependence) -> None:
    """A ResNet's blocks are steps, not an ODE: they have no time to depend on."""
    if block == "residual" and time.active:
        raise ConfigError(
            "time_dependence",
            time.kind,
            "none for a ResNet (time-dependent weights belong to an ODE block)",
            "leave model.time_dependence unset, or use an ODEnet (model=odenet_simple, odenet_complex, odenet_state)",
        )


def make_body(kind: str, nets: Sequence[nn.Module], solver: SolverSpec | None, t_final: float) -> nn.Module:
    """One ODE block over f, or a chain of residual blocks (one per net)."""
    check_choice("block", kind, BLOCK_KINDS)
    if kind == "residual":
        return nn.Sequential(*(ResidualBlock(n) for n in nets))
    if solver is None:
        raise ConfigError("solver", None, "a solver for an ODE model")
    if len(nets) != 1:
        raise ConfigError("num_blocks", len(nets), "1 for an ODE block (its weights are shared over time)")
    return ODEBlock(nets[0], solver, t_final)


class SimpleNet(nn.Module):
    """Thesis 7.3.1 simple ODEnet / small ResNet / large ResNet, for images (C, H, W) or vectors (D,).

    time_dependence (none, concat or basis), basis (piecewise or fourier) and basis_size (K) make the ODE
    block's f depend on t (models.time_dependent); a ResNet takes none only.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        block: str = "ode",
        num_blocks: int = 1,
        channels: int = 64,
        augment_dims: int = 2,
        stride: int = 2,
        activation: str = "relu",
        activation_before: str = "none",
        norm: str = "group",
        t_final: float = 1.0,
        solver: SolverSpec | None = None,
        time_dependence: str = "none",
        basis: str = "piecewise",
        basis_size: int = 4,
    ) -> None:
        super().__init__()
        time = TimeDependence(time_dependence, basis, basis_size, t_final)
        check_time_dependence(block, time)
        check_positive("channels", channels)
        check_positive("augment_dims", augment_dims, allow_zero=True)
        check_positive("stride", stride)
        check_positive("num_blocks", num_blocks)
        image = len(input_shape) == 3
        if len(input_shape) not in (1, 3):
            raise ModelDataMismatch(
                "(channels, height, width) images or (features,) vectors",
                input_shape,
                "train it on one of the datasets of conf/data",
            )
        width = channels + augment_dims
        if image:
            in_channels, height, width_px = input_shape
            stem: nn.Module = nn.Conv2d(in_channels, channels, 1, stride=stride)
            out_h, out_w = (height - 1) // stride + 1, (width_px - 1) // stride + 1
            features = width * out_h * out_w
        else:
            stem = nn.Linear(input_shape[0], channels)
            features = width
        self.stem = nn.Sequential(stem, make_activation(activation_before, "activation_before"), ZeroPadChannels(width))
        self.body = make_body(
            block, [dynamics(width, image, activation, norm, time) for _ in range(num_blocks)], solver, t_final
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(features, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.body(self.stem(x)))
