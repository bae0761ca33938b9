"""``lfopt rank``: results JSON, plots, grid search, model file and clear errors."""

import json

import numpy as np
import pytest

from lfopt.cli import main


@pytest.fixture(scope="module")
def ratings_file(tmp_path_factory):
    """A small explicit ratings file with timestamps and a rank-3 preference structure."""
    rng = np.random.default_rng(0)
    m, n = 150, 90
    U, V = rng.normal(size=(m, 3)), rng.normal(size=(n, 3))
    lines = []
    for u in range(m):
        items = rng.choice(n, size=20, replace=False)
        for i in items:
            r = int(np.clip(np.rint(3 + U[u] @ V[i] + rng.normal(0, 0.5)), 1, 5))
            lines.append(f"{u}\t{i}\t{r}\t{rng.integers(10**9)}\n")
    path = tmp_path_factory.mktemp("rank") / "ratings.tsv"
    path.write_text("".join(lines))
    return path


def _args(path, *extra):
    return ["rank", "--data", str(path), "--rank", "4", "--epochs", "3", "--batch-size", "256", "--k-core", "3",
            "--quiet", *extra]


def _args_model(path, model, *extra):
    common = ["rank", "--data", str(path), "--model", model, "--k-core", "3", "--quiet"]
    return common + (["--rank", "4", "--epochs", "3"] if model != "pop" else []) + list(extra)


def test_rank_lambdaopt_writes_results_and_plots(ratings_file, tmp_path, capsys):
    out = tmp_path / "res.json"
    plots = tmp_path / "plots"
    model = tmp_path / "m.npz"
    rc = main(_args(ratings_file, "--threshold", "3", "--regularizer", "lambdaopt", "--granularity", "DUI",
                    "--output", str(out), "--plots", str(plots), "--save", str(model), "--ks", "5,10"))
    assert rc == 0
    text = capsys.readouterr().out
    assert "lambdaOpt-DUI" in text and "AUC" in text and "learned Lambda" in text
    res = json.loads(out.read_text())
    assert res["model"] == "lambdaOpt-DUI" and res["split"]["by_time"] is True
    for key in ("auc", "hr@5", "ndcg@10", "recall@10", "precision@5", "by_activity"):
        assert key in res["test"]
    assert len(res["history"]) == 3 and len(res["lambda_trajectory"]) == 3
    assert res["peak_memory_mb"] > 0 and res["lambda_final"]["user"]["mean"] >= 0
    assert (plots / "rank_validation.png").stat().st_size > 1000
    assert (plots / "rank_lambda.png").stat().st_size > 1000
    assert model.stat().st_size > 0
    # never overwrite without --overwrite
    assert main(_args(ratings_file, "--output", str(out))) == 1
    assert "exists" in capsys.readouterr().err
    assert main(_args(ratings_file, "--output", str(out), "--overwrite")) == 0


def test_rank_fixed_grid(ratings_file, tmp_path, capsys):
    out = tmp_path / "grid.json"
    rc = main(_args(ratings_file, "--regularizer", "fixed", "--grid", "0.001,0.05", "--output", str(out),
                    "--plots", str(tmp_path)))
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["model"] == "MF-lambdaFix" and [r["lambda"] for r in res["grid"]] == [0.001, 0.05]
    best = max(res["grid"], key=lambda r: r["valid_ndcg@50"])
    assert res["lambda"] == best["lambda"]
    assert (tmp_path / "rank_grid.png").exists()
    assert "grid (validation ndcg@50)" in capsys.readouterr().out


@pytest.mark.parametrize("extra, message", [
    (["--granularity", "DX"], "unknown granularity"),
    (["--threshold", "9"], "no interaction has a value >= 9"),
    (["--k-core", "500"], "core"),
    (["--grid", "0.1"], "--regularizer fixed"),
    (["--split", "0.5,0.5"], "--split"),
    (["--metric", "mrr@5"], "unknown metric"),
    (["--lambda", "-1"], "--lambda must be"),
])
def test_rank_errors(ratings_file, extra, message, capsys):
    assert main(_args(ratings_file, *extra)) == 1
    err = capsys.readouterr().err
    assert "lfopt rank: error" in err and message in err


