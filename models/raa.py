"""The ODEnet of "ResNet After All" (Ott et al.) for vector data such as its concentric spheres.

The input x of d coordinates is read as a one-channel signal of length d; f is a small 1-D convolutional
network over it (1 -> C channels, kernel 1; C -> C, kernel 3; C -> 1, kernel 1; ReLU between), integrated over
t in [0, T], and a linear layer maps the d coordinates of z(T) to the classes. About 3.2k parameters for d = 2
and C = 32. Weights start from Kaiming's normal initialisation (fan in), biases at zero, as the paper's did.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from models.layers import make_activation
from models.ode_block import ODEBlock
from models.solvers import SolverSpec
from odeflow.errors import ConfigError, ModelDataMismatch, check_choice, check_positive

INITIALISATIONS = ("kaiming", "default")


def conv_field(channels: int, activation: str) -> nn.Sequential:
    """f(z) for z of shape (batch, 1, d): conv1x1 -> act -> conv3 -> act -> conv1x1, length d preserved."""
    return nn.Sequential(
        nn.Conv1d(1, channels, 1),
        make_activation(activation),
        nn.Conv1d(channels, channels, 3, padding=1),
        make_activation(activation),
        nn.Conv1d(channels, 1, 1),
    )


def kaiming_init(module: nn.Module) -> None:
    """Kaiming normal (fan in) weights and zero biases for every convolution and linear layer."""
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in")
            nn.init.zeros_(m.bias)


class RAAODENet(nn.Module):
    """x (d,) -> (1, d) -> ODE block over the Conv1d field -> flatten -> Linear(d, classes)."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        channels: int = 32,
        activation: str = "relu",
        init: str = "kaiming",
        t_final: float = 1.0,
        solver: SolverSpec | None = None,
    ) -> None:
        super().__init__()
        if len(input_shape) != 1:
            raise ModelDataMismatch(
                "a vector dataset's (d,) inputs (it reads them as one channel of d coordinates)",
                input_shape,
                "train it on data=raa_spheres or data=spheres, or this dataset with an image model such as "
                "model=odenet_simple",
            )
        if solver is None:
            raise ConfigError("solver", None, "a solver for an ODE model")
        check_positive("channels", channels)
        check_choice("init", init, INITIALISATIONS)
        self.body = ODEBlock(conv_field(channels, activation), solver, t_final)
        self.classifier = nn.Linear(input_shape[0], num_classes)
        if init == "kaiming":
            kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.body(x.unsqueeze(1)).flatten(1))
