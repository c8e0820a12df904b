"""Writers for small files in the real FashionMNIST (IDX) and CIFAR10 (pickled batch) formats."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np

from data.images import CIFAR10_FILES, FASHION_MNIST_FILES


def write_idx(path: Path, array: np.ndarray) -> None:
    """IDX: magic (0, 0, dtype 0x08 = ubyte, ndim), big-endian int32 dims, then the raw bytes."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_fashion_mnist(root: Path, n_train: int = 60, n_test: int = 20, seed: int = 0) -> dict[str, np.ndarray]:
    """<root>/FashionMNIST/raw/ with the four uncompressed IDX files; returns the arrays written."""
    rng = np.random.default_rng(seed)
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train_x": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_y": np.arange(n_train, dtype=np.uint8) % 10,
        "test_x": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_y": np.arange(n_test, dtype=np.uint8) % 10,
    }
    for name, key in zip(FASHION_MNIST_FILES, ["train_x", "train_y", "test_x", "test_y"], strict=True):
        write_idx(raw / name, arrays[key])
    return arrays


def write_cifar10(root: Path, per_batch: int = 10, n_test: int = 20, seed: int = 0) -> dict[str, np.ndarray]:
    """<root>/cifar-10-batches-py/ with five training batches, a test batch and batches.meta."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    written = {"train_x": [], "train_y": []}
    for name in CIFAR10_FILES:
        if name == "batches.meta":
            meta = {
                "label_names": [
                    "airplane",
                    "automobile",
                    "bird",
                    "cat",
                    "deer",
                    "dog",
                    "frog",
                    "horse",
                    "ship",
                    "truck",
                ]
            }
            (folder / name).write_bytes(pickle.dumps(meta))
            continue
        n = n_test if name == "test_batch" else per_batch
        flat = rng.integers(0, 256, (n, 3072), dtype=np.uint8)  # rows: 1024 red, 1024 green, 1024 blue
        labels = [int(i % 10) for i in range(n)]
        (folder / name).write_bytes(pickle.dumps({"batch_label": name, "data": flat, "labels": labels}))
        if name == "test_batch":
            written["test_x"], written["test_y"] = flat, np.array(labels)
        else:
            written["train_x"].append(flat)
            written["train_y"].append(labels)
    written["train_x"] = np.concatenate(written["train_x"])
    written["train_y"] = np.concatenate(written["train_y"])
    return written
