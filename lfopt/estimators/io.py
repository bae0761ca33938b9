"""One model file for every model: ``.npz`` arrays plus JSON metadata, no pickle.

Layout (format ``lfopt-model``, version 2): the metadata member ``__lfopt_meta__``
holds ``{"format", "format_version", "lfopt_version", "model": <tag>, "params":
<get_params()>, "n_users", "n_items", "state": <model scalars>, "history", "data",
"arrays"}`` (``data``: the model's ``data_info_``, a JSON object the CLI fills with
where the training data came from and how it was split, or null; ``arrays``: the
manifest ``{name: [shape, dtype]}`` of every array in the file, absent in older
files); the arrays are the ID maps, the training counts, the CSR of the items each
user had in fit (``seen_indptr``/``seen_indices``: a reloaded model excludes them
from recommendations as before saving) and the model's own arrays (e.g.
``params`` of the LF model, ``P``/``Q``/``b``/``lam`` of BPR).

Loading validates before anything is used, and every problem is a
:class:`~lfopt.errors.ModelFileError` naming the file (never a traceback):
the archive itself (not a zip, a ``.npy``, truncated, pickled members), the
metadata's types, the manifest (missing arrays, other shapes or dtypes), the
ID maps and the seen-items CSR, non-finite numbers in any float array, and,
after the model's ``_set_state``, a common check of every model kind's state
through ``_factors()`` (factor matrices of ``n_users``/``n_items`` rows and one
rank, offsets of matching length, all finite) and one trial prediction.

Version-1 files of the rating model (``lfopt-latent-factor-model``) and BPR
files of the earlier ranking module (``lfopt-bpr-model``, which stored no seen
items: recommendations then cannot exclude them, and a warning says so) load too.
"""

from __future__ import annotations

import json
import math
import warnings
import zipfile
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
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_NPY_MAGIC = b"\x93NUMPY"


def _id_array(ids) -> np.ndarray:
    ids = np.asarray(ids)
    return ids.astype(str) if ids.dtype == object else ids


def save_model(model, path, overwrite: bool = False) -> Path:
    """Write ``model`` (any fitted lfopt model) to ``path`` atomically; ``.npz`` is appended if missing.

    An existing file is never replaced unless ``overwrite``; of two processes
    saving to one path at once, exactly one succeeds (see :func:`lfopt.results.write_atomic`).
    """
    from .. import __version__

    path = model_path(path)
    check_writable(path, overwrite)
    arrays = {"user_ids": _id_array(model.user_ids_), "item_ids": _id_array(model.item_ids_),
              "user_counts": model.user_counts_, "item_counts": model.item_counts_,
              "seen_indptr": model.seen_indptr_, "seen_indices": model.seen_indices_}
    own = model._state_arrays()
    clash = set(own) & (set(arrays) | {META_KEY})
    if clash:  # pragma: no cover - a programming error
        raise ValueError(f"model arrays {sorted(clash)} clash with the common ones")
    arrays.update(own)
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    meta = {"format": FORMAT_TAG, "format_version": FORMAT_VERSION, "lfopt_version": __version__,
            "model": model._model_tag, "params": to_jsonable(model.get_params(deep=False)),
            "n_users": int(model.n_users_), "n_items": int(model.n_items_),
            "state": to_jsonable(model._state_meta()), "history": to_jsonable(getattr(model, "history_", [])),
            "data": to_jsonable(getattr(model, "data_info_", None)),
            "arrays": {k: [list(v.shape), v.dtype.str] for k, v in arrays.items()}}
    arrays[META_KEY] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    return write_atomic(path, lambda fh: np.savez(fh, **arrays), overwrite)


# ---------------------------------------------------------------------- reading
def _damaged(path, why: str) -> ModelFileError:
    return ModelFileError(f"{path}: damaged lfopt model file ({why})")


