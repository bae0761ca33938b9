"""Writing results safely: atomic files that never replace the user's files unasked.

Every file lfopt writes (results JSON, model ``.npz``, plots) goes through
:func:`write_atomic`: the bytes go to a temporary file in the target's folder,
which is then put in place in one step, so a reader never sees half a file and
a crash never leaves a damaged one:

* ``overwrite=False`` (the default): the temporary file is *hard-linked* to the
  target name, which fails if the name exists -- the check "does it exist?"
  and the write are one atomic step, so of two processes saving to the same
  path at the same moment exactly one succeeds and the other gets a
  :class:`FileExistsError` (never a silent replacement).  On a filesystem
  without hard links the target name is claimed with ``O_CREAT | O_EXCL``
  (atomic as well) and the temporary file renamed over that placeholder.
* ``overwrite=True``: ``os.replace`` (an atomic rename).

Temporary files are named ``.lfopt-tmp-<host>-<pid>-<random>-<name>``.  A
process killed with SIGKILL during a save cannot remove its own; the next save
into the same folder removes those whose process (same host) is gone.

:func:`check_outputs` checks every output path a command will write *before* a
long job starts: an existing file (without overwrite), a folder where a file is
expected, a parent path that is a file, a folder that cannot be written to, or
two options naming the same file.
"""

from __future__ import annotations

import errno
import json
import math
import os
import resource
import secrets
import socket
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from .errors import ConfigError

TEMP_PREFIX = ".lfopt-tmp-"


def peak_memory_mb() -> float:
    """Peak resident memory of this process so far (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def model_path(path) -> Path:
    """Where a model is saved: ``path`` with ``.npz`` appended unless it has it."""
    path = Path(path)
    return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")


def check_writable(path, overwrite: bool) -> Path:
    """Fail early (before a long job) if ``path`` exists and may not be replaced."""
    path = Path(path)
    if path.exists() and path.is_dir():
        raise FileExistsError(f"{path} is a directory")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (--overwrite on the command line) to replace it")
    return path


# ------------------------------------------------------------ checks before a job
def _host_tag() -> str:
    return "".join(c if c.isalnum() else "_" for c in socket.gethostname())[:40] or "host"


def _existing_ancestor(path: Path) -> Path:
    """The deepest existing path among ``path``'s parents (``path.parent`` first)."""
    p = path.parent
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _probe_folder(folder: Path) -> str | None:
    """None if a file can be created in ``folder``, else the reason.

    ``os.access`` is not enough: it says yes to root on a read-only mount or a
    pseudo filesystem (/sys), so a real file is created and removed.
    """
    name = folder / f"{TEMP_PREFIX}{_host_tag()}-{os.getpid()}-{secrets.token_hex(4)}-probe"
    try:
        fd = os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except OSError as exc:
        return exc.strerror or str(exc)
    os.close(fd)
    try:
        os.unlink(name)
    except OSError:  # pragma: no cover - created a moment ago
        pass
    return None


def check_outputs(outputs: Iterable, overwrite: bool = False) -> list[Path]:
    """Check, before a long job, that every output can be written; return the paths.

    ``outputs``: paths, or ``(flag, path)`` pairs such as ``("--output", "res.json")``
    (the flag is named in the messages); ``None`` paths are skipped.  Raises
    :class:`~lfopt.errors.ConfigError` naming the flag and the path when

    * two outputs name the same file (after resolving ``..`` and symlinks),
    * a path is an existing folder, or an existing file and ``overwrite`` is false,
    * a parent of the path is an existing file (``out.json/model.npz``),
    * the folder that would hold the file (or, if it does not exist yet, its
      deepest existing ancestor, where it would be created) cannot be written:
      probed by creating and removing a small temporary file.

    Nothing is created except that probe.  The CLI calls this before training
    (so a PermissionError never comes after an hour of work).
    """
    checked: list[Path] = []
    seen: dict[str, str] = {}
    probed: dict[Path, str | None] = {}
    for entry in outputs:
        if isinstance(entry, (tuple, list)):
            flag, path = entry
        else:
            flag, path = None, entry
        if path is None or path == "":
            continue
        path = Path(path)
        label = f"{flag} {path}" if flag else str(path)
        key = os.path.realpath(os.path.abspath(path))
        if key in seen:
            other = seen[key]
            raise ConfigError(f"{other} and {label} name the same file; give each output its own path")
        seen[key] = label
        if path.is_dir():
            raise ConfigError(f"{label}: is a folder; expected a file name")
        if path.exists() and not overwrite:
            raise ConfigError(f"{label}: the file exists; pass --overwrite (overwrite=True) to replace it")
        folder = _existing_ancestor(path)
        if not folder.is_dir():
            raise ConfigError(f"{label}: {folder} is a file, not a folder, so nothing can be written under it")
        if folder not in probed:
            probed[folder] = _probe_folder(folder)
        if probed[folder] is not None:
            where = "" if folder == path.parent else f" (where {path.parent} would be created)"
            raise ConfigError(f"{label}: cannot write into the folder {folder}{where}: {probed[folder]}")
        checked.append(path)
    return checked


