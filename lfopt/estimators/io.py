"""One model file for every model: ``.npz`` arrays plus JSON metadata, no pickle.

Layout (format ``lfopt-model``, version 2): the metadata member ``__lfopt_meta__``
holds ``{"format", "format_version", "lfopt_version", "model": <tag>, "params":
<get_params()>, "n_users", "n_items", "state": <model scalars>, "history", "data"}``
(``data``: the model's ``data_info_``, a JSON object the CLI fills with where the
training data came from and how it was split, or null);
the arrays are the ID maps, the training counts, the CSR of the items each user
had in fit (``seen_indptr``/``seen_indices``: a reloaded model excludes them
from recommendations as before saving) and the model's own arrays (e.g.
``params`` of the LF model, ``P``/``Q``/``b``/``lam`` of BPR).

Version-1 files of the rating model (``lfopt-latent-factor-model``) and BPR
files of the earlier ranking module (``lfopt-bpr-model``, which stored no seen
items: recommendations then cannot exclude them, and a warning says so) load too.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np

from ..errors import ModelFileError
from ..results import check_writable, model_path, to_jsonable, write_atomic
from .base import MODEL_CLASSES

FORMAT_TAG = "lfopt-model"
FORMAT_VERSION = 2
META_KEY = "__lfopt_meta__"
_LEGACY_LF = "lfopt-latent-factor-model"
_LEGACY_BPR = "lfopt-bpr-model"
_COMMON = ("user_ids", "item_ids", "user_counts", "item_counts", "seen_indptr", "seen_indices")


def _id_array(ids) -> np.ndarray:
    ids = np.asarray(ids)
    return ids.astype(str) if ids.dtype == object else ids


def save_model(model, path, overwrite: bool = False) -> Path:
    """Write ``model`` (any fitted lfopt model) to ``path`` atomically; ``.npz`` is appended if missing."""
    from .. import __version__

    path = model_path(path)
    check_writable(path, overwrite)
    meta = {"format": FORMAT_TAG, "format_version": FORMAT_VERSION, "lfopt_version": __version__,
            "model": model._model_tag, "params": to_jsonable(model.get_params(deep=False)),
            "n_users": int(model.n_users_), "n_items": int(model.n_items_),
            "state": to_jsonable(model._state_meta()), "history": to_jsonable(getattr(model, "history_", [])),
            "data": to_jsonable(getattr(model, "data_info_", None))}
    arrays = {"user_ids": _id_array(model.user_ids_), "item_ids": _id_array(model.item_ids_),
              "user_counts": model.user_counts_, "item_counts": model.item_counts_,
              "seen_indptr": model.seen_indptr_, "seen_indices": model.seen_indices_}
    own = model._state_arrays()
    clash = set(own) & (set(arrays) | {META_KEY})
    if clash:  # pragma: no cover - a programming error
        raise ValueError(f"model arrays {sorted(clash)} clash with the common ones")
    arrays.update(own)
    arrays[META_KEY] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return write_atomic(path, buf.getvalue(), overwrite)


def _read(path: Path):
    if not path.exists():
        raise ModelFileError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as z:
            files = dict(z)
    except Exception as exc:
        raise ModelFileError(f"{path}: not an lfopt model file (not a readable .npz: {exc})") from None
    key = META_KEY if META_KEY in files else ("meta" if "meta" in files else None)
    if key is None:
        raise ModelFileError(f"{path}: not an lfopt model file (no lfopt metadata)")
    try:
        meta = json.loads(files.pop(key).tobytes().decode())
    except (ValueError, UnicodeDecodeError):
        raise ModelFileError(f"{path}: damaged lfopt model file (metadata is not JSON)") from None
    if not isinstance(meta, dict):
        raise ModelFileError(f"{path}: damaged lfopt model file (metadata is not an object)")
    return files, meta


def load_model(path):
    """Load any model written by ``save`` (or a version-1 rating / early BPR file)."""
    path = Path(path)
    files, meta = _read(path)
    fmt = meta.get("format")
    if fmt == _LEGACY_LF:
        meta, files = _from_legacy_lf(path, meta, files)
    elif fmt == _LEGACY_BPR:
        meta, files = _from_legacy_bpr(path, meta, files)
    elif fmt != FORMAT_TAG:
        raise ModelFileError(f"{path}: not an lfopt model file (format {fmt!r})")
    version = meta.get("format_version", 0)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelFileError(f"{path}: saved by a newer lfopt (format version {version!r}); upgrade lfopt")
    tag = meta.get("model")
    if tag not in MODEL_CLASSES:
        raise ModelFileError(f"{path}: unknown model kind {tag!r} (known: {', '.join(sorted(MODEL_CLASSES))})")
    missing = [k for k in _COMMON if k not in files]
    if missing:
        raise ModelFileError(f"{path}: damaged lfopt model file (missing {missing})")
    cls = MODEL_CLASSES[tag]
    try:
        params = dict(meta["params"])
        model = cls(**params)
        model.n_users_, model.n_items_ = int(meta["n_users"]), int(meta["n_items"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{path}: damaged lfopt model file (bad metadata: {exc})") from None
    except Exception as exc:  # a ConfigError from the constructor: tampered parameters
        raise ModelFileError(f"{path}: damaged lfopt model file (invalid parameters: {exc})") from None
    model.user_ids_, model.item_ids_ = files.pop("user_ids"), files.pop("item_ids")
    model.user_counts_, model.item_counts_ = files.pop("user_counts"), files.pop("item_counts")
    model.seen_indptr_, model.seen_indices_ = files.pop("seen_indptr"), files.pop("seen_indices")
    m, n = model.n_users_, model.n_items_
    if (len(model.user_ids_) != m or len(model.item_ids_) != n or model.seen_indptr_.shape != (m + 1,)
            or len(model.user_counts_) != m or len(model.item_counts_) != n
            or (len(model.seen_indices_) and (model.seen_indices_.min() < 0 or model.seen_indices_.max() >= n))):
        raise ModelFileError(f"{path}: damaged lfopt model file (ID maps and counts do not match)")
    model._lookup = None
    model._seen_data = None
    model.history_ = meta.get("history", [])
    data_info = meta.get("data")
    if data_info is not None and not isinstance(data_info, dict):
        raise ModelFileError(f"{path}: damaged lfopt model file (data description is not an object)")
    model.data_info_ = data_info
    try:
        model._set_state(files, meta.get("state", {}))
    except ModelFileError as exc:
        raise ModelFileError(f"{path}: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{path}: damaged lfopt model file ({type(exc).__name__}: {exc})") from None
    return model


def _from_legacy_lf(path, meta, files):
    needed = ("params", "user_ids", "item_ids", "user_counts", "item_counts", "seen_indptr", "seen_indices")
    missing = [k for k in needed if k not in files]
    if missing:
        raise ModelFileError(f"{path}: damaged lfopt model file (missing {missing})")
    new = {"format": FORMAT_TAG, "format_version": 1, "model": "latent_factor", "params": meta.get("params", {}),
           "n_users": meta.get("n_users"), "n_items": meta.get("n_items"), "history": meta.get("history", []),
           "state": {"mu": meta.get("mu"), "global_mean": meta.get("global_mean"),
                     "rating_range": meta.get("rating_range")}}
    return new, files


def _from_legacy_bpr(path, meta, files):
    try:
        P, Q = files["P"], files["Q"]
    except KeyError:
        raise ModelFileError(f"{path}: damaged BPR model file (no factors)") from None
    warnings.warn(f"{path}: an early BPR model file stores no seen items; its recommendations cannot exclude "
                  f"them (save it again after fitting to fix that)", stacklevel=3)
    m, n = P.shape[0], Q.shape[0]
    files.update({"user_counts": np.ones(m, np.int32), "item_counts": np.ones(n, np.int32),
                  "seen_indptr": np.zeros(m + 1, np.int64), "seen_indices": np.zeros(0, np.int32)})
    new = {"format": FORMAT_TAG, "format_version": 1, "model": "bpr", "params": meta.get("params", {}),
           "n_users": m, "n_items": n, "history": [],
           "state": {"best_epoch": meta.get("best_epoch"), "stopped": meta.get("stopped")}}
    return new, files
