"""Options and steps shared by several subcommands."""

from __future__ import annotations

import argparse
import sys

from ..data.io import FORMATS, load
from ..data.split import fixed_split, random_split
from ..data.synthetic import synthetic
from ..errors import ConfigError


def add_data_options(p: argparse.ArgumentParser, default_synthetic: bool = True) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", metavar="PATH",
                   help="ratings file" + (" (default: the built-in synthetic dataset)" if default_synthetic else ""),
                   required=not default_synthetic)
    g.add_argument("--format", choices=FORMATS, help="file format (default: guessed from the file name)")
    g.add_argument("--columns", metavar="MAP",
                   help="column mapping for csv/parquet/tsv, e.g. 'user=userId,item=movieId,rating=stars'")
    g.add_argument("--duplicates", choices=("error", "mean", "last"), default="error",
                   help="repeated (user, item) pairs: fail (default), average them, or keep the last")


def add_output_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("output")
    g.add_argument("--output", metavar="JSON", help="write results (metrics, options, history) to this JSON file")
    g.add_argument("--overwrite", action="store_true", help="allow replacing existing output/model files")
    g.add_argument("--quiet", "-q", action="store_true", help="no progress output")


def add_backend_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("backend")
    g.add_argument("--backend", choices=("numba", "torch"), default="numba",
                   help="numba (CPU kernels, default) or torch (needs PyTorch: pip install \"lfopt[torch]\")")
    g.add_argument("--device", default=None, help="torch backend: cpu (default), cuda or cuda:N")


def parse_columns(text: str | None):
    if not text:
        return None
    out = {}
    for part in text.split(","):
        if "=" not in part:
            raise ConfigError(f"--columns: expected FIELD=COLUMN pairs separated by commas, got {part!r}")
        key, col = (s.strip() for s in part.split("=", 1))
        out[key] = int(col) if col.isdigit() else col
    return out


def load_dataset(args, **synthetic_kwargs):
    """The dataset named by --data, or the synthetic default."""
    if args.data is None:
        return synthetic(seed=getattr(args, "seed", 0), **synthetic_kwargs)
    return load(args.data, args.format, columns=parse_columns(args.columns), duplicates=args.duplicates)


def split_dataset(data, test_fraction: float, seed: int):
    """A fixed split when the data carries one (e.g. Douban's), else a random one."""
    if "test_mask" in data.meta:
        return fixed_split(data)
    return random_split(data, test_fraction, seed)


def say(args, text: str) -> None:
    if not getattr(args, "quiet", False):
        print(text, file=sys.stderr, flush=True)
