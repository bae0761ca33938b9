"""Files written with nothing lost: races between processes, kills during a save, outputs checked before a job.

The race and kill tests use real processes (``multiprocessing`` with ``fork``,
so each child starts in milliseconds); they are skipped where ``fork`` is not
available.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import lfopt
from lfopt.errors import ConfigError
from lfopt.results import TEMP_PREFIX, check_outputs, clean_stale_temps, write_atomic

fork = pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="needs the fork start method")


def _stray(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(TEMP_PREFIX))


# ------------------------------------------------------------------ children
def _save_bytes(barrier, path, payload, results):
    barrier.wait()
    try:
        write_atomic(path, payload)
        results.put(("ok", payload[:8]))
    except FileExistsError as exc:
        results.put(("refused", str(exc)))
    except BaseException as exc:  # pragma: no cover - reported to the parent
        results.put(("error", f"{type(exc).__name__}: {exc}"))


def _save_model(barrier, model, path, results):
    barrier.wait()
    try:
        model.save(path)
        results.put(("ok", ""))
    except FileExistsError as exc:
        results.put(("refused", str(exc)))
    except BaseException as exc:  # pragma: no cover
        results.put(("error", f"{type(exc).__name__}: {exc}"))


def _slow_save(path, started):
    def write(fh):
        fh.write(b"partial data " * 1000)
        fh.flush()
        started.set()
        time.sleep(60)  # killed here
        fh.write(b"never written")

    write_atomic(path, write)


# ===================================================================== races
@fork
class TestRaces:
    ROUNDS = 20

    def _race(self, ctx, target, args_for, rounds):
        outcomes = []
        for r in range(rounds):
            barrier, results = ctx.Barrier(2), ctx.Queue()
            procs = [ctx.Process(target=target, args=(barrier, *args_for(r, k), results)) for k in range(2)]
            for p in procs:
                p.start()
            got = [results.get(timeout=30) for _ in procs]
            for p in procs:
                p.join(timeout=30)
            outcomes.append(sorted(kind for kind, _ in got))
            errors = [text for kind, text in got if kind == "error"]
            assert not errors, errors
            refused = [text for kind, text in got if kind == "refused"]
            assert all("exists" in text for text in refused)
        return outcomes

    def test_exactly_one_of_two_writers_wins_every_round(self, tmp_path):
        ctx = mp.get_context("fork")
        payloads = [bytes([65 + k]) * 200_000 for k in range(2)]  # large enough that writes overlap

        def args_for(r, k):
            return tmp_path / f"out{r}.json", payloads[k]

        outcomes = self._race(ctx, _save_bytes, args_for, self.ROUNDS)
        assert outcomes == [["ok", "refused"]] * self.ROUNDS
        for r in range(self.ROUNDS):
            content = (tmp_path / f"out{r}.json").read_bytes()
            assert content in payloads  # whole, one writer's bytes, never a mix
        assert _stray(tmp_path) == []

    def test_two_model_saves_one_wins(self, tmp_path, fitted_model):
        ctx = mp.get_context("fork")
        outcomes = self._race(ctx, _save_model, lambda r, k: (fitted_model, tmp_path / f"m{r}.npz"), 5)
        assert outcomes == [["ok", "refused"]] * 5
        for r in range(5):
            np.testing.assert_array_equal(lfopt.load(tmp_path / f"m{r}.npz").params_, fitted_model.params_)
        assert _stray(tmp_path) == []

    def test_no_hard_links_fallback_is_also_exclusive(self, tmp_path, monkeypatch):
        def no_link(src, dst):
            raise OSError(1, "Operation not permitted")  # EPERM: what FAT or some network filesystems say

        monkeypatch.setattr(os, "link", no_link)
        write_atomic(tmp_path / "a.bin", b"first")
        with pytest.raises(FileExistsError, match="exists"):
            write_atomic(tmp_path / "a.bin", b"second")
        assert (tmp_path / "a.bin").read_bytes() == b"first"
        ctx = mp.get_context("fork")
        outcomes = self._race(ctx, _save_bytes, lambda r, k: (tmp_path / f"f{r}", bytes([66 + k]) * 50_000), 5)
        assert outcomes == [["ok", "refused"]] * 5
        assert _stray(tmp_path) == []


# ====================================================================== kills
@fork
class TestKill:
    def test_kill_during_save_leaves_no_file_and_next_save_cleans_up(self, tmp_path):
        ctx = mp.get_context("fork")
        target = tmp_path / "model.npz"
        started = ctx.Event()
        child = ctx.Process(target=_slow_save, args=(target, started))
        child.start()
        assert started.wait(timeout=30)
        os.kill(child.pid, signal.SIGKILL)
        child.join(timeout=30)
        assert child.exitcode == -signal.SIGKILL
        assert not target.exists()  # never a half-written file under the user's name
        leftovers = _stray(tmp_path)
        assert len(leftovers) == 1 and f"-{child.pid}-" in leftovers[0]
        write_atomic(tmp_path / "next.json", b"{}")  # any save into the folder removes the dead one's temp file
        assert _stray(tmp_path) == []
        assert sorted(p.name for p in tmp_path.iterdir()) == ["next.json"]

    def test_temp_files_of_live_processes_and_other_hosts_are_kept(self, tmp_path):
        from lfopt.results import _host_tag

        parent = os.getppid()  # alive
        mine = tmp_path / f"{TEMP_PREFIX}{_host_tag()}-{parent}-abc-x.npz"
        other_host = tmp_path / f"{TEMP_PREFIX}elsewhere-{2**22 + 12345}-abc-x.npz"
        not_ours = tmp_path / ".x.npz.tmp"
        for p in (mine, other_host, not_ours):
            p.write_bytes(b"")
        assert clean_stale_temps(tmp_path) == []
        assert mine.exists() and other_host.exists() and not_ours.exists()

    def test_failed_write_removes_its_temp_file(self, tmp_path):
        def broken(fh):
            fh.write(b"half")
            raise RuntimeError("serializer failed")

        with pytest.raises(RuntimeError, match="serializer failed"):
            write_atomic(tmp_path / "out.bin", broken)
        assert list(tmp_path.iterdir()) == []


# ============================================================ check_outputs
class TestCheckOutputs:
    def test_fine_paths_pass_and_nothing_is_created(self, tmp_path):
        paths = check_outputs([("--output", tmp_path / "res.json"), ("--save", tmp_path / "new" / "m.npz"),
                               ("--plots", None)])
        assert paths == [tmp_path / "res.json", tmp_path / "new" / "m.npz"]
        assert list(tmp_path.iterdir()) == []

    def test_same_file_twice_names_both_flags(self, tmp_path):
        with pytest.raises(ConfigError) as info:
            check_outputs([("--output", tmp_path / "x.npz"), ("--save", tmp_path / "sub" / ".." / "x.npz")])
        msg = str(info.value)
        assert "--output" in msg and "--save" in msg and "same file" in msg

    def test_same_file_through_a_symlink(self, tmp_path):
        (tmp_path / "real").mkdir()
        (tmp_path / "link").symlink_to(tmp_path / "real")
        with pytest.raises(ConfigError, match="same file"):
            check_outputs([("--output", tmp_path / "real" / "a"), ("--save", tmp_path / "link" / "a")])

    def test_parent_is_a_file(self, tmp_path):
        (tmp_path / "notes.txt").write_text("mine")
        with pytest.raises(ConfigError) as info:
            check_outputs([("--save", tmp_path / "notes.txt" / "deeper" / "m.npz")])
        msg = str(info.value)
        assert msg.startswith("--save ") and "notes.txt is a file, not a folder" in msg
        assert (tmp_path / "notes.txt").read_text() == "mine"

    def test_existing_file_needs_overwrite(self, tmp_path):
        (tmp_path / "res.json").write_text("{}")
        with pytest.raises(ConfigError, match=r"--output .*res\.json: the file exists; pass --overwrite"):
            check_outputs([("--output", tmp_path / "res.json")])
        assert check_outputs([("--output", tmp_path / "res.json")], overwrite=True) == [tmp_path / "res.json"]

    def test_folder_where_a_file_is_expected(self, tmp_path):
        (tmp_path / "out.json").mkdir()
        with pytest.raises(ConfigError, match="is a folder"):
            check_outputs([("--output", tmp_path / "out.json")], overwrite=True)

    @pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
    def test_folder_not_writable(self, tmp_path):
        if os.geteuid() == 0:  # root ignores permission bits; /sys refuses new files even to root
            if not os.path.isdir("/sys"):
                pytest.skip("running as root without /sys")
            folder = Path("/sys")
        else:
            folder = tmp_path / "ro"
            folder.mkdir()
            folder.chmod(0o555)
        try:
            with pytest.raises(ConfigError) as info:
                check_outputs([("--output", folder / "res.json")])
            assert "--output" in str(info.value) and "cannot write into the folder" in str(info.value)
            with pytest.raises(ConfigError, match="would be created"):
                check_outputs([("--save", folder / "new" / "m.npz")])
        finally:
            if folder != Path("/sys"):
                folder.chmod(0o755)

    def test_plain_paths_without_flags(self, tmp_path):
        (tmp_path / "a").write_text("")
        with pytest.raises(ConfigError, match="exists"):
            check_outputs([tmp_path / "a"])
