"""``lfopt info``: what a saved model file holds (checked as ``lfopt.load`` checks it)."""

from __future__ import annotations

import json
import os

import numpy as np

from ..estimators import load as load_model
from .common import add_model_option


def add_parser(sub):
    p = sub.add_parser("info", help="what a saved model file holds: model, parameters, data, training",
                       description="Load a saved model (every check of lfopt.load) and print what it is: the "
                       "model and how it was trained (method, rank, the parameters set by hand), the users, items "
                       "and training ratings it knows, the data file and split it was trained on (models saved by "
                       "'lfopt train --save'), the epochs run and the last training metrics, and the lfopt "
                       "version that saved it.")
    add_model_option(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    return p


def describe(model, path) -> dict:
    """The facts ``lfopt info`` prints, as a JSON-able dict."""
    from ..estimators.io import saved_metadata
    from ..results import to_jsonable

    meta = saved_metadata(path)
    history = getattr(model, "history_", None) or []
    last = history[-1] if history else {}
    facts = {
        "file": str(path), "bytes": os.path.getsize(path), "saved_by": f"lfopt {meta.get('lfopt_version', '?')}",
        "model": type(model).__name__, "method": getattr(model, "method_", None),
        "rank": getattr(model, "rank_", None) or model.get_params().get("rank"),
        "parameters_given": model._given_params(),
        "n_users": int(model.n_users_), "n_items": int(model.n_items_),
        "n_training_ratings": int(np.asarray(model.user_counts_).sum()),
        "n_samples_averaged": getattr(model, "n_samples_", None),
        "epochs": len(history), "stopped": getattr(model, "stopped_", None),
        "last_epoch": {k: v for k, v in last.items() if k in ("train_rmse", "valid_rmse", "valid_mae", "noise_std")
                       or k.startswith("valid_")},
        "data": getattr(model, "data_info_", None),
    }
    return to_jsonable(facts)


def _text(f: dict) -> str:
    size = f"{f['bytes'] / 2**20:.1f} MiB" if f["bytes"] >= 2**20 else f"{f['bytes'] / 2**10:.0f} KiB"
    lines = [f"file        {f['file']} ({size}), saved by {f['saved_by']}"]
    what = f["model"] + (f", method {f['method']}" if f["method"] else "") + \
        (f", rank {f['rank']}" if f["rank"] is not None else "")
    if f["n_samples_averaged"]:
        what += f", the average of {f['n_samples_averaged']} posterior samples"
    lines.append(f"model       {what}")
    given = ", ".join(f"{k}={v!r}" for k, v in f["parameters_given"].items()) or "none (the defaults)"
    lines.append(f"parameters  {given}")
    lines.append(f"knows       {f['n_users']} users x {f['n_items']} items, {f['n_training_ratings']} training ratings")
    data = f["data"] or {}
    if data.get("path") or data.get("synthetic"):
        source = data.get("path") or "the built-in synthetic dataset"
        how = [f"format {data['format']}"] if data.get("format") else []
        if data.get("missing") is not None:
            how.append(f"missing {data['missing']:g}")
        split = data.get("split")
        if split == "random":
            how.append(f"random split, seed {data.get('seed')}, test fraction {data.get('test_fraction')}")
        elif split:
            how.append(f"{split} split")
        if data.get("n_test") is not None:
            how.append(f"{data['n_test']} test ratings")
        lines.append(f"data        {source}" + (f" ({'; '.join(how)})" if how else ""))
    if f["epochs"]:
        shown = ("train_rmse", "noise_std", "valid_rmse", "valid_mae", "valid_auc", "valid_ndcg@10", "valid_hr@10")
        metrics = ", ".join(f"{k} {f['last_epoch'][k]:.4f}" for k in shown
                            if isinstance(f["last_epoch"].get(k), (int, float)))
        lines.append(f"training    {f['epochs']} epochs" + (f" (stopped: {f['stopped']})" if f["stopped"] else "")
                     + (f"; last: {metrics}" if metrics else ""))
    return "\n".join(lines)


def run(args) -> int:
    model = load_model(args.model)
    facts = describe(model, args.model)
    print(json.dumps(facts, indent=2) if args.json else _text(facts))
    return 0
