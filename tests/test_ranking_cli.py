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
    (["--lambda", "-1"], "lam must be"),
])
def test_rank_errors(ratings_file, extra, message, capsys):
    assert main(_args(ratings_file, *extra)) == 1
    err = capsys.readouterr().err
    assert "lfopt rank: error" in err and message in err
