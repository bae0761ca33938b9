"""Shared fixtures for the data-layer, validation, persistence and CLI tests.

The real datasets live outside the repository, in ``../shared/data`` relative
to the project root (see that folder's README.md).  Tests that need one are
skipped cleanly when it is absent, so the suite also runs on a bare checkout.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import lfopt

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"

ML100K = "ml-100k/u.data"
ML1M = "ml-1m/ratings.dat"
DOUBAN = "douban-monti/training_test_dataset.mat"
YELP = "yelp/user_business.dat"
AMAZON = "amazon/user_item.dat"
LASTFM = "lastfm/user_artist.dat"


def dataset_path(relpath: str) -> Path:
    """Path of a shared dataset, or skip the calling test if it is not there."""
    path = DATA_DIR / relpath
    if not path.is_file():
        pytest.skip(f"dataset {relpath} not found under {DATA_DIR}")
    return path


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA_DIR.is_dir():
        pytest.skip(f"shared datasets not found at {DATA_DIR}")
    return DATA_DIR


@pytest.fixture(scope="session")
def shared_dataset():
    """``shared_dataset(relpath) -> Path``, skipping the test when the file is absent."""
    return dataset_path


@pytest.fixture(scope="session")
def ml100k_path() -> Path:
    return dataset_path(ML100K)


@pytest.fixture(scope="session")
def ml1m_path() -> Path:
    return dataset_path(ML1M)


@pytest.fixture(scope="session")
def douban_path() -> Path:
    return dataset_path(DOUBAN)


@pytest.fixture(scope="session")
def ml100k(ml100k_path) -> lfopt.Interactions:
    """MovieLens 100K, loaded once (treat as read-only)."""
    return lfopt.load_data(ml100k_path)


@pytest.fixture(scope="session")
def douban(douban_path) -> lfopt.Interactions:
    return lfopt.load_data(douban_path)


@pytest.fixture(scope="session")
def small_synthetic() -> lfopt.Interactions:
    """A small synthetic dataset (treat as read-only)."""
    return lfopt.synthetic(n_users=120, n_items=80, nnz=2400, seed=3)


@pytest.fixture(scope="session")
def small_split(small_synthetic):
    return lfopt.random_split(small_synthetic, 0.1, seed=0)


@pytest.fixture(scope="session")
def fitted_model(small_split) -> lfopt.LatentFactorModel:
    """A small ALS model fitted on ``small_split[0]`` (integer IDs)."""
    train, _ = small_split
    return lfopt.LatentFactorModel(rank=3, optimizer="als", epochs=3, lam=0.05, seed=1).fit(train)


@pytest.fixture(scope="session")
def string_id_data(small_synthetic) -> lfopt.Interactions:
    """The small synthetic data with string user and item IDs."""
    d = small_synthetic
    users = np.array([f"user-{k}" for k in range(d.n_users)])[d.users]
    items = np.array([f"item-{k}" for k in range(d.n_items)])[d.items]
    return lfopt.Interactions.from_arrays(users, items, d.values, name="strings")


@pytest.fixture(scope="session")
def string_id_model(string_id_data) -> lfopt.LatentFactorModel:
    return lfopt.LatentFactorModel(rank=3, optimizer="als", epochs=2, lam=0.05, seed=2).fit(string_id_data)


@pytest.fixture
def write(tmp_path):
    """``write(name, text_or_bytes) -> Path``: create a file under tmp_path."""

    def _write(name: str, content) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            path.write_text(content)
        else:
            path.write_bytes(content)
        return path

    return _write


@pytest.fixture
def small_ratings_file(tmp_path, small_synthetic) -> Path:
    """The small synthetic data as a whitespace-separated ``user item rating`` file."""
    d = small_synthetic
    path = tmp_path / "small.tsv"
    lines = [f"{u}\t{i}\t{v:.4f}" for u, i, v in zip(d.users.tolist(), d.items.tolist(), d.values.tolist())]
    path.write_text("\n".join(lines) + "\n")
    return path

