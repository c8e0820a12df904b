"""Whole datasets held as tensors on the training device and batched by index.

No DataLoader workers and no per-batch copies to the device.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch


@dataclass
class Split:
    """Inputs normalised to [-1, 1] and integer labels, already on their device."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device: torch.device | str) -> Split:
        return Split(self.x.to(device), self.y.to(device))

    def batches(
        self, batch_size: int, generator: torch.Generator | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Index batches; shuffled when a generator is given (its state makes the order reproducible)."""
        n = len(self)
        if generator is None:
            order = None
        else:
            order = torch.randperm(n, generator=generator).to(self.y.device)
        for start in range(0, n, batch_size):
            if order is None:
                yield self.x[start : start + batch_size], self.y[start : start + batch_size]
            else:
                idx = order[start : start + batch_size]
                yield self.x[idx], self.y[idx]

    def num_batches(self, batch_size: int) -> int:
        return -(-len(self) // batch_size)


@dataclass
class DataBundle:
    """Train / validation / test splits of one dataset, with what a model needs to fit it."""

    name: str
    train: Split
    val: Split
    test: Split
    class_names: list[str]
    batch_size: int
    input_shape: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        self.input_shape = tuple(self.train.x.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to(self, device: torch.device | str) -> DataBundle:
        return DataBundle(
            self.name,
            self.train.to(device),
            self.val.to(device),
            self.test.to(device),
            self.class_names,
            self.batch_size,
        )

    @property
    def has_validation(self) -> bool:
        """False when the dataset was loaded with val_fraction=0: every training point is trained on."""
        return len(self.val) > 0

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}
