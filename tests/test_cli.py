"""The ``lfopt`` command line, run in-process through ``lfopt.cli.main`` (plus one subprocess smoke test)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import lfopt
from lfopt.cli import main

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULT_KEYS = {"test_rmse", "test_mae", "epochs", "train_seconds", "peak_memory_mb", "options", "history"}


def has_command(name: str) -> bool:
    return importlib.util.find_spec(f"lfopt.commands.{name}") is not None


needs_evaluate = pytest.mark.skipif(not has_command("evaluate"), reason="lfopt evaluate not implemented yet")
needs_recommend = pytest.mark.skipif(not has_command("recommend"), reason="lfopt recommend not implemented yet")


def train_args(data_file, *extra) -> list[str]:
    """A fast ``lfopt train`` on a small file."""
    return ["train", "--data", str(data_file), "--optimizer", "als", "--rank", "3", "--epochs", "2",
            "--seed", "1", *extra]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, small_synthetic):
    """A small ratings file, a model saved by ``lfopt train --save`` and its results JSON."""
    root = tmp_path_factory.mktemp("cli")
    d = small_synthetic
    data = root / "ratings.tsv"
    data.write_text("".join(f"{u}\t{i}\t{v:.4f}\n" for u, i, v in
                            zip(d.users.tolist(), d.items.tolist(), d.values.tolist())))
    model, results = root / "model.npz", root / "results.json"
    rc = main(train_args(data, "--save", str(model), "--output", str(results), "--quiet"))
    assert rc == 0
    return {"data": data, "model": model, "results": results, "root": root}


# ===================================================================== help
class TestHelp:
    def test_top_level_help(self, capsys):
        with pytest.raises(SystemExit) as info:
            main(["--help"])
        assert info.value.code == 0
        out = capsys.readouterr().out
        assert "usage: lfopt" in out and "train" in out

    def test_train_help(self, capsys):
        with pytest.raises(SystemExit) as info:
            main(["train", "--help"])
        assert info.value.code == 0
        out = capsys.readouterr().out
        for flag in ("--data", "--optimizer", "--rank", "--epochs", "--output", "--overwrite", "--quiet", "--save"):
            assert flag in out

    def test_version(self, capsys):
        with pytest.raises(SystemExit) as info:
            main(["--version"])
        assert info.value.code == 0
        assert lfopt.__version__ in capsys.readouterr().out

    def test_no_command_prints_help(self, capsys):
        assert main([]) == 2
        assert "usage: lfopt" in capsys.readouterr().out

    def test_bad_option_is_a_usage_error(self, capsys):
        with pytest.raises(SystemExit) as info:
            main(["train", "--optimizer", "newton"])
        assert info.value.code == 2
        assert "newton" in capsys.readouterr().err


# ==================================================================== train
class TestTrain:
    def test_synthetic_default_writes_results(self, tmp_path, capsys):
        out = tmp_path / "res.json"
        rc = main(["train", "--optimizer", "als", "--epochs", "2", "--output", str(out), "--quiet"])
        assert rc == 0
        res = json.loads(out.read_text())
        assert RESULT_KEYS <= set(res)
        assert res["epochs"] == 2 == len(res["history"])
        assert res["options"]["epochs"] == 2 and res["options"]["optimizer"] == "als"
        assert res["options"]["rank"] == 5  # the synthetic data's true rank
        assert res["data"] == "synthetic" and res["noise_floor"] == pytest.approx(0.5)
        assert 0 < res["test_mae"] < res["test_rmse"] < 5
        assert res["train_seconds"] > 0 and res["peak_memory_mb"] > 0
        assert {"epoch", "train_loss", "train_rmse"} <= set(res["history"][0])
        stdout = capsys.readouterr().out
        assert f"test RMSE {res['test_rmse']:.4f}" in stdout

    def test_preset_accurate_averages_samples_within_the_budget(self, trained, tmp_path, capsys):
        out = tmp_path / "acc.json"
        # 'lfopt train' compiles the sampler's kernels first: the budget is for sweeps, not for numba
        args = ["train", "--data", str(trained["data"]), "--rank", "3", "--preset", "accurate",
                "--time-budget", "1.5", "--output", str(out), "--quiet"]
        assert main(args) == 0
        res = json.loads(out.read_text())
        assert res["stopped"] == "time_budget" and res["options"]["optimizer"] == "gibbs"
        assert res["n_valid"] == 0 and res["train_seconds"] < 10
        out_text = capsys.readouterr().out
        assert "preset accurate" in out_text
        n_samples = int(out_text.split("preset accurate, ")[1].split(" samples")[0])
        assert n_samples >= 10 and np.isfinite(res["test_rmse"])

    def test_results_of_a_file(self, trained):
        res = json.loads(trained["results"].read_text())
        assert RESULT_KEYS <= set(res)
        assert res["n_ratings"] == res["n_train"] + res["n_test"] == 2400
        # 10 % of the training part stops training early by default, then the model is refit on all of it
        assert res["n_valid"] == 216
        assert res["epochs"] == 2 and res["options"]["rank"] == 3
        assert res["data"] == str(trained["data"])
        assert np.isfinite(res["test_rmse"]) and np.isfinite(res["test_mae"])

    def test_progress_and_quiet(self, small_ratings_file, tmp_path, capsys):
        assert main(train_args(small_ratings_file)) == 0
        loud = capsys.readouterr()
        # not a terminal: one line per epoch under a header of labelled columns
        lines = loud.err.splitlines()
        header = next(line for line in lines if line.split()[:2] == ["epoch", "train_loss"])
        assert "epoch_s" in header and "total_s" in header
        rows = [line.split() for line in lines if line.split() and line.split()[0] in ("1", "2")]
        assert [r[0] for r in rows][:2] == ["1", "2"] and len(rows[0]) == len(header.split())  # then the refit
        assert main(train_args(small_ratings_file, "--quiet")) == 0
        quiet = capsys.readouterr()
        assert quiet.err == ""
        assert "test RMSE" in quiet.out  # the summary is still printed

    def test_refuses_to_overwrite_output(self, small_ratings_file, tmp_path, capsys):
        out = tmp_path / "res.json"
        out.write_text("precious\n")
        assert main(train_args(small_ratings_file, "--output", str(out))) == 1
        assert out.read_text() == "precious\n"
        err = capsys.readouterr().err
        assert "exists" in err and "--overwrite" in err and "Traceback" not in err
        assert main(train_args(small_ratings_file, "--output", str(out), "--overwrite", "-q")) == 0
        assert RESULT_KEYS <= set(json.loads(out.read_text()))

    def test_refuses_to_overwrite_model(self, small_ratings_file, tmp_path):
        model = tmp_path / "m.npz"
        model.write_bytes(b"old")
        assert main(train_args(small_ratings_file, "--save", str(model), "-q")) == 1
        assert model.read_bytes() == b"old"

    def test_save_without_suffix_fails_before_training(self, small_ratings_file, tmp_path):
        (tmp_path / "m.npz").write_bytes(b"old")
        out = tmp_path / "res.json"
        assert main(train_args(small_ratings_file, "--save", str(tmp_path / "m"), "--output", str(out), "-q")) == 1
        assert not out.exists()

    def test_missing_data_file(self, tmp_path, capsys):
        missing = tmp_path / "nope.dat"
        assert main(["train", "--data", str(missing), "--epochs", "1"]) == 1
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0
        assert err.startswith("lfopt train: error:") and "nope.dat" in err and "no such file" in err

    def test_malformed_data_file(self, write, capsys):
        path = write("ratings.dat", "1::1::5\n1::2::4::1::9\n")
        assert main(["train", "--data", str(path), "--epochs", "1", "-q"]) == 1
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "line 2" in err

    def test_bad_hyper_parameter(self, small_ratings_file, capsys):
        assert main(train_args(small_ratings_file, "--rank", "0", "-q")) == 1
        assert "rank must be a positive integer" in capsys.readouterr().err

    def test_columns_option(self, write, capsys):
        path = write("log.csv", "stars,who,what\n" + "".join(f"{(u * i) % 5 + 1},{u},{i}\n"
                                                                for u in range(30) for i in range(u % 7, 40, 3)))
        rc = main(["train", "--data", str(path), "--columns", "user=who,item=what,rating=stars",
                   "--optimizer", "als", "--rank", "2", "--epochs", "1", "-q"])
        assert rc == 0
        assert "test RMSE" in capsys.readouterr().out
        assert main(["train", "--data", str(path), "--columns", "user", "--epochs", "1", "-q"]) == 1

    def test_douban_uses_fixed_split(self, douban_path, tmp_path):
        out = tmp_path / "douban.json"
        rc = main(["train", "--data", str(douban_path), "--optimizer", "als", "--rank", "2", "--epochs", "1",
                   "--output", str(out), "-q"])
        assert rc == 0
        res = json.loads(out.read_text())
        assert (res["n_train"], res["n_test"]) == (123_202, 13_689)


# ================================================================= evaluate
@needs_evaluate
class TestEvaluate:
    def test_evaluate_saved_model(self, trained, tmp_path, capsys):
        out = tmp_path / "eval.json"
        rc = main(["evaluate", "--model", str(trained["model"]), "--data", str(trained["data"]), "--all",
                   "--output", str(out)])
        assert rc == 0
        res = json.loads(out.read_text())
        assert {"rmse", "mae", "n"} <= set(res) and res["n"] == 2400 and res["part"] == "all"
        model = lfopt.load(trained["model"])
        expected = model.evaluate(lfopt.load_data(trained["data"]))
        assert res["rmse"] == pytest.approx(expected["rmse"])
        assert "RMSE" in capsys.readouterr().out

    def test_evaluate_with_format(self, trained, tmp_path, capsys):
        copy = tmp_path / "ratings.unknown"
        copy.write_bytes(trained["data"].read_bytes())
        assert main(["evaluate", "--model", str(trained["model"]), "--data", str(copy), "--format", "tsv"]) == 0
        assert "RMSE" in capsys.readouterr().out

    def test_evaluate_refuses_to_overwrite(self, trained, tmp_path):
        out = tmp_path / "eval.json"
        out.write_text("keep\n")
        args = ["evaluate", "--model", str(trained["model"]), "--data", str(trained["data"]), "--output", str(out)]
        assert main(args) == 1
        assert out.read_text() == "keep\n"

    def test_evaluate_not_a_model(self, trained, tmp_path, capsys):
        fake = tmp_path / "fake.npz"
        fake.write_text("hello")
        assert main(["evaluate", "--model", str(fake), "--data", str(trained["data"])]) == 1
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "fake.npz" in err and "not an lfopt model" in err

    def test_evaluate_missing_data(self, trained, tmp_path, capsys):
        assert main(["evaluate", "--model", str(trained["model"]), "--data", str(tmp_path / "gone.tsv")]) == 1
        assert "gone.tsv" in capsys.readouterr().err

    def test_evaluate_needs_data(self, trained, capsys):
        with pytest.raises(SystemExit) as info:
            main(["evaluate", "--model", str(trained["model"])])
        assert info.value.code == 2


# ================================================================== predict
class TestPredict:
    def test_predictions_in_file_order_with_known_flags(self, trained, tmp_path, capsys):
        pairs = tmp_path / "pairs.tsv"  # no rating column; an unknown user and an unknown item
        pairs.write_text("5\t7\n0\t3\n99999\t3\n5\t88888\n")
        out = tmp_path / "pred.tsv"
        assert main(["predict", "--model", str(trained["model"]), "--data", str(pairs), "--output", str(out)]) == 0
        assert "4 predictions (2 with a user or item the model never saw: the mean and the known side's bias)" in \
            capsys.readouterr().err
        lines = out.read_text().splitlines()
        assert lines[0].split("\t") == ["user", "item", "prediction", "known"]
        rows = [line.split("\t") for line in lines[1:]]
        assert [(r[0], r[1], r[3]) for r in rows] == [("5", "7", "1"), ("0", "3", "1"), ("99999", "3", "0"),
                                                      ("5", "88888", "0")]
        model = lfopt.load(trained["model"])
        with pytest.warns(UserWarning, match="unseen"):
            expected = model.predict([5, 0, 99999, 5], [7, 3, 3, 88888])
        assert np.allclose([float(r[2]) for r in rows], expected, rtol=1e-5)
        # the fallback of an unknown user is the mean plus the item's bias
        assert float(rows[2][2]) == pytest.approx(model.mu_ + float(model.factors()[1][model._item_cols([3])[0]]),
                                                  rel=1e-4)
        # csv by extension; --no-clip gives the raw scores
        csv = tmp_path / "pred.csv"
        assert main(["predict", "--model", str(trained["model"]), "--data", str(trained["data"]), "--output",
                     str(csv), "--no-clip", "--quiet"]) == 0
        table = np.genfromtxt(csv, delimiter=",", skip_header=1)
        data = lfopt.load_data(trained["data"])
        raw = model.predict(data.user_ids[data.users], data.item_ids[data.items], clip=False)
        assert table.shape == (2400, 4) and np.allclose(table[:, 2], raw, rtol=1e-5) and table[:, 3].all()

    def test_standard_output_and_no_overwrite(self, trained, tmp_path, capsys):
        pairs = tmp_path / "pairs.tsv"
        pairs.write_text("5\t7\n")
        assert main(["predict", "--model", str(trained["model"]), "--data", str(pairs)]) == 0
        captured = capsys.readouterr()
        assert captured.out.splitlines()[0] == "user\titem\tprediction\tknown"
        assert captured.out.splitlines()[1].startswith("5\t7\t") and "1 predictions" in captured.err
        out = tmp_path / "keep.tsv"
        out.write_text("precious\n")
        assert main(["predict", "--model", str(trained["model"]), "--data", str(pairs), "--output", str(out)]) == 1
        assert out.read_text() == "precious\n" and "--overwrite" in capsys.readouterr().err

    def test_a_ranking_model_leaves_unknown_pairs_empty(self, small_synthetic, tmp_path, capsys):
        model = lfopt.ImplicitALS(rank=2, epochs=2, seed=0).fit(small_synthetic.with_values(1.0))
        path = model.save(tmp_path / "ials.npz")
        pairs = tmp_path / "pairs.tsv"
        pairs.write_text("5\t7\n99999\t7\n")
        assert main(["predict", "--model", str(path), "--data", str(pairs)]) == 0
        captured = capsys.readouterr()
        rows = [line.split("\t") for line in captured.out.splitlines()[1:]]
        model = lfopt.load(path)
        assert float(rows[0][2]) == pytest.approx(float(model.predict([5], [7])[0]), rel=1e-5) and rows[0][3] == "1"
        assert rows[1] == ["99999", "7", "", "0"] and "no score, left empty" in captured.err

    def test_repeated_pair_is_named_with_the_flag_that_combines_them(self, trained, tmp_path, capsys):
        pairs = tmp_path / "pairs.tsv"
        pairs.write_text("5\t7\n0\t3\n5\t7\n")
        assert main(["predict", "--model", str(trained["model"]), "--data", str(pairs)]) == 1
        err = capsys.readouterr().err
        assert "pairs.tsv, line 3" in err and "--duplicates mean or --duplicates last" in err


# ===================================================================== info
def test_info_says_what_a_model_file_holds(trained, tmp_path, capsys):
    assert main(["info", "--model", str(trained["model"])]) == 0
    text = capsys.readouterr().out
    model = lfopt.load(trained["model"])
    assert "LatentFactorModel, method als, rank 3" in text and f"saved by lfopt {lfopt.__version__}" in text
    assert f"{model.n_users_} users x {model.n_items_} items, 2160 training ratings" in text
    assert str(trained["data"]) in text and "random split, seed 1, test fraction 0.1" in text
    assert "optimizer='als'" in text and "training    2 epochs" in text
    assert main(["info", "--model", str(trained["model"]), "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["n_users"] == model.n_users_ and facts["epochs"] == len(model.history_)
    assert facts["last_epoch"]["train_rmse"] == pytest.approx(model.history_[-1]["train_rmse"])
    fake = tmp_path / "fake.npz"
    fake.write_text("hello")
    assert main(["info", "--model", str(fake)]) == 1
    assert "not an lfopt model" in capsys.readouterr().err


# ================================================================ recommend
@needs_recommend
class TestRecommend:
    @staticmethod
    def _seen(model, u: int) -> set:
        """Original IDs of the items user index ``u`` rated in training."""
        lo, hi = model.seen_indptr_[u], model.seen_indptr_[u + 1]
        return set(model.item_ids_[model.seen_indices_[lo:hi]].tolist())

    def test_top_k(self, trained, capsys):
        model = lfopt.load(trained["model"])
        u = int(np.argmax(model.user_counts_))
        user = model.user_ids_[u]
        assert main(["recommend", "--model", str(trained["model"]), "--user", str(user), "-k", "4", "--json"]) == 0
        recs = json.loads(capsys.readouterr().out)[str(user)]
        items, scores = model.recommend(user, k=4)
        assert [r["item"] for r in recs] == items.tolist()
        assert [r["score"] for r in recs] == pytest.approx(scores.tolist())
        assert all(a >= b for a, b in zip(scores, scores[1:]))
        assert not self._seen(model, u) & {r["item"] for r in recs}

    def test_include_seen(self, trained, capsys):
        model = lfopt.load(trained["model"])
        u = int(np.argmax(model.user_counts_))
        user = model.user_ids_[u]
        assert main(["recommend", "--model", str(trained["model"]), "--user", str(user), "-k", str(model.n_items_),
                     "--include-seen", "--json"]) == 0
        recs = json.loads(capsys.readouterr().out)[str(user)]
        assert self._seen(model, u) <= {r["item"] for r in recs}

    def test_several_users(self, trained, capsys):
        assert main(["recommend", "--model", str(trained["model"]), "--user", "1", "--user", "2", "-k", "2",
                     "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert set(out) == {"1", "2"} and all(len(v) == 2 for v in out.values())

    def test_all_users_to_a_file_and_to_stdout(self, trained, tmp_path, capsys):
        model = lfopt.load(trained["model"])
        out = tmp_path / "recs.csv"
        assert main(["recommend", "--model", str(trained["model"]), "--all-users", "-k", "3", "--output",
                     str(out)]) == 0
        assert "top-3 lists of" in capsys.readouterr().err
        table = pd.read_csv(out)
        assert list(table.columns) == ["user", "rank", "item", "score"]
        known = model.user_ids_[model.user_counts_ > 0]
        assert sorted(set(table["user"])) == sorted(known.tolist()) and len(table) == 3 * len(known)
        u = int(np.argmax(model.user_counts_))
        mine = table[table["user"] == model.user_ids_[u]]
        items, scores = model.recommend(model.user_ids_[u], k=3)
        assert mine["item"].tolist() == items.tolist() and mine["rank"].tolist() == [1, 2, 3]
        assert mine["score"].tolist() == pytest.approx(scores.tolist(), rel=1e-5)
        assert not self._seen(model, u) & set(mine["item"])
        assert main(["recommend", "--model", str(trained["model"]), "--all-users", "-k", "2"]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0] == "user\trank\titem\tscore" and len(lines) == 1 + 2 * len(known)
        assert main(["recommend", "--model", str(trained["model"]), "--all-users", "--output", str(out)]) == 1
        assert "--overwrite" in capsys.readouterr().err  # the file is kept
        for argv in (["--all-users", "--user", "1"], []):
            with pytest.raises(SystemExit) as info:
                main(["recommend", "--model", str(trained["model"]), *argv])
            assert info.value.code == 2

    def test_table_output_default_k(self, trained, capsys):
        assert main(["recommend", "--model", str(trained["model"]), "--user", "0"]) == 0
        out = capsys.readouterr().out
        assert out.startswith("user 0:")
        assert out.count("item ") == 10

    def test_unknown_user_gets_popular_items(self, trained, capsys):
        # an unknown user is an error unless the fallback (popular items) is asked for
        assert main(["recommend", "--model", str(trained["model"]), "--user", "no-such-user", "-k", "3",
                     "--json"]) != 0
        assert "no-such-user" in capsys.readouterr().err
        assert main(["recommend", "--model", str(trained["model"]), "--user", "no-such-user", "-k", "3",
                     "--json", "--fallback"]) == 0
        assert len(json.loads(capsys.readouterr().out)["no-such-user"]) == 3

    def test_unknown_user_among_known_ones_keeps_their_lists(self, trained, capsys):
        # one unknown user among several: the others' lists are printed, the unknown one is reported, exit 1
        assert main(["recommend", "--model", str(trained["model"]), "--user", "1", "--user", "no-such-user",
                     "--user", "2", "-k", "2", "--json"]) == 1
        cap = capsys.readouterr()
        assert set(json.loads(cap.out)) == {"1", "2"}
        assert "no-such-user" in cap.err and "--fallback" in cap.err

    def test_string_id_model(self, tmp_path, string_id_model, capsys):
        path = string_id_model.save(tmp_path / "s.npz")
        assert main(["recommend", "--model", str(path), "--user", "user-3", "-k", "2", "--json"]) == 0
        recs = json.loads(capsys.readouterr().out)["user-3"]
        assert [r["item"] for r in recs] == string_id_model.recommend("user-3", k=2)[0].tolist()

    def test_bad_k(self, trained, capsys):
        assert main(["recommend", "--model", str(trained["model"]), "--user", "0", "-k", "0"]) == 1
        assert "k must be a positive integer" in capsys.readouterr().err

    def test_missing_model(self, tmp_path, capsys):
        assert main(["recommend", "--model", str(tmp_path / "none.npz"), "--user", "1"]) == 1
        assert "none.npz" in capsys.readouterr().err


# =============================================================== subprocess
def test_subprocess_smoke(tmp_path):
    """``python -m lfopt.cli``: help works, and an error is one line with exit code 1 (no traceback)."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    ok = subprocess.run([sys.executable, "-m", "lfopt.cli", "train", "--help"], capture_output=True, text=True,
                        env=env, cwd=tmp_path, timeout=120)
    assert ok.returncode == 0 and "--epochs" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "lfopt.cli", "train", "--data", "missing.dat"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert bad.returncode == 1
    assert "Traceback" not in bad.stderr
    assert bad.stderr.strip() == "lfopt train: error: missing.dat: no such file"
