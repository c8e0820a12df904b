"""FashionMNIST and CIFAR10 through torchvision: downloaded when online, or read from a local root."""

from __future__ import annotations

import functools
import math
import os
import pickle
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np

from data.splits import make_bundle, scale_uint8
from data.tensors import DataBundle
from odeflow.errors import (
    CHECKSUM_FIX,
    DAMAGED_DATASET_FIX,
    DOWNLOAD_OFF,
    DatasetNotFoundError,
    UserError,
    dataset_files_fix,
)

FASHION_MNIST_FILES = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
]
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
CIFAR10_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]


def _torchvision_datasets():
    # Imported on first use: torchvision's import (it loads torch._dynamo) adds about 1.4 s to the start of every
    # command, and only these two loaders need it.
    import torchvision.datasets

    return torchvision.datasets


@functools.cache
def _cifar10_unverified() -> type:
    """torchvision's CIFAR10 reader with the md5 checks reduced to existence checks.

    For files in the standard pickled-batch format whose bytes differ from the official release
    (a re-packed subset, or the small files the tests write).
    """

    class CIFAR10Unverified(_torchvision_datasets().CIFAR10):
        def _check_integrity(self) -> bool:
            return all((Path(self.root) / self.base_folder / name).is_file() for name in CIFAR10_FILES)

        def _load_meta(self) -> None:
            with open(Path(self.root) / self.base_folder / self.meta["filename"], "rb") as f:
                self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    return CIFAR10Unverified


def _missing(folder: Path, names: list[str]) -> list[str]:
    return [n for n in names if not (folder / n).is_file()]


def _read_both_splits(
    dataset: str,
    root: Path,
    folder: Path,
    files: list[str],
    download: bool,
    read: Callable[[bool, bool], object],
    check: Callable[[Path], str | None],
) -> dict[bool, object]:
    """{True: train, False: test} from read(train, download); one clear error when files are missing or
    damaged (`check(path)` says what is wrong with one file, or None)."""
    try:
        return {train: read(train, download and bool(_missing(folder, files))) for train in (True, False)}
    except Exception as exc:  # torchvision raises RuntimeError, URLError or OSError depending on what failed
        missing = _missing(folder, files)
        if not missing:
            for name in files:
                problem = check(folder / name)
                if problem:
                    raise UserError(
                        f"{dataset} file {folder / name} is damaged: {problem}", DAMAGED_DATASET_FIX
                    ) from None
            raise
        reason = "download failed: " + str(exc).splitlines()[0][:100] if download else DOWNLOAD_OFF
        raise DatasetNotFoundError(
            f"{dataset} files not found under {folder} ({reason}); missing: {', '.join(missing)}",
            dataset_files_fix(str(folder), str(folder.relative_to(root))),
        ) from exc


_IDX_ITEM_BYTES = {0x08: 1, 0x09: 1, 0x0B: 2, 0x0C: 4, 0x0D: 4, 0x0E: 8}  # IDX type codes -> bytes per value


def idx_problem(path: Path) -> str | None:
    """What is wrong with an uncompressed IDX file (FashionMNIST's format), or None.

    Written here because torchvision reports a damaged file as a bare assertion or reshape error
    without naming it.
    """
    data = path.read_bytes()
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in _IDX_ITEM_BYTES or data[3] == 0:
        first = data[:4].hex() or "missing"
        return f"not an IDX file (its first bytes are {first}; an IDX file starts with 0000 08 <dims>)"
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        return f"truncated inside its header ({len(data)} bytes)"
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    expected = 4 + 4 * ndim + math.prod(dims) * _IDX_ITEM_BYTES[data[2]]
    if len(data) != expected:
        return (
            f"{'truncated' if len(data) < expected else 'longer than its header says'}: {len(data):,} bytes, "
            f"its header announces {expected:,} ({' x '.join(map(str, dims))} values)"
        )
    return None


def cifar_batch_problem(path: Path) -> str | None:
    """What is wrong with one pickled CIFAR10 batch (or batches.meta), or None."""
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
    except Exception as exc:  # a damaged pickle raises whatever the broken bytes lead to
        return f"not a readable pickled batch ({type(exc).__name__}: {str(exc)[:80]}); truncated or not a CIFAR file"
    if not isinstance(entry, dict):
        return f"holds a {type(entry).__name__}, not a batch dictionary"
    if path.name == "batches.meta":
        return None if "label_names" in entry else "has no label_names"
    if "data" not in entry or "labels" not in entry:
        return f"has no data/labels entries (it has: {', '.join(map(str, entry)) or 'nothing'})"
    values = np.asarray(entry["data"]).size
    if values != 3072 * len(entry["labels"]):
        return f"holds {values:,} pixel values for {len(entry['labels']):,} labels (3,072 per 3x32x32 image expected)"
    return None


def _resolve_root(root: str) -> Path:
    return Path(os.path.expanduser(root)).resolve()


def load_fashion_mnist(
    root: str = "datasets",
    download: bool = True,
    val_fraction: float = 0.2,
    subset: int | None = None,
    batch_size: int = 128,
    seed: int = 0,
) -> DataBundle:
    """FashionMNIST (60k train / 10k test, 1x28x28) from `<root>/FashionMNIST/raw/` (uncompressed IDX files)."""
    base = _resolve_root(root)
    raw = base / "FashionMNIST" / "raw"
    splits = _read_both_splits(
        "FashionMNIST",
        base,
        raw,
        FASHION_MNIST_FILES,
        download,
        lambda train, get: _torchvision_datasets().FashionMNIST(str(base), train=train, download=get),
        idx_problem,
    )
    return make_bundle(
        "fashion_mnist",
        scale_uint8(splits[True].data.numpy())[:, None],
        splits[True].targets.numpy(),
        scale_uint8(splits[False].data.numpy())[:, None],
        splits[False].targets.numpy(),
        FASHION_MNIST_CLASSES,
        val_fraction,
        subset,
        seed,
        batch_size,
    )


def load_cifar10(
    root: str = "datasets",
    download: bool = True,
    verify_checksums: bool = True,
    val_fraction: float = 0.2,
    subset: int | None = None,
    batch_size: int = 128,
    seed: int = 0,
) -> DataBundle:
    """CIFAR10 (50k train / 10k test, 3x32x32) from `<root>/cifar-10-batches-py/` (pickled batches)."""
    base = _resolve_root(root)
    folder = base / "cifar-10-batches-py"
    reader = _torchvision_datasets().CIFAR10 if verify_checksums else _cifar10_unverified()
    try:
        splits = _read_both_splits(
            "CIFAR10",
            base,
            folder,
            CIFAR10_FILES,
            download,
            lambda train, get: reader(str(base), train=train, download=get),
            cifar_batch_problem,
        )
    except RuntimeError as exc:
        if "corrupted" not in str(exc):
            raise
        raise DatasetNotFoundError(
            f"CIFAR10 files under {folder} do not match the official checksums", CHECKSUM_FIX
        ) from exc

    def images(ds) -> np.ndarray:  # a torchvision CIFAR10
        return scale_uint8(ds.data.transpose(0, 3, 1, 2))  # NHWC -> NCHW

    return make_bundle(
        "cifar10",
        images(splits[True]),
        np.asarray(splits[True].targets),
        images(splits[False]),
        np.asarray(splits[False].targets),
        list(splits[True].classes),
        val_fraction,
        subset,
        seed,
        batch_size,
    )
