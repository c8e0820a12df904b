"""Datasets that need no network: scikit-learn's bundled digits and two synthetic concentric-spheres sets."""

from __future__ import annotations

import numpy as np

from data.splits import make_bundle
from data.tensors import DataBundle
from odeflow.errors import ConfigError, check_fraction, check_positive


def load_digits(
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    subset: int | None = None,
    batch_size: int = 128,
    seed: int = 0,
    root: str | None = None,
) -> DataBundle:
    """scikit-learn's 1,797 handwritten 8x8 digits (real data, shipped with the package) as 1x8x8 images.

    There is no official test split, so a stratified, seeded `test_fraction` is held out first.
    `root` is accepted for a uniform data config and unused.
    """
    # Imported here: scikit-learn's datasets and model_selection add about 0.8 s to the start of every command.
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    check_fraction("test_fraction", test_fraction)
    digits = sklearn_digits()
    images = (digits.images.astype(np.float32) / 8.0 - 1.0)[:, None]  # pixel values 0..16 -> [-1, 1]
    train_x, test_x, train_y, test_y = train_test_split(
        images, digits.target, test_size=test_fraction, stratify=digits.target, random_state=seed
    )
    return make_bundle(
        "digits",
        train_x,
        train_y,
        test_x,
        test_y,
        [str(c) for c in digits.target_names],
        val_fraction,
        subset,
        seed,
        batch_size,
    )


def unit_directions(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """n directions uniform on the unit sphere in `dim` dimensions (normalised Gaussian draws)."""
    directions = rng.standard_normal((n, dim))
    return directions / np.linalg.norm(directions, axis=1, keepdims=True)


def sample_spheres(
    n: int, dim: int, inner_radius: float, shell: tuple[float, float], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """n points, half uniform in the ball |x| < inner_radius (class 0), half uniform in the shell (class 1).

    Dupont et al. (2019): no homeomorphism of R^dim maps these classes apart, so an ODE flow in the
    input space cannot separate them without augmented dimensions.
    """
    n_inner = n // 2
    directions = unit_directions(n, dim, rng)
    u = rng.random(n)
    low = np.where(np.arange(n) < n_inner, 0.0, shell[0])
    high = np.where(np.arange(n) < n_inner, inner_radius, shell[1])
    # Radius with density proportional to r^(dim-1) between low and high: uniform in volume.
    radii = (low**dim + u * (high**dim - low**dim)) ** (1.0 / dim)
    labels = (np.arange(n) >= n_inner).astype(np.int64)
    return (directions * radii[:, None]).astype(np.float32), labels


def load_spheres(
    dim: int = 2,
    n_train: int = 2000,
    n_test: int = 1000,
    inner_radius: float = 0.5,
    shell_inner: float = 1.0,
    shell_outer: float = 1.5,
    val_fraction: float = 0.2,
    subset: int | None = None,
    batch_size: int = 128,
    seed: int = 0,
    root: str | None = None,
) -> DataBundle:
    """Concentric spheres in `dim` dimensions, scaled by the outer radius into [-1, 1]."""
    check_positive("dim", dim)
    check_positive("n_train", n_train)
    check_positive("n_test", n_test)
    if not 0 < inner_radius < shell_inner < shell_outer:
        raise ConfigError(
            "inner_radius", (inner_radius, shell_inner, shell_outer), "0 < inner_radius < shell_inner < shell_outer"
        )
    rng = np.random.default_rng(seed)
    shell = (shell_inner, shell_outer)
    train_x, train_y = sample_spheres(n_train, dim, inner_radius, shell, rng)
    test_x, test_y = sample_spheres(n_test, dim, inner_radius, shell, rng)
    return make_bundle(
        "spheres",
        train_x / shell_outer,
        train_y,
        test_x / shell_outer,
        test_y,
        ["inner", "outer"],
        val_fraction,
        subset,
        seed,
        batch_size,
    )


# "ResNet After All" (Ott et al.): three thin shells, inner and outer class 0, middle class 1.
RAA_SHELLS = (((0.10, 0.15), 0, 0.25), ((0.25, 0.30), 1, 0.5), ((0.40, 0.45), 0, 0.25))  # (radii, label, share)


def sample_raa_shells(n: int, dim: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n points on RAA's three shells: a quarter in [0.10, 0.15] (class 0), half in [0.25, 0.30] (class 1),
    a quarter in [0.40, 0.45] (class 0); no noise.

    The radius is drawn as (b - a) * u^(1/dim) + a, as the paper's data was, which is close to but not exactly
    uniform in volume on a thin shell; the direction is uniform on the sphere.
    """
    counts = [int(n * share) for _, _, share in RAA_SHELLS]
    counts[1] += n - sum(counts)  # an n not divisible by 4: the middle shell takes the rest
    radii, labels = [], []
    for ((low, high), label, _), count in zip(RAA_SHELLS, counts, strict=True):
        radii.append((high - low) * rng.random(count) ** (1.0 / dim) + low)
        labels.append(np.full(count, label, dtype=np.int64))
    radius = np.concatenate(radii)
    return (unit_directions(n, dim, rng) * radius[:, None]).astype(np.float32), np.concatenate(labels)


def load_raa_spheres(
    dim: int = 2,
    n_train: int = 2000,
    n_test: int = 1000,
    val_fraction: float = 0.0,
    subset: int | None = None,
    batch_size: int = 128,
    seed: int = 0,
    root: str | None = None,
) -> DataBundle:
    """RAA's concentric spheres in `dim` dimensions (the paper used 2, 3, 10 and 900), unscaled (radii < 0.45).

    Like the paper, every one of the 2,000 training points is trained on (no validation split, so the run
    evaluates its final iterate); `val_fraction` > 0 holds that share out for validation when asked for.
    """
    check_positive("dim", dim)
    check_positive("n_train", n_train)
    check_positive("n_test", n_test)
    rng = np.random.default_rng(seed)
    train_x, train_y = sample_raa_shells(n_train, dim, rng)
    test_x, test_y = sample_raa_shells(n_test, dim, rng)
    return make_bundle(
        "raa_spheres",
        train_x,
        train_y,
        test_x,
        test_y,
        ["shells 1 and 3", "shell 2"],
        val_fraction,
        subset,
        seed,
        batch_size,
    )
