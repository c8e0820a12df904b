"""Seeded subset and validation split, shared by every dataset."""

from __future__ import annotations

import numpy as np
import torch

from data.tensors import DataBundle, Split
from odeflow.errors import ConfigError, check_fraction, check_positive


def make_bundle(
    name: str,
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    class_names: list[str],
    val_fraction: float,
    subset: int | None,
    seed: int,
    batch_size: int,
) -> DataBundle:
    """Take an optional seeded subset of the training pool, then hold out `val_fraction` of it for validation.

    `subset` counts both splits: subset=5 with val_fraction=0.2 trains on 4 samples and validates on 1.
    val_fraction=0 trains on the whole pool and leaves the validation split empty ("ResNet After All" trained on
    all its points and evaluated the final iterate): the run then needs train.evaluate=final.

    Inputs must already be float arrays normalised to [-1, 1]; labels integer class indices.
    """
    if val_fraction != 0:  # 0: no validation split
        check_fraction("val_fraction", val_fraction)
    check_positive("batch_size", batch_size)
    rng = np.random.default_rng(seed)
    pool = len(train_y)
    if subset is not None:
        check_positive("subset", subset)
        if subset > pool:
            raise ConfigError(
                "subset", subset, f"at most {pool}, the size of the {name} training set (or null for all of it)"
            )
        keep = rng.choice(pool, size=subset, replace=False)
        train_x, train_y, pool = train_x[keep], train_y[keep], subset
    order = rng.permutation(pool)
    n_val = int(round(val_fraction * pool))
    if (n_val == 0 or n_val == pool) and subset is not None and val_fraction > 0:
        smallest = next(n for n in range(2, 10**7) if 0 < round(val_fraction * n) < n)
        raise ConfigError(
            "subset",
            subset,
            f"at least {smallest}: the subset is split into training and validation "
            f"samples (val_fraction={val_fraction:g}) and each split needs one",
        )
    if (n_val == 0 and val_fraction > 0) or n_val == pool:
        raise ConfigError(
            "val_fraction",
            val_fraction,
            f"0 (no validation split) or a fraction that leaves both splits non-empty for {pool} training samples",
        )
    val_idx, train_idx = order[:n_val], order[n_val:]
    return DataBundle(
        name=name,
        train=_split(train_x[train_idx], train_y[train_idx]),
        val=_split(train_x[val_idx], train_y[val_idx]),
        test=_split(test_x, test_y),
        class_names=list(class_names),
        batch_size=int(batch_size),
    )


def _split(x: np.ndarray, y: np.ndarray) -> Split:
    return Split(
        torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32), torch.as_tensor(np.asarray(y), dtype=torch.long)
    )


def scale_uint8(images: np.ndarray) -> np.ndarray:
    """uint8 pixels [0, 255] -> float32 [-1, 1] (thesis 5.3)."""
    return images.astype(np.float32) / 127.5 - 1.0