def test_rank_ials_and_pop_write_results_and_models(ratings_file, tmp_path, capsys):
    import lfopt
    from lfopt.estimators.ials import ImplicitALS, PopularityRanker

    for model, cls, label in (("ials", ImplicitALS, "iALS-cg"), ("pop", PopularityRanker, "popularity")):
        out, saved = tmp_path / f"{model}.json", tmp_path / f"{model}.npz"
        extra = ["--alpha", "5", "--cg-steps", "2", "--lambda", "0.01"] if model == "ials" else []
        rc = main(_args_model(ratings_file, model, "--threshold", "3", "--output", str(out), "--save", str(saved),
                              "--plots", str(tmp_path / model), *extra))
        assert rc == 0
        text = capsys.readouterr().out
        assert label in text and "AUC" in text and "nan" not in text.lower() and "compilation" in text
        res = json.loads(out.read_text())
        assert res["model"] == label and res["model_kind"] == model and res["compile_seconds"] >= 0
        assert 0 <= res["test"]["auc"] <= 1 and res["test"]["n_users"] > 100
        back = lfopt.load(saved)
        assert type(back) is cls
        if model == "ials":
            assert back.alpha == 5 and back.cg_steps == 2 and back.lam == 0.01 and len(res["history"]) == 3
            assert res["seconds_per_epoch"] > 0 and (tmp_path / model / "rank_validation.png").exists()
        else:
            assert res["history"] == [] and res["seconds_per_epoch"] is None
    # the Cholesky solver through the CLI
    assert main(_args_model(ratings_file, "ials", "--solver", "cholesky")) == 0
    assert "iALS-cholesky" in capsys.readouterr().out


@pytest.mark.parametrize("model, extra, message", [
    ("ials", ["--optimizer", "sgd"], "--optimizer applies to --model bpr only, not to --model ials"),
    ("ials", ["--regularizer", "fixed"], "--regularizer applies to --model bpr only"),
    ("ials", ["--grid", "0.1,0.2"], "--grid applies to --model bpr only"),
    ("ials", ["--item-bias"], "--item-bias applies to --model bpr only"),
    ("ials", ["--backend", "torch"], "--backend torch applies to --model bpr only"),
    ("pop", ["--rank", "8"], "--rank applies to --model bpr and --model ials only, not to --model pop"),
    ("pop", ["--lambda", "0.1"], "--lambda applies to --model bpr and --model ials only"),
    ("bpr", ["--alpha", "3"], "--alpha applies to --model ials only, not to --model bpr"),
    ("bpr", ["--solver", "cg"], "--solver applies to --model ials only"),
    ("ials", ["--alpha", "-1"], "--alpha must be"),
    ("ials", ["--cg-steps", "0"], "--cg-steps must be"),
    ("ials", ["--lambda", "-2"], "--lambda must be"),
])
def test_rank_options_of_another_model_are_refused(ratings_file, model, extra, message, capsys):
    assert main(_args_model(ratings_file, model, *extra)) == 1
    err = capsys.readouterr().err
    assert "lfopt rank: error" in err and message in err


def _write(path, pairs):
    path.write_text("".join(f"{u}\t{i}\t1\n" for u, i in pairs))
    return path


def test_rank_user_owning_every_item_gets_a_clear_message(tmp_path, capsys):
    # user 0 has every one of the 12 items; the others have 6 each
    pairs = [(0, i) for i in range(12)] + [(u, (u + k) % 12) for u in range(1, 30) for k in range(6)]
    path = _write(tmp_path / "own.tsv", pairs)
    assert main(["rank", "--data", str(path), "--model", "pop", "--k-core", "3", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "1 test user(s) interacted with every item" in out and "nan" not in out.lower()
    # every user owns every item: nothing to rank, a clear error instead of AUC nan
    path = _write(tmp_path / "all.tsv", [(u, i) for u in range(6) for i in range(5)])
    assert main(["rank", "--data", str(path), "--model", "ials", "--k-core", "3", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "interacted with every one of the 5 items" in err


def test_rank_ials_keep_values_and_log_transform(ratings_file, tmp_path, capsys):
    """--keep-values passes the values to ials (the saved model's confidences follow them), and
    --value-transform log is stored with the model; both are refused where they mean nothing."""
    import lfopt

    saved = tmp_path / "m.npz"
    assert main(_args_model(ratings_file, "ials", "--threshold", "3", "--keep-values", "--value-transform", "log",
                            "--save", str(saved))) == 0
    capsys.readouterr()
    back = lfopt.load(saved)
    assert back.value_transform == "log" and back.value_scale_ != 1.0  # mean of log(1 + r) over ratings >= 3
    assert main(_args_model(ratings_file, "bpr", "--value-transform", "log")) == 1
    assert "--value-transform applies to --model ials only" in capsys.readouterr().err
