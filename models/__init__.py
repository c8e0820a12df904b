"""ResNets, ODEnets and the ODE block. Plain nn.Modules built from typed arguments; no config objects."""

from models.complex import ComplexNet
from models.ode_block import ODEBlock, backward_nfe, forward_nfe, ode_blocks, set_solver
from models.parameters import count_parameters
from models.simple import SimpleNet
from models.solvers import METHODS, SolverSpec

__all__ = [
    "ComplexNet",
    "ODEBlock",
    "SimpleNet",
    "SolverSpec",
    "METHODS",
    "backward_nfe",
    "count_parameters",
    "forward_nfe",
    "ode_blocks",
    "set_solver",
]
