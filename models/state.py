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
from models.time_dependent import TimeDependence
from odeflow.errors import ConfigError, ModelDataMismatch, check_positive


class StateODENet(nn.Module):
    """x -> zero-augment to len(x) + augment_dims -> ODE block over f = MLP(hidden) -> linear classifier.

    time_dependence, basis and basis_size make both linear layers of f depend on t (models.time_dependent).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        hidden: int = 32,
        augment_dims: int = 0,
        activation: str = "tanh",
        t_final: float = 1.0,
        solver: SolverSpec | None = None,
        time_dependence: str = "none",
        basis: str = "piecewise",
        basis_size: int = 4,
    ) -> None:
        super().__init__()
        time = TimeDependence(time_dependence, basis, basis_size, t_final)
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
        net = time.sequential(
            time.layer(lambda n: nn.Linear(n, hidden), width),
            make_activation(activation),
            time.layer(lambda n: nn.Linear(n, width), hidden),
        )
        self.body = ODEBlock(net, solver, t_final)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.body(self.augment(x)))