def _check_archive(path: Path) -> None:
    """An accurate message for files that are not an npz archive at all."""
    if not path.exists():
        raise ModelFileError(f"{path}: no such file")
    if path.is_dir():
        raise ModelFileError(f"{path}: is a directory, not an lfopt model file")
    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if not head:
        raise ModelFileError(f"{path}: not an lfopt model file (the file is empty, 0 bytes)")
    if head.startswith(_NPY_MAGIC):
        raise ModelFileError(f"{path}: not an lfopt model file (a single .npy array, not a zip/npz archive)")
    if head[:4] not in _ZIP_MAGIC:
        text = head.replace(b"\r", b"").replace(b"\n", b"").replace(b"\t", b"")
        kind = "it looks like a text file" if text.isascii() and text.decode("ascii").isprintable() else \
            f"it starts with bytes {head[:8]!r}"
        raise ModelFileError(f"{path}: not an lfopt model file (not a zip/npz archive: {kind})")


def _metadata(path: Path, members) -> tuple:
    """``(name, decoded metadata)`` of an archive's metadata member (``members``: the arrays read, or
    the open ``NpzFile``, whose other members are then not read)."""
    names = members.files if hasattr(members, "files") else members
    key = META_KEY if META_KEY in names else ("meta" if "meta" in names else None)
    if key is None:
        raise ModelFileError(f"{path}: not an lfopt model file (no lfopt metadata)")
    try:
        return key, json.loads(members[key].tobytes().decode())
    except (ValueError, UnicodeDecodeError):
        raise _damaged(path, "metadata is not JSON") from None


def saved_metadata(path) -> dict:
    """The metadata of a model file alone (its arrays are not read): what ``lfopt info`` shows
    beside the loaded model, e.g. ``lfopt_version``."""
    path = Path(path)
    _check_archive(path)
    with np.load(path, allow_pickle=False) as z:
        return _metadata(path, z)[1]


def _read(path: Path):
    _check_archive(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            files = {}
            for name in z.files:
                try:
                    files[name] = z[name]
                except ValueError as exc:
                    if "allow_pickle" in str(exc):
                        raise ModelFileError(f"{path}: not an lfopt model file (member {name!r} holds pickled "
                                             f"objects, which lfopt never writes and will not load)") from None
                    raise
    except ModelFileError:
        raise
    except (zipfile.BadZipFile, EOFError) as exc:
        raise ModelFileError(f"{path}: not an lfopt model file (damaged or truncated zip/npz archive: {exc})") \
            from None
    except Exception as exc:  # zlib, CRC and header errors of a damaged member
        raise ModelFileError(f"{path}: not an lfopt model file (not a readable .npz: "
                             f"{type(exc).__name__}: {exc})") from None
    key, meta = _metadata(path, files)
    del files[key]
    if not isinstance(meta, dict):
        raise _damaged(path, "metadata is not an object")
    return files, meta


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_meta(path, meta: dict) -> None:
    """Types of the metadata fields every model file has."""
    for key in ("n_users", "n_items"):
        v = meta.get(key)
        if not _is_int(v) or v < 0:
            raise _damaged(path, f"metadata {key!r} must be a non-negative integer, found {v!r}")
    for key, kind, name in (("params", dict, "an object"), ("state", dict, "an object"),
                            ("history", list, "a list"), ("arrays", dict, "an object")):
        if key in meta and meta[key] is not None and not isinstance(meta[key], kind):
            raise _damaged(path, f"metadata {key!r} must be {name}, found {type(meta[key]).__name__} "
                                 f"{_short(meta[key])}")
    if not isinstance(meta.get("params"), dict):
        raise _damaged(path, "metadata 'params' (the hyper-parameters) is missing")
    data_info = meta.get("data")
    if data_info is not None and not isinstance(data_info, dict):
        raise _damaged(path, "data description is not an object")


#: Types of the state entries the model kinds share (checked before ``_set_state``, so that a
#: tampered value is named): "number" = a finite int/float, "count" = an int >= 0,
#: "range" = [low, high] numbers, "epoch" = an int >= 0 or null.
_STATE_TYPES = {"mu": "number", "global_mean": "number", "lam_u": "number", "lam_i": "number",
                "rating_range": "range", "n_samples": "count", "best_epoch": "epoch"}


def _check_state_types(path, state: dict) -> None:
    for key, kind in _STATE_TYPES.items():
        if key not in state:
            continue
        v = state[key]
        if kind == "epoch" and v is None:
            continue
        if kind in ("count", "epoch"):
            ok = _is_int(v) and v >= 0
            want = "an integer >= 0" + (" or null" if kind == "epoch" else "")
        elif kind == "number":
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            want = "a finite number"
        else:
            ok = (isinstance(v, list) and len(v) == 2
                  and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)
                  and v[0] <= v[1])
            want = "[low, high], two finite numbers with low <= high"
        if not ok:
            raise _damaged(path, f"metadata state {key!r} must be {want}, found {_short(v)}")


