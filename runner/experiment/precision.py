"""The arithmetic a run computes in (`train.precision`), and the full precision reference solves insist on.

- fp32 (default): float32 throughout, TF32 off for CUDA matmuls and cuDNN convolutions. cuDNN uses TF32 for
  convolutions unless told not to (about 1e-3 relative error per evaluation of f), which makes an adaptive
  solve at a tight tolerance noise-bound: its error estimate then measures the arithmetic, not the model.
- tf32: TF32 for CUDA matmuls and convolutions (Ampere and newer; no effect on CPU).
- bf16: torch.autocast with bfloat16 around the forward pass. The ODE state and the solver's error control
  stay float32 (models.ode_block casts f's output back to the state's dtype).

Re-evaluation, the adaptation's test solve and the gradient checks run under `reference_numerics()`:
float32, TF32 off, autocast off, whatever the run trained with.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch

PRECISIONS = ("fp32", "tf32", "bf16")


def set_tf32(enabled: bool) -> None:
    """TF32 for CUDA matmuls and cuDNN convolutions, on or off (process-wide; harmless without CUDA)."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def apply_precision(precision: str) -> dict[str, Any]:
    """Set the process's TF32 flags for `precision`; what the run computes in, for its record."""
    set_tf32(precision == "tf32")
    return {
        "precision": precision,
        "autocast": "bfloat16" if precision == "bf16" else None,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
    }


def autocast(precision: str, device: torch.device):
    """The forward pass's context: bfloat16 autocast for bf16, nothing otherwise."""
    if precision != "bf16":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


@contextmanager
def reference_numerics(device: torch.device | str = "cpu") -> Iterator[None]:
    """float32 without TF32 or autocast for the duration, whatever the run uses; the flags are restored after."""
    device_type = torch.device(device).type
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    set_tf32(False)
    try:
        with torch.autocast(device_type=device_type, enabled=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
