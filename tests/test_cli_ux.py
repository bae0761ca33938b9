"""What a newcomer sees first: timings without compilation, sound defaults in compare, diverged runs
and count data refused, the split kept in a saved model, progress, flags in error messages, results
files, plots, fixed train/test files and output paths checked before training (issue 9)."""

from __future__ import annotations

import datetime as dt
import io
import json
import math
import os
import warnings

import numpy as np
import pytest

import lfopt
from lfopt.cli import main
from lfopt.commands.common import count_data_problem, pairs_hash, to_flags, warm_up
from lfopt.train.trainer import Trainer, divergence_advice, progress_style

from conftest import LASTFM, ML100K, dataset_path


def write_tsv(path, users, items, values):
    path.write_text("".join(f"{u}\t{i}\t{v:.4f}\n" for u, i, v in zip(users, items, values)))
    return path


@pytest.fixture(scope="module")
def ratings(tmp_path_factory, small_synthetic):
    d = small_synthetic
    return write_tsv(tmp_path_factory.mktemp("ux") / "ratings.tsv", d.users.tolist(), d.items.tolist(),
                     d.values.tolist())


def fast(data, *extra):
    return ["train", "--data", str(data), "--rank", "3", "--epochs", "3", "--seed", "1", *extra]


def test_valid_fraction_the_sampler_does_not_use_is_said(ratings, tmp_path, capsys):
    """The default samples on the whole training part: an explicit --valid-fraction says it is not used
    (not silently dropped); the default value, or an optimizer that stops early, says nothing."""
    assert main(fast(ratings, "--valid-fraction", "0.2")) == 0
    err = capsys.readouterr().err
    assert "--valid-fraction 0.2 is not used" in err and "with gibbs" in err
    assert main(fast(ratings)) == 0
    assert "--valid-fraction" not in capsys.readouterr().err
    out = tmp_path / "als.json"
    assert main(fast(ratings, "--valid-fraction", "0.2", "--optimizer", "als", "--output", str(out))) == 0
    assert "--valid-fraction" not in capsys.readouterr().err
    assert json.loads(out.read_text())["n_valid"] == round(0.2 * 0.9 * 2400)


# ======================================================== 1. compile time apart
def test_warm_up_compiles_before_timing():
    model = lfopt.LatentFactorModel(rank=4, optimizer="adam", epochs=6, seed=0)
    seconds = warm_up(model)
    assert seconds >= 0 and not hasattr(model, "params_")  # the model given is not fitted
    data = lfopt.synthetic(n_users=600, n_items=400, nnz=30_000, seed=1)
    model.fit(data)
    steps = [row["epoch_seconds"] for row in model.history_]
    # no compilation in the first epoch: it costs about what the others do
    assert steps[0] < 5 * float(np.median(steps[1:])) + 0.05