def _short(v) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_manifest(path, files: dict, manifest) -> None:
    """Every array the manifest lists is present with its shape and dtype."""
    if not manifest:
        return
    missing = sorted(k for k in manifest if k not in files)
    if missing:
        raise _damaged(path, f"missing array{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}")
    for name, spec in manifest.items():
        try:
            shape, dtype = tuple(int(s) for s in spec[0]), np.dtype(spec[1])
        except (TypeError, ValueError, IndexError):
            raise _damaged(path, f"metadata 'arrays' entry {name!r} is not [shape, dtype]: {_short(spec)}") from None
        arr = files[name]
        if arr.shape != shape:
            raise _damaged(path, f"array {name!r} has shape {arr.shape}, the file's manifest says {shape}")
        if arr.dtype.kind != dtype.kind:
            raise _damaged(path, f"array {name!r} has dtype {arr.dtype}, the file's manifest says {dtype}")


def _check_arrays(path, files: dict) -> None:
    """Kinds and finiteness of every array: IDs are integers or strings, the rest numbers, floats finite."""
    for name, arr in files.items():
        if name in ("user_ids", "item_ids"):
            if arr.ndim != 1 or arr.dtype.kind not in "iuU":
                raise _damaged(path, f"array {name!r} must be a vector of integer or string IDs, found "
                                     f"{arr.dtype} of shape {arr.shape}")
            continue
        if arr.dtype.kind not in "biuf":
            raise _damaged(path, f"array {name!r} must hold numbers, found dtype {arr.dtype}")
        if arr.dtype.kind == "f" and arr.size:
            finite = np.isfinite(arr)
            if not finite.all():
                k = np.unravel_index(int(np.argmin(finite)), arr.shape)
                where = k[0] if len(k) == 1 else tuple(int(x) for x in k)
                raise _damaged(path, f"array {name!r} holds {int(arr.size - finite.sum())} non-finite value(s), "
                                     f"e.g. {arr[k].item()!r} at index {where}")


def _check_common(path, model, m: int, n: int) -> None:
    """The ID maps, counts and seen-items CSR agree with n_users/n_items."""
    for name, arr, size in (("user_ids", model.user_ids_, m), ("item_ids", model.item_ids_, n),
                            ("user_counts", model.user_counts_, m), ("item_counts", model.item_counts_, n),
                            ("seen_indptr", model.seen_indptr_, m + 1)):
        if arr.shape != (size,):
            raise _damaged(path, f"ID maps and counts do not match: {name!r} has shape {arr.shape}, "
                                 f"expected ({size},) for {m} users and {n} items")
    for name in ("user_ids", "item_ids"):
        ids = getattr(model, name + "_")
        if len(np.unique(ids)) != len(ids):
            raise _damaged(path, f"array {name!r} repeats an ID")
    for name in ("user_counts", "item_counts"):
        arr = getattr(model, name + "_")
        if arr.dtype.kind not in "iu" or (arr.size and arr.min() < 0):
            raise _damaged(path, f"array {name!r} must hold counts >= 0")
    ptr, idx = model.seen_indptr_, model.seen_indices_
    if (ptr.dtype.kind not in "iu" or idx.dtype.kind not in "iu" or idx.ndim != 1 or ptr[0] != 0
            or ptr[-1] != len(idx) or (np.diff(ptr) < 0).any()
            or (len(idx) and (idx.min() < 0 or idx.max() >= n))):
        raise _damaged(path, "the seen-items CSR (seen_indptr/seen_indices) is inconsistent")


