"""Datasets as tensors: loaders (one per config file in conf/data) and the index-batched splits."""

from data.images import load_cifar10, load_fashion_mnist
from data.offline import load_digits, load_raa_spheres, load_spheres
from data.tensors import DataBundle, Split

__all__ = [
    "DataBundle",
    "Split",
    "load_cifar10",
    "load_digits",
    "load_fashion_mnist",
    "load_raa_spheres",
    "load_spheres",
]
