"""An ODEnet that integrates its input itself: z(0) = x (optionally zero-augmented), no learned lifting.

With 2-D inputs and no augmentation the ODE state is the input plane, so trajectories can be drawn as they
are and a true autonomous ODE cannot make two of them cross (the concentric-spheres experiments of Dupont
et al. 2019 and "ResNet After All"). f is a small MLP: linear -> activation -> linear.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from models.layers import ZeroPadChannels, make_activation
from models.ode_block import ODEBlock
from models.solvers import SolverSpec
from odeflow.errors import ConfigError, ModelDataMismatch, check_positive


class StateODENet(nn.Module):
    """x -> zero-augment to len(x) + augment_dims -> ODE block over f = MLP(hidden) -> linear classifier."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        hidden: int = 32,
        augment_dims: int = 0,
        activation: str = "tanh",
        t_final: float = 1.0,
        solver: SolverSpec | None = None,
    ) -> None:
        super().__init__()
        if len(input_shape) != 1:
            raise ModelDataMismatch(
                "(features,) vectors (it integrates its input)",
                input_shape,
                "train it on a vector dataset (data=spheres or data=raa_spheres), or this dataset with "
                "model=odenet_simple",
            )
        if solver is None:
            raise ConfigError("solver", None, "a solver for an ODE model")
        check_positive("hidden", hidden)
        check_positive("augment_dims", augment_dims, allow_zero=True)
        width = input_shape[0] + augment_dims
        self.augment = ZeroPadChannels(width)
        net = nn.Sequential(nn.Linear(width, hidden), make_activation(activation), nn.Linear(hidden, width))
        self.body = ODEBlock(net, solver, t_final)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.body(self.augment(x)))