def _check_state(path, model) -> None:
    """The common check of every model kind after ``_set_state``: its factors and one prediction."""
    m, n = model.n_users_, model.n_items_
    try:
        U, V, uo, io_, g = model._factors()
    except ModelFileError:
        raise
    except Exception as exc:
        raise _damaged(path, f"the stored state does not give the model's factors: {type(exc).__name__}: {exc}") \
            from None
    U, V = np.asarray(U), np.asarray(V)
    if U.ndim != 2 or V.ndim != 2 or U.shape[0] != m or V.shape[0] != n or U.shape[1] != V.shape[1]:
        raise _damaged(path, f"factor shapes {U.shape} and {V.shape} do not fit {m} users, {n} items and one rank")
    rank = getattr(model, "rank_", None) or getattr(model, "rank", None)  # the rank fitted, where it differs
    samples = getattr(model, "n_samples_", 0) or 1
    if _is_int(rank) and U.shape[1] not in (rank, rank * samples):
        raise _damaged(path, f"factors of rank {U.shape[1]}, but the hyper-parameters say rank {rank}")
    for name, off, size in (("user offsets", uo, m), ("item offsets", io_, n)):
        if off is not None and np.shape(off) != (size,):
            raise _damaged(path, f"{name} have shape {np.shape(off)}, expected ({size},)")
    try:
        g = float(g)
    except (TypeError, ValueError):
        raise _damaged(path, f"the global offset {_short(g)} is not a number") from None
    if not math.isfinite(g):
        raise _damaged(path, f"the global offset is {g!r}")
    for name, arr in (("user factors", U), ("item factors", V), ("user offsets", uo), ("item offsets", io_)):
        if arr is not None and np.asarray(arr).size and not np.isfinite(arr).all():
            raise _damaged(path, f"{name} hold non-finite values")
    rating_range = getattr(model, "rating_range_", None)
    if rating_range is not None:
        ok = isinstance(rating_range, (tuple, list)) and len(rating_range) == 2
        try:
            lo, hi = (float(x) for x in rating_range) if ok else (math.nan, math.nan)
        except (TypeError, ValueError):
            lo = hi = math.nan
        if not (ok and math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
            raise _damaged(path, f"state 'rating_range' must be two numbers low <= high, found {_short(rating_range)}")
    if m and n:  # one trial prediction: a state that cannot score fails here, not in the user's hands
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pred, _ = model._predict_indices(np.zeros(1, np.int64), np.zeros(1, np.int64))
            pred = np.asarray(pred, dtype=np.float64)
        except Exception as exc:
            raise _damaged(path, f"the stored state cannot score: {type(exc).__name__}: {exc}") from None
        if pred.shape != (1,) or not np.isfinite(pred).all():
            raise _damaged(path, f"the stored state scores {pred.tolist()} for the first (user, item) pair")
    for accessor in _STATE_ACCESSORS:  # the models' other arrays, through their own views of them
        get = getattr(model, accessor, None)
        if get is None:
            continue
        try:
            views = get()
        except Exception as exc:
            raise _damaged(path, f"{accessor}() fails on the stored state: {type(exc).__name__}: {exc}") from None
        for view in views if isinstance(views, tuple) else (views,):
            if isinstance(view, np.ndarray) and view.dtype.kind == "f" and not np.isfinite(view).all():
                raise _damaged(path, f"{accessor}() holds non-finite values")


#: Methods (without arguments) that expose arrays of a model beyond ``_factors()``;
#: each must work on a loaded model (BPR's learned Lambda: ``lambda_arrays``).
_STATE_ACCESSORS = ("lambda_arrays",)


def load_model(path):
    """Load any model written by ``save`` (or a version-1 rating / early BPR file).

    Every problem with the file is a :class:`~lfopt.errors.ModelFileError` naming it.
    """
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
    if not _is_int(version) or version > FORMAT_VERSION:
        raise ModelFileError(f"{path}: saved by a newer lfopt (format version {version!r}); upgrade lfopt")
    tag = meta.get("model")
    if not isinstance(tag, str) or tag not in MODEL_CLASSES:
        raise ModelFileError(f"{path}: unknown model kind {tag!r} (known: {', '.join(sorted(MODEL_CLASSES))})")
    _check_meta(path, meta)
    missing = [k for k in _COMMON if k not in files]
    if missing:
        raise _damaged(path, f"missing {missing}")
    _check_manifest(path, files, meta.get("arrays"))
    _check_arrays(path, files)
    cls = MODEL_CLASSES[tag]
    try:
        model = cls(**meta["params"])
        check = getattr(model, "_check_params", None)
        if check is not None:
            check()
    except TypeError as exc:
        raise _damaged(path, f"bad hyper-parameters in the metadata: {exc}") from None
    except Exception as exc:  # a ConfigError: tampered parameters
        raise _damaged(path, f"invalid parameters: {exc}") from None
    model.n_users_, model.n_items_ = meta["n_users"], meta["n_items"]
    model.user_ids_, model.item_ids_ = files.pop("user_ids"), files.pop("item_ids")
    model.user_counts_, model.item_counts_ = files.pop("user_counts"), files.pop("item_counts")
    model.seen_indptr_, model.seen_indices_ = files.pop("seen_indptr"), files.pop("seen_indices")
    m, n = model.n_users_, model.n_items_
    _check_common(path, model, m, n)
    model._lookup = None
    model._seen_data = None
    model.history_ = meta.get("history") or []
    model.data_info_ = meta.get("data")
    state = meta.get("state") or {}
    _check_state_types(path, state)
    try:
        model._set_state(files, state)
    except ModelFileError as exc:
        raise ModelFileError(f"{path}: {exc}") from None
    except KeyError as exc:
        what = exc.args[0] if exc.args else exc
        raise _damaged(path, f"missing {what!r}, an array or state entry a {tag} model needs") from None
    except (TypeError, ValueError, AttributeError, IndexError) as exc:
        raise _damaged(path, f"{type(exc).__name__}: {exc}") from None
    _check_state(path, model)
    return model


def _from_legacy_lf(path, meta, files):
    needed = ("params", "user_ids", "item_ids", "user_counts", "item_counts", "seen_indptr", "seen_indices")
    missing = [k for k in needed if k not in files]
    if missing:
        raise _damaged(path, f"missing {missing}")
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
    if P.ndim != 2 or Q.ndim != 2:
        raise ModelFileError(f"{path}: damaged BPR model file (factors of shapes {P.shape} and {Q.shape})")
    warnings.warn(f"{path}: an early BPR model file stores no seen items; its recommendations cannot exclude "
                  f"them (save it again after fitting to fix that)", stacklevel=3)
    m, n = P.shape[0], Q.shape[0]
    files.update({"user_counts": np.ones(m, np.int32), "item_counts": np.ones(n, np.int32),
                  "seen_indptr": np.zeros(m + 1, np.int64), "seen_indices": np.zeros(0, np.int32)})
    new = {"format": FORMAT_TAG, "format_version": 1, "model": "bpr", "params": meta.get("params", {}),
           "n_users": m, "n_items": n, "history": [],
           "state": {"best_epoch": meta.get("best_epoch"), "stopped": meta.get("stopped")}}
    return new, files