def test_train_and_compare_report_compile_seconds(ratings, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(fast(ratings, "--output", str(out))) == 0
    res = json.loads(out.read_text())
    assert res["compile_seconds"] >= 0 and "compiled or loaded" in capsys.readouterr().err
    # the per-epoch seconds are the trainer's, and the first epoch is not a compilation
    assert res["seconds_per_epoch"] == pytest.approx(np.mean([r["epoch_seconds"] for r in res["history"]]))
    assert res["history"][0]["epoch_seconds"] < 0.5


# ==================================================== 2. compare: sound defaults
def test_compare_uses_the_models_defaults_and_early_stopping(ratings, tmp_path, monkeypatch):
    titles = []
    import lfopt.commands.compare as cmd

    real = cmd.plot_curves
    monkeypatch.setattr(cmd, "plot_curves", lambda *a, **k: titles.append(k["title"]) or real(*a, **k))
    outdir = tmp_path / "cmp"
    assert main(["compare", "--data", str(ratings), "--optimizers", "als,slf", "--rank", "3", "--outdir",
                 str(outdir), "-q"]) == 0
    res = json.loads((outdir / "results.json").read_text())
    defaults = lfopt.LatentFactorModel().get_params()
    opts = res["options"]
    assert (opts["lambda"], opts["lambda0"], opts["lambda_bias"], opts["lambda0_bias"]) == \
        (defaults["lam"], defaults["lam0"], defaults["lam_b"], defaults["lam0_b"])
    assert opts["epochs"] == defaults["epochs"] and opts["patience"] == defaults["patience"]
    assert "lam" not in opts and opts["valid_fraction"] == 0.1 and res["compile_seconds"] >= 0
    for run in res["runs"]:
        assert run["stopped"] == "early_stop" and run["best_epoch"] > 1  # not the epoch-1 peak of lambda 0.02
        assert "valid_rmse" in run["history"][0]
    # titles name the dataset and the protocol
    assert len(titles) == 2 and all("ratings.tsv" in t and "80%/10%/10%" in t and "early stop" in t for t in titles)
    assert (outdir / "rmse_vs_time.png").stat().st_size > 1000


def test_compare_without_validation(ratings, tmp_path):
    outdir = tmp_path / "cmp"
    assert main(["compare", "--data", str(ratings), "--optimizers", "als", "--rank", "2", "--epochs", "4",
                 "--valid-fraction", "0", "--outdir", str(outdir), "-q"]) == 0
    run = json.loads((outdir / "results.json").read_text())["runs"][0]
    assert run["epochs"] == 4 and run["stopped"] == "max_epochs" and "valid_rmse" not in run["history"][0]


def test_compare_marks_diverged_runs_and_exits_nonzero(ratings, tmp_path, capsys):
    outdir = tmp_path / "cmp"
    code = main(["compare", "--data", str(ratings), "--optimizers", "sgd,als", "--rank", "3", "--epochs", "3",
                 "--lambda", "0", "--set", "sgd:lr=50", "--outdir", str(outdir), "-q"])
    assert code == 1
    captured = capsys.readouterr()
    assert "diverged" in captured.err and "--lr" in captured.err and " lr " not in captured.err
    row = next(line for line in captured.out.splitlines() if line.startswith("| sgd"))
    assert "diverged" in row and "nan" not in row
    res = json.loads((outdir / "results.json").read_text())
    assert res["diverged"] == ["sgd (seed 0)"] and res["summary"][0]["n_diverged"] == 1


# ======================================================= 3. diverged, count data
def test_diverged_train_has_no_headline(tmp_path, capsys):
    code = main(["train", "--optimizer", "sgd", "--lr", "50", "--lambda", "0", "--epochs", "3", "--n-users", "300",
                 "--n-items", "200", "--quiet", "--output", str(tmp_path / "r.json")])
    captured = capsys.readouterr()
    assert code == 1 and "RMSE" not in captured.out and not (tmp_path / "r.json").exists()
    assert captured.err.count("diverged") == 1 and "--lr" in captured.err


class _Blowup:
    """An optimizer whose first epoch produces inf."""

    def __init__(self, name):
        self.name = name

    def epoch(self, obj, y, epoch):
        y[:] = np.inf
        return {}


@pytest.mark.parametrize("name, wanted, unwanted", [
    ("als", "regularization", "lower the learning rate"),
    ("slf", "damping", "lower the learning rate"),
    ("sgd", "learning rate", "ALS"),
])
def test_divergence_advice_fits_the_optimizer(small_split, name, wanted, unwanted):
    from lfopt.models.lf import LFObjective

    obj = LFObjective(small_split[0], 3, lam=0.05)
    res = Trainer(3, None, verbose=False).run(obj, _Blowup(name), obj.init_params(0.1, 0))
    assert res.stopped == "diverged"
    assert wanted in res.message and unwanted.lower() not in res.message.lower()
    assert divergence_advice(_Blowup(name)) in res.message
    if name == "als":  # and on the command line the parameters are the flags
        assert "(--lambda, --lambda0)" in to_flags(res.message) and "--init-scale" in to_flags(res.message)


def test_count_data_rule():
    rng = np.random.default_rng(0)
    plays = np.floor(rng.pareto(1.2, 5000) * 50) + 1
    assert "counts" in count_data_problem(plays) and "skewness" in count_data_problem(plays)
    assert count_data_problem(rng.integers(1, 6, 5000)) is None  # stars
    assert count_data_problem(rng.integers(0, 101, 5000)) is None  # a 0..100 score
    assert count_data_problem(np.round(rng.normal(500, 100, 5000))) is None  # large but not heavy-tailed
    assert count_data_problem(plays + 0.5) is None  # not whole numbers


def test_count_data_refused_unless_forced(tmp_path, capsys):
    rng = np.random.default_rng(1)
    n = 3000
    path = write_tsv(tmp_path / "plays.tsv", rng.integers(0, 150, n), rng.integers(0, 100, n),
                     np.floor(rng.pareto(1.1, n) * 40) + 1)
    assert main(["train", "--data", str(path), "--duplicates", "last", "--epochs", "2", "-q"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "lfopt rank" in captured.err and "--force-rating" in captured.err
    assert main(["train", "--data", str(path), "--duplicates", "last", "--epochs", "2", "--rank", "2", "-q",
                 "--force-rating"]) == 0
    captured = capsys.readouterr()
    assert "warning" in captured.err and "counts" in captured.err and "test RMSE" in captured.out


def test_lastfm_plays_go_to_rank(capsys):
    path = dataset_path(LASTFM)
    assert main(["train", "--data", str(path), "-q"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "lfopt rank" in captured.err and "352698" in captured.err


# ============================================================= 4. saved split
def test_saved_model_keeps_its_split(ratings, tmp_path, capsys):
    model_file, out = tmp_path / "m.npz", tmp_path / "r.json"
    assert main(fast(ratings, "--test-fraction", "0.2", "--save", str(model_file), "--output", str(out), "-q")) == 0
    res = json.loads(out.read_text())
    info = lfopt.load(model_file).data_info_
    assert info["split"] == "random" and info["seed"] == 1 and info["test_fraction"] == 0.2
    assert info["path"] == os.path.abspath(ratings) and info["n_test"] == 480 and len(info["test_hash"]) == 64
    capsys.readouterr()
    ev = tmp_path / "e.json"
    assert main(["evaluate", "--model", str(model_file), "--data", str(ratings), "--output", str(ev)]) == 0
    held = json.loads(ev.read_text())
    assert held["n_part"] == 480 and held["part"].startswith("held-out")
    assert held["rmse"] == pytest.approx(res["test_rmse"], rel=1e-6)
    assert "held-out" in capsys.readouterr().err
    ev.unlink()
    assert main(["evaluate", "--model", str(model_file), "--data", str(ratings), "--all", "--output", str(ev)]) == 0
    everything = json.loads(ev.read_text())
    assert everything["n_part"] == 2400 and everything["rmse"] < held["rmse"]  # training ratings included


def test_changed_file_is_scored_whole(ratings, tmp_path, capsys):
    model_file = tmp_path / "m.npz"
    copy = tmp_path / "copy.tsv"
    copy.write_text(ratings.read_text())
    assert main(fast(copy, "--save", str(model_file), "-q")) == 0
    lines = copy.read_text().splitlines()
    held_out = int(np.random.default_rng(1).permutation(len(lines))[0])  # a line of the test part (seed 1)
    changed = lines.copy()
    changed[held_out] = changed[held_out].rsplit("\t", 1)[0] + "\t1.2345"
    copy.write_text("\n".join(changed) + "\n")
    capsys.readouterr()
    ev = tmp_path / "e.json"
    assert main(["evaluate", "--model", str(model_file), "--data", str(copy), "--output", str(ev)]) == 0
    assert json.loads(ev.read_text())["n_part"] == 2400
    assert "does not match" in capsys.readouterr().err
    copy.write_text("\n".join(lines + ["9999\t0\t3.0"]) + "\n")  # one rating more
    ev.unlink()
    assert main(["evaluate", "--model", str(model_file), "--data", str(copy), "--output", str(ev)]) == 0
    assert json.loads(ev.read_text())["n_part"] == 2401
    assert "changed since training" in capsys.readouterr().err


def test_pairs_hash_tells_splits_apart(small_synthetic):
    a = lfopt.random_split(small_synthetic, 0.1, seed=1)[1]
    assert pairs_hash(a) == pairs_hash(lfopt.random_split(small_synthetic, 0.1, seed=1)[1])
    assert pairs_hash(a) != pairs_hash(lfopt.random_split(small_synthetic, 0.1, seed=2)[1])


def test_evaluate_unseen_drop_counts_once_and_all_unseen_is_an_error(ratings, tmp_path, capsys):
    model_file = tmp_path / "m.npz"
    assert main(fast(ratings, "--save", str(model_file), "-q")) == 0
    other = write_tsv(tmp_path / "other.tsv", [0, 1, 999, 998], [0, 1, 2, 3], [3, 4, 5, 1])
    capsys.readouterr()
    assert main(["evaluate", "--model", str(model_file), "--data", str(other), "--unseen", "drop"]) == 0
    out = capsys.readouterr().out
    assert "on 2 ratings" in out and "(2 pairs with a user or item unseen in training dropped)" in out
    assert "-2" not in out
    strangers = write_tsv(tmp_path / "strangers.tsv", [900, 901], [0, 1], [3, 4])
    assert main(["evaluate", "--model", str(model_file), "--data", str(strangers), "--unseen", "drop"]) == 1
    err = capsys.readouterr().err
    assert "error" in err and "all 2" in err and "--unseen" in err and "nan" not in err.lower()


# ================================================================ 5. progress
def _fit_with_trainer(small_split, epochs=4, **kwargs):
    from lfopt.models.lf import LFObjective
    from lfopt.optim.base import make_optimizer

    obj = LFObjective(small_split[0], 3, lam=0.05)
    stream = io.StringIO()
    trainer = Trainer(epochs, None, stream=stream, **kwargs)

    def evaluate(y):
        return {"rmse": float(obj.loss(y))}

    trainer.run(obj, make_optimizer("als"), obj.init_params(0.1, 0), evaluate)
    return stream.getvalue()


def test_progress_lines_bar_and_silence(small_split):
    lines = _fit_with_trainer(small_split, progress="lines")
    header = [line for line in lines.splitlines() if line.split()[:1] == ["epoch"]]
    assert len(header) == 1 and header[0].split()[-2:] == ["epoch_s", "total_s"] and "valid_rmse" in header[0]
    assert [line.split()[0] for line in lines.splitlines()[-4:]] == ["1", "2", "3", "4"]
    bar = _fit_with_trainer(small_split, progress="bar")
    assert "4/4" in bar and "100%" in bar and "s/epoch" in bar and "epoch_s" not in bar
    assert _fit_with_trainer(small_split, progress="bar", verbose=False) == ""
    # a StringIO is no terminal: auto gives lines; progress_style sets the style of new trainers
    assert "epoch_s" in _fit_with_trainer(small_split)
    with progress_style("bar"):
        assert "100%" in _fit_with_trainer(small_split)


def test_long_runs_print_every_tenth_epoch_and_the_last(small_split):
    for epochs, shown in ((55, [*range(1, 11), 20, 30, 40, 50, 55]), (50, list(range(1, 51)))):
        lines = _fit_with_trainer(small_split, epochs=epochs, progress="lines").splitlines()
        rows = [int(line.split()[0]) for line in lines if line.split()[:1] and line.split()[0].isdigit()]
        assert rows == shown


def test_quiet_silences_everything_but_the_result(ratings, capsys):
    assert main(fast(ratings, "--quiet")) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and "test RMSE" in captured.out
    assert main(fast(ratings, "--progress", "bar")) == 0
    assert "100%" in capsys.readouterr().err


def test_compare_logs_runs_through_the_logger(small_synthetic, caplog):
    from lfopt.compare import compare

    with caplog.at_level("INFO", logger="lfopt"):
        runs = compare(small_synthetic, ["als"], seeds=[0], rank=2, epochs=2)
    assert len(runs) == 1 and any("seed 0 als" in r.getMessage() for r in caplog.records)


# ================================================================ 6. flags
@pytest.mark.parametrize("message, expected", [
    ("lam must be a finite number >= 0, got -1", "--lambda must be a finite number >= 0, got -1"),
    ('lam="learn" needs validation: keep validation > 0', "--lambda learn needs validation: keep --valid-fraction > 0"),
    ("rank must be a positive integer, got 0", "--rank must be a positive integer, got 0"),
    ("the rank of the model and its epochs", "the rank of the model and its epochs"),
    ("init_scale must be > 0, got 0", "--init-scale must be > 0, got 0"),
    ("raise the regularization (lam, lam0) or lower lr",
     "raise the regularization (--lambda, --lambda0) or lower --lr"),
    ("--lambda must be >= 0", "--lambda must be >= 0"),
    ("lambda0 is fine", "lambda0 is fine"),
])
def test_to_flags(message, expected):
    assert to_flags(message) == expected


@pytest.mark.parametrize("extra, flag, python", [
    (["--lambda", "-1"], "--lambda must", "lam must"),
    (["--lambda0", "-2"], "--lambda0 must", "lam0 must"),
    (["--init-scale", "0"], "--init-scale must", "init_scale"),
    (["--rank", "0"], "--rank must", "rank must"),
])
def test_cli_errors_name_flags(ratings, capsys, extra, flag, python):
    assert main(fast(ratings, "-q", *extra)) == 1
    err = capsys.readouterr().err
    assert flag in err and f" {python}" not in err.replace(flag, "")


# ============================================================ 7. synthetic
def test_synthetic_size_and_noise(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["train", "--n-users", "200", "--n-items", "150", "--nnz", "4000", "--noise", "0.1", "--epochs",
                 "3", "-q", "--output", str(out)]) == 0
    res = json.loads(out.read_text())
    assert (res["n_users"], res["n_items"], res["n_ratings"], res["noise_floor"]) == (200, 150, 4000, 0.1)
    assert res["options"]["nnz"] == 4000 and res["options"]["noise"] == 0.1
    assert main(["train", "--n-users", "20", "--n-items", "10", "--nnz", "150", "-q"]) == 1
    assert "--nnz" in capsys.readouterr().err
    assert main(["train", "--data", "x.tsv", "--noise", "0.1", "-q"]) == 1
    err = capsys.readouterr().err
    assert "--noise" in err and "with --data" in err


# ============================================================ 8. results JSON
def test_results_json_has_version_time_command_and_one_name_per_option(ratings, tmp_path):
    out = tmp_path / "r.json"
    argv = fast(ratings, "--lambda", "0.1", "--output", str(out), "-q")
    assert main(argv) == 0
    res = json.loads(out.read_text())
    assert res["lfopt_version"] == lfopt.__version__
    stamp = dt.datetime.fromisoformat(res["timestamp"])
    assert stamp.utcoffset() == dt.timedelta(0)
    assert abs((dt.datetime.now(dt.timezone.utc) - stamp).total_seconds()) < 600
    assert res["command"].startswith("lfopt train --data ") and "--lambda 0.1" in res["command"]
    opts = res["options"]
    assert opts["lambda"] == 0.1 and opts["lambda0"] == lfopt.LatentFactorModel().lam0
    for python_name in ("lam", "lam0", "lam_b", "lam0_b"):
        assert python_name not in opts


def test_plot_styles_keep_overlapping_curves_apart():
    from lfopt.plots import curve_style

    styles = [curve_style(k, 40) for k in range(8)]
    assert len({(s["marker"], s["linestyle"]) for s in styles}) == 8
    assert all(s["alpha"] < 1 and s["markevery"] > 1 for s in styles)


# ====================================================== 9. fixed test files
def test_train_test_files_share_one_index_space(tmp_path):
    train_file = write_tsv(tmp_path / "a.tsv", [1, 1, 2, 3], [10, 20, 10, 30], [4, 3, 5, 2])
    test_file = write_tsv(tmp_path / "b.tsv", [1, 4, 2], [30, 10, 40], [3, 4, 1])
    train, test = lfopt.train_test_files(train_file, test_file)
    assert train.nnz == 4 and test.nnz == 3 and train.shape == test.shape == (4, 4)
    assert test.user_ids is train.user_ids and test.item_ids is train.item_ids
    assert list(train.user_ids[test.users]) == [1, 4, 2] and list(train.item_ids[test.items]) == [30, 10, 40]
    assert test.meta["n_unseen_pairs"] == 2 and test.meta["n_unseen_users"] == 1
    with pytest.raises(lfopt.DataError, match="integers"):
        lfopt.align_test(lfopt.Interactions.from_arrays([1], [2], [3.0]),
                         lfopt.Interactions.from_arrays(["u"], [2], [3.0]))


def test_cli_test_file(small_synthetic, tmp_path, capsys):
    d = small_synthetic
    cut = 2000
    users, items, values = d.users.tolist(), d.items.tolist(), d.values.tolist()
    train_file = write_tsv(tmp_path / "train.tsv", users[:cut], items[:cut], values[:cut])
    test_file = write_tsv(tmp_path / "test.tsv", users[cut:] + [5000], items[cut:] + [0], values[cut:] + [3.0])
    out, model_file = tmp_path / "r.json", tmp_path / "m.npz"
    assert main(fast(train_file, "--test", str(test_file), "--output", str(out), "--save", str(model_file),
                     "--optimizer", "als", "-q")) == 0
    res = json.loads(out.read_text())
    assert res["split"] == "test_file" and res["n_test"] == 401 and res["n_train"] == cut and res["n_valid"] == 200
    assert res["n_test_unseen"] >= 1
    out.unlink()
    assert main(fast(train_file, "--test", str(test_file), "--unseen", "drop", "--output", str(out), "-q")) == 0
    dropped = json.loads(out.read_text())
    assert dropped["n_test_scored"] == 401 - dropped["n_test_unseen"]
    # Python gives the same test RMSE as the CLI
    train, test = lfopt.train_test_files(train_file, test_file)
    assert test.nnz == 401
    # the model remembers its test file; evaluating it on its training file says so
    capsys.readouterr()
    assert main(["evaluate", "--model", str(model_file), "--data", str(train_file)]) == 0
    assert "test.tsv" in capsys.readouterr().err
    assert main(fast(train_file, "--test", str(test_file), "--test-fraction", "0.2", "-q")) == 1
    assert "--test-fraction" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["nan", "-0.1", "1", "1.5", "abc"])
def test_valid_fraction_refused_naming_the_flag(value, capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--valid-fraction", value])
    assert info.value.code == 2 and "--valid-fraction" in capsys.readouterr().err


def test_test_fraction_with_a_fixed_split_is_refused(douban_path, capsys):
    assert main(["train", "--data", str(douban_path), "--test-fraction", "0.2", "--epochs", "1", "-q"]) == 1
    err = capsys.readouterr().err
    assert "--test-fraction" in err and "fixed" in err


# ====================================================== 10. outputs checked first
def test_outputs_checked_before_training(ratings, tmp_path, capsys):
    same = tmp_path / "x.npz"
    assert main(fast(ratings, "--output", str(same), "--save", str(same))) == 1
    captured = capsys.readouterr()
    assert "same file" in captured.err and "epoch" not in captured.err and not same.exists()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(fast(ratings, "--output", str(blocker / "r.json"))) == 1
    captured = capsys.readouterr()
    assert "is a file" in captured.err and "training" not in captured.err


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into a read-only folder")
def test_unwritable_folder_checked_before_training(ratings, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert main(fast(ratings, "--save", str(locked / "m.npz"))) == 1
        assert "cannot write" in capsys.readouterr().err
    finally:
        locked.chmod(0o700)


# ================================================================ README
def test_readme_first_command_is_fast_and_quiet(capsys):
    # 'lfopt train' with no option (here smaller and shorter): synthetic data, no files needed
    assert main(["train", "--n-users", "300", "--n-items", "200", "--epochs", "2", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and "noise floor" in captured.out
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no stray warning on the default path
        assert main(["train", "--n-users", "300", "--n-items", "200", "--epochs", "2", "-q"]) == 0
    assert math.isfinite(float(capsys.readouterr().out.split("test RMSE ")[1].split()[0]))


def test_ml100k_held_out_evaluate(tmp_path, capsys):
    path = dataset_path(ML100K)
    model_file = tmp_path / "m.npz"
    assert main(["train", "--data", str(path), "--epochs", "3", "--rank", "8", "--save", str(model_file), "-q"]) == 0
    train_rmse = float(capsys.readouterr().out.split("test RMSE ")[1].split()[0])
    assert main(["evaluate", "--model", str(model_file), "--data", str(path)]) == 0
    out = capsys.readouterr().out
    assert "on 10000 ratings" in out and f"RMSE {train_rmse:.4f}" in out
