"""The shared rating datasets and their fixed protocols (METHODS.md section 6), for the benchmarks.

``load_split(name)`` gives ``(train, test)``: the random 90/10 split with seed 42, or
Douban's fixed Monti split.  ``carve(train)`` gives ``(inner, valid)``: 10 % of the
training entries (seed 0) for anything that is tuned or early-stopped; the test part is
never used for a choice.  ``BiasBaseline()`` carves exactly the same validation part.
"""

from __future__ import annotations

import time
from pathlib import Path

import lfopt

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"
DATASETS = {  # name: (file under DATA_DIR, split)
    "ml-100k": ("ml-100k/u.data", "random"),
    "ml-1m": ("ml-1m/ratings.dat", "random"),
    "douban": ("douban-monti/training_test_dataset.mat", "fixed"),
    "yelp": ("yelp/user_business.dat", "random"),
    "amazon": ("amazon/user_item.dat", "random"),
}
SPLIT_SEED = 42
VALID_SEED = 0


def load_split(name: str, data_dir=DATA_DIR):
    """``(train, test, info)`` of a shared dataset under its protocol; info has the load time and sizes."""
    if name not in DATASETS:
        raise SystemExit(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    rel, split = DATASETS[name]
    path = Path(data_dir) / rel
    if not path.is_file():
        raise FileNotFoundError(f"{path}: dataset {name} not found")
    t0 = time.perf_counter()
    data = lfopt.load_data(path)
    train, test = lfopt.fixed_split(data) if split == "fixed" else lfopt.random_split(data, 0.1, seed=SPLIT_SEED)
    info = {"name": name, "path": str(path), "split": "fixed (Monti)" if split == "fixed" else
            f"random 90/10 seed {SPLIT_SEED}", "n_users": data.n_users, "n_items": data.n_items,
            "n_train": train.nnz, "n_test": test.nnz, "load_seconds": time.perf_counter() - t0}
    return train, test, info


def dataset_names(ap, text: str) -> list[str]:
    """The comma-separated dataset names of a ``--datasets`` option (``ap.error`` on unknown ones)."""
    names = [d.strip() for d in text.split(",") if d.strip()]
    bad = [n for n in names if n not in DATASETS]
    if bad:
        ap.error(f"unknown dataset(s) {bad}; choose from {', '.join(DATASETS)}")
    return names


def claim_output(ap, path, force: bool) -> None:
    """Fail before a long run, not after it, when ``path`` exists and ``--force`` was not given."""
    from lfopt.results import check_writable

    if path:
        try:
            check_writable(path, force)
        except FileExistsError:
            ap.error(f"{path} exists; pass --force to replace it")


def publish(text: str, path, force: bool) -> None:
    """Print the report, and write it to ``path`` (atomically; replacing only with ``force``) if given."""
    from lfopt.results import write_atomic

    print()
    print(text)
    if path:
        write_atomic(path, text.encode(), overwrite=force)
        print(f"written to {path}")


def carve(train, fraction: float = 0.1, seed: int = VALID_SEED):
    """``(inner, valid)``: the validation part carved from the training data."""
    return lfopt.random_split(train, fraction, seed=seed)


def mean_row_count(data) -> float:
    """2 |K| / (m + n): the average number of entries of a row (user or item) with any entry.

    A uniform penalty lam0 on every row puts the same total weight on the factors as
    the count-weighted lam1 * n_u when lam0 = lam1 * mean_row_count.
    """
    m = int((data.user_counts() > 0).sum())
    n = int((data.item_counts() > 0).sum())
    return 2.0 * data.nnz / (m + n)
