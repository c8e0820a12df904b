"""Time-dependent layers for an ODE block's f: weights theta(t) instead of one theta for every t.

Two ways, chosen by `TimeDependence.kind`:

- concat: t is an extra input channel (or feature) of every convolution and linear layer of f, as in
  torchdiffeq's odenet_mnist example (ConcatConv2d). One extra input channel per layer.
- basis: theta(t) = sum_k phi_k(t) theta_k over K basis functions, a Galerkin layer (Massaroli et al. 2020,
  "Dissecting Neural ODEs"). The weights and biases of f's convolutions and linear layers become K copies;
  normalization layers stay autonomous (their affine parameters are not multiplied). Families:
  piecewise (phi_k = 1 on the k-th of K equal parts of [0, T], else 0: K independent layers, each
  initialised as the autonomous one is) and fourier (phi_0 = 1, then sin and cos of 2 pi j t / T for
  j = 1, 2, ...; theta_0 starts as the autonomous layer and the other coefficients at zero, so training
  starts from the autonomous f). K = 1 is the autonomous layer in both families.

A time-dependent f is a `TimeDependent` module, called as f(t, z); the ODE block passes it each stage's time.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from odeflow.errors import check_choice, check_positive

TIME_DEPENDENCES = ("none", "concat", "basis")
BASES = ("piecewise", "fourier")


class TimeDependent(nn.Module):
    """A module whose forward takes (t, x): the ODE block calls such an f with each evaluation's time."""


def as_time(t: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """t as a scalar tensor of `like`'s dtype and device (no copy when it already is one)."""
    return torch.as_tensor(t, dtype=like.dtype, device=like.device)


class ConcatLayer(TimeDependent):
    """layer(cat([t, x])): t fills one extra input channel (dim 1), as torchdiffeq's ConcatConv2d."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
        channel = as_time(t, x).expand_as(x[:, :1])
        return self.layer(torch.cat([channel, x], dim=1))


class PiecewiseConstantBasis(nn.Module):
    """phi_k(t) = 1 where t lies in the k-th of K equal parts of [0, T] (clamped outside), else 0."""

    def __init__(self, size: int, t_final: float) -> None:
        super().__init__()
        self.size, self.t_final = size, t_final
        self.register_buffer("parts", torch.arange(size, dtype=torch.float32), persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        # On the device, without reading t on the host: one synchronisation per evaluation would cost more
        # than the layer.
        part = torch.clamp(torch.floor(t * (self.size / self.t_final)), 0, self.size - 1)
        return (self.parts.to(t.dtype) == part).to(t.dtype)


class FourierBasis(nn.Module):
    """phi_0 = 1, phi_{2j-1} = sin(2 pi j t / T), phi_{2j} = cos(2 pi j t / T): smooth and T-periodic."""

    def __init__(self, size: int, t_final: float) -> None:
        super().__init__()
        self.size, self.t_final = size, t_final
        k = torch.arange(1, size, dtype=torch.float64)
        # phi_k = cos(2 pi j t / T + shift): j = ceil(k / 2), shift -pi/2 (a sine) for odd k. Kept in float64 (a
        # float64 model gets float64 values) and cast to t's dtype on use.
        self.register_buffer("angular", (2 * math.pi / t_final) * torch.ceil(k / 2), persistent=False)
        self.register_buffer("shift", (-math.pi / 2) * (k % 2), persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        one = torch.ones(1, dtype=t.dtype, device=t.device)
        return torch.cat([one, torch.cos(self.angular.to(t.dtype) * t + self.shift.to(t.dtype))])


BASIS_FAMILIES = {"piecewise": PiecewiseConstantBasis, "fourier": FourierBasis}
_LAYER_FUNCTIONS = {nn.Linear: F.linear, nn.Conv1d: F.conv1d, nn.Conv2d: F.conv2d}


class GalerkinLayer(TimeDependent):
    """A linear or convolution layer whose weight and bias at time t are sum_k phi_k(t) theta_k.

    Built from K autonomous layers of one shape (their initial weights become the coefficients theta_k);
    `weight` is (K, *layer weight shape), `bias` (K, out).
    """

    def __init__(self, layers: list[nn.Module], basis: nn.Module, zero_higher: bool) -> None:
        super().__init__()
        first = layers[0]
        self.function = _LAYER_FUNCTIONS[type(first)]
        self.options = (
            {}
            if isinstance(first, nn.Linear)
            else {"stride": first.stride, "padding": first.padding, "dilation": first.dilation, "groups": first.groups}
        )
        self.basis = basis
        self.weight = nn.Parameter(torch.stack([layer.weight.detach() for layer in layers]))
        self.bias = nn.Parameter(torch.stack([layer.bias.detach() for layer in layers]))
        if zero_higher:
            with torch.no_grad():
                self.weight[1:].zero_()
                self.bias[1:].zero_()

    def forward(self, t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
        phi = self.basis(as_time(t, self.weight)).to(self.weight.dtype)
        weight = torch.tensordot(phi, self.weight, dims=1)
        return self.function(x, weight, phi @ self.bias, **self.options)


def call(module: nn.Module, t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """module(t, x) for a time-dependent module, module(x) for any other."""
    return module(t, x) if isinstance(module, TimeDependent) else module(x)


class TimeSequential(nn.Sequential, TimeDependent):
    """nn.Sequential that hands t to its time-dependent members."""

    def forward(self, t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for module in self:
            x = call(module, t, x)
        return x


@dataclass(frozen=True)
class TimeDependence:
    """How f's layers depend on t over [0, t_final]: none (autonomous), concat or basis (K = basis_size)."""

    kind: str = "none"
    basis: str = "piecewise"
    basis_size: int = 4
    t_final: float = 1.0

    def __post_init__(self) -> None:
        check_choice("time_dependence", self.kind, TIME_DEPENDENCES)
        check_choice("basis", self.basis, BASES)
        if isinstance(self.basis_size, bool) or not isinstance(self.basis_size, int):
            check_positive("basis_size", None)
        check_positive("basis_size", self.basis_size)

    @property
    def active(self) -> bool:
        return self.kind != "none"

    def layer(self, make: Callable[[int], nn.Module], in_features: int) -> nn.Module:
        """The layer `make(in_features)` builds (a Linear, Conv1d or Conv2d with a bias), made time-dependent.

        For `none` this is exactly `make(in_features)`: the same module and the same random draws as before
        the option existed.
        """
        if self.kind == "none":
            return make(in_features)
        if self.kind == "concat":
            return ConcatLayer(make(in_features + 1))
        layers = [make(in_features) for _ in range(self.basis_size)]
        basis = BASIS_FAMILIES[self.basis](self.basis_size, self.t_final)
        return GalerkinLayer(layers, basis, zero_higher=self.basis == "fourier")

    def sequential(self, *modules: nn.Module) -> nn.Sequential:
        """nn.Sequential of `modules`, or a TimeSequential that passes t on when f depends on time."""
        return TimeSequential(*modules) if self.active else nn.Sequential(*modules)
