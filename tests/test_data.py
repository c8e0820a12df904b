"""Loaders on small files in the real formats, seeded splits, normalisation and missing-file errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from data import load_cifar10, load_digits, load_fashion_mnist, load_raa_spheres, load_spheres
from odeflow.errors import ConfigError, DatasetNotFoundError, UserError
from tests.dataset_files import write_cifar10, write_fashion_mnist


def test_fashion_mnist_reads_idx_files(tmp_path: Path):
    written = write_fashion_mnist(tmp_path, n_train=50, n_test=20)
    bundle = load_fashion_mnist(root=str(tmp_path), download=False, val_fraction=0.2, batch_size=16)
    assert bundle.sizes() == {"train": 40, "val": 10, "test": 20}
    assert bundle.input_shape == (1, 28, 28) and bundle.num_classes == 10
    expected = torch.as_tensor(written["test_x"].astype(np.float32) / 127.5 - 1.0)
    assert torch.allclose(bundle.test.x[:, 0], expected)  # test order kept, pixels mapped to [-1, 1]
    assert bundle.test.y.tolist() == written["test_y"].tolist()


def test_cifar10_reads_pickled_batches(tmp_path: Path):
    written = write_cifar10(tmp_path, per_batch=8, n_test=12)
    bundle = load_cifar10(root=str(tmp_path), download=False, verify_checksums=False, val_fraction=0.25)
    assert bundle.sizes() == {"train": 30, "val": 10, "test": 12}
    assert bundle.input_shape == (3, 32, 32) and bundle.class_names[0] == "airplane"
    # channel-first: the first 1024 bytes of a row are the red plane
    red = written["test_x"][3, :1024].reshape(32, 32).astype(np.float32) / 127.5 - 1.0
    assert torch.allclose(bundle.test.x[3, 0], torch.as_tensor(red))


def test_cifar10_checksum_mismatch_is_explained(tmp_path: Path):
    write_cifar10(tmp_path)
    with pytest.raises(DatasetNotFoundError, match="verify_checksums=false"):
        load_cifar10(root=str(tmp_path), download=False)


@pytest.mark.parametrize(
    "loader,files",
    [
        (load_fashion_mnist, ["train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]),
        (load_cifar10, ["data_batch_1", "test_batch", "batches.meta"]),
    ],
)
def test_missing_files_name_the_files_and_the_layout(tmp_path: Path, loader, files):
    with pytest.raises(DatasetNotFoundError) as info:
        loader(root=str(tmp_path), download=False)
    message = str(info.value)
    for name in files:
        assert name in message
    assert str(tmp_path) in message and "data.root" in message


def test_split_is_seeded_and_disjoint():
    a, b, c = load_digits(seed=1), load_digits(seed=1), load_digits(seed=2)
    assert torch.equal(a.val.x, b.val.x) and not torch.equal(a.val.x, c.val.x)
    rows = {tuple(r.tolist()) for r in a.train.x.flatten(1)}
    assert not any(tuple(r.tolist()) in rows for r in a.val.x.flatten(1)[:50])


def test_subset_and_normalisation():
    bundle = load_digits(subset=500, val_fraction=0.2)
    assert len(bundle.train) + len(bundle.val) == 500 and len(bundle.val) == 100
    assert bundle.train.x.min() == -1.0 and bundle.train.x.max() == 1.0


def test_subset_larger_than_dataset_is_a_config_error():
    with pytest.raises(ConfigError, match="subset"):
        load_digits(subset=10_000)


def test_spheres_geometry():
    bundle = load_spheres(dim=3, n_train=400, n_test=200, seed=0)
    radius = bundle.test.x.norm(dim=1) * 1.5  # undo the scaling by the outer radius
    inner, outer = radius[bundle.test.y == 0], radius[bundle.test.y == 1]
    assert inner.max() < 0.5 and outer.min() > 1.0 and outer.max() < 1.5
    assert bundle.input_shape == (3,) and bundle.num_classes == 2


def test_batches_cover_the_split_once_in_a_seeded_order():
    split = load_digits().train
    order_a = torch.cat([y for _, y in split.batches(100, torch.Generator().manual_seed(3))])
    order_b = torch.cat([y for _, y in split.batches(100, torch.Generator().manual_seed(3))])
    assert torch.equal(order_a, order_b)
    assert sorted(order_a.tolist()) == sorted(split.y.tolist())
    assert split.num_batches(100) == len(list(split.batches(100)))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def _garbage(path: Path) -> None:
    path.write_bytes(b"<html>404 not found</html>" * 40)


@pytest.mark.parametrize(
    "writer,loader,name,damage,words",
    [
        (write_fashion_mnist, load_fashion_mnist, "train-images-idx3-ubyte", _truncate, "truncated"),
        (write_fashion_mnist, load_fashion_mnist, "t10k-labels-idx1-ubyte", _truncate, "truncated"),
        (write_fashion_mnist, load_fashion_mnist, "t10k-images-idx3-ubyte", _garbage, "not an IDX file"),
        (write_cifar10, load_cifar10, "test_batch", _truncate, "not a readable pickled batch"),
        (write_cifar10, load_cifar10, "data_batch_3", _garbage, "not a readable pickled batch"),
    ],
    ids=["fmnist-truncated-images", "fmnist-truncated-labels", "fmnist-garbage", "cifar-truncated", "cifar-garbage"],
)
def test_a_damaged_dataset_file_is_named_with_what_is_wrong(tmp_path: Path, writer, loader, name, damage, words):
    writer(tmp_path)
    folder = tmp_path / ("FashionMNIST/raw" if loader is load_fashion_mnist else "cifar-10-batches-py")
    damage(folder / name)
    kwargs = {"verify_checksums": False} if loader is load_cifar10 else {}
    with pytest.raises(UserError) as info:
        loader(root=str(tmp_path), download=False, **kwargs)
    assert f"file {folder / name} is damaged: {words}" in str(info.value) and "fix:" in str(info.value)


def test_subset_counts_training_and_validation_samples():
    bundle = load_spheres(n_train=300, n_test=50, subset=5, val_fraction=0.2)
    assert (len(bundle.train), len(bundle.val)) == (4, 1)
    with pytest.raises(ConfigError, match="subset=2 is invalid: expected at least 3"):
        load_spheres(n_train=300, n_test=50, subset=2, val_fraction=0.2)


@pytest.mark.parametrize("dim", [2, 3, 10])
def test_raa_spheres_are_the_papers_three_shells(dim: int):
    bundle = load_raa_spheres(dim=dim, n_train=2000, n_test=1000, val_fraction=0.2, seed=1)
    x = torch.cat([bundle.train.x, bundle.val.x])
    y = torch.cat([bundle.train.y, bundle.val.y])
    assert x.shape == (2000, dim) and bundle.test.x.shape == (1000, dim) and bundle.input_shape == (dim,)
    for points, labels, n in ((x, y, 2000), (bundle.test.x, bundle.test.y, 1000)):
        radius = points.double().norm(dim=1)
        shells = [(0.10, 0.15, 0, n // 4), (0.25, 0.30, 1, n // 2), (0.40, 0.45, 0, n // 4)]
        for low, high, label, count in shells:
            on_shell = (radius >= low - 1e-6) & (radius <= high + 1e-6)
            assert int(on_shell.sum()) == count  # every point on one of the three shells, in the paper's shares
            assert bool((labels[on_shell] == label).all())
        # the radius is (b - a) u^(1/d) + a: in d dimensions most points lie near the outer edge of each shell
        inner = radius[radius < 0.2]
        assert float(((inner - 0.10) / 0.05).pow(dim).mean()) == pytest.approx(0.5, abs=0.06)
    # directions are uniform on the sphere: no coordinate is favoured
    assert float((x / x.norm(dim=1, keepdim=True)).mean(dim=0).abs().max()) < 0.1


def test_raa_spheres_split_and_seed():
    a, b = load_raa_spheres(seed=0), load_raa_spheres(seed=0)
    # the paper's split: all 2,000 points trained on, no validation part unless asked for
    assert torch.equal(a.train.x, b.train.x) and a.sizes() == {"train": 2000, "val": 0, "test": 1000}
    assert not a.has_validation
    held_out = load_raa_spheres(seed=0, val_fraction=0.2)
    assert held_out.sizes() == {"train": 1600, "val": 400, "test": 1000} and held_out.has_validation
    assert not torch.equal(load_raa_spheres(seed=1).train.x, a.train.x)