# ----------------------------------------------------------------- atomic writes
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:  # pragma: no cover
        return True
    return True


def clean_stale_temps(folder) -> list[Path]:
    """Remove the temporary files left in ``folder`` by lfopt processes of this host that are gone.

    A save killed by SIGKILL (or a power cut) cannot remove its temporary file;
    it is named ``.lfopt-tmp-<host>-<pid>-...``, so the next save finds it and
    removes it when no process ``pid`` is alive here.  Files of live processes
    and of other hosts (a shared network folder) are left alone.  Returns the
    removed paths.
    """
    folder = Path(folder)
    prefix = f"{TEMP_PREFIX}{_host_tag()}-"
    removed = []
    try:
        names = [n for n in os.listdir(folder) if n.startswith(prefix)]
    except OSError:
        return removed
    for name in names:
        pid_text = name[len(prefix):].split("-", 1)[0]
        if not pid_text.isdigit():
            continue
        pid = int(pid_text)
        if pid == os.getpid() or _pid_alive(pid):
            continue
        try:
            os.unlink(folder / name)
            removed.append(folder / name)
        except OSError:
            pass
    return removed


def _claim_and_replace(tmp: str, path: Path) -> None:
    """No-overwrite placement without hard links: claim the name atomically, then rename over it."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        raise FileExistsError(f"{path} exists (another process wrote it first); "
                              f"pass overwrite=True (--overwrite) to replace it") from None
    os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.unlink(path)  # our empty placeholder
        raise


def write_atomic(path, data: bytes | Callable, overwrite: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically, never replacing an existing file unless ``overwrite``.

    ``data``: bytes, or a function ``write(fh)`` that writes into a binary file
    object (e.g. ``lambda fh: np.savez(fh, **arrays)``: no copy in memory).
    Parent folders are created.  Raises :class:`FileExistsError` if the file
    exists (or another process creates it meanwhile) and ``overwrite`` is false.
    See the module docstring for how the check and the write are one step.
    """
    path = check_writable(path, overwrite)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise NotADirectoryError(f"{path}: {_existing_ancestor(path)} is a file, not a folder") from None
    clean_stale_temps(path.parent)
    tmp = os.path.join(path.parent, f"{TEMP_PREFIX}{_host_tag()}-{os.getpid()}-{secrets.token_hex(6)}-{path.name}")
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            if callable(data):
                data(fh)
            else:
                fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        # the temporary file is 0600; give the file the permissions a plain open() would
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails with EEXIST if the name is taken: check and write in one step
            except FileExistsError:
                raise FileExistsError(f"{path} exists (another process wrote it first); "
                                      f"pass overwrite=True (--overwrite) to replace it") from None
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK,
                                     errno.ENOSYS, errno.EACCES):
                    raise
                _claim_and_replace(tmp, path)  # no hard links here (FAT, some network filesystems)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
    return path


def to_jsonable(obj):
    """Numpy scalars/arrays to Python, non-finite floats to None (valid JSON)."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path, obj, overwrite: bool = False) -> Path:
    text = json.dumps(to_jsonable(obj), indent=2, allow_nan=False) + "\n"
    return write_atomic(path, text.encode(), overwrite)
