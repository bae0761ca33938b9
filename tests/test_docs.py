"""The documented examples run: module docstrings (doctest) and the README's Python block."""

import doctest
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
MODULES = ["lfopt.data.interactions", "lfopt.data.synthetic", "lfopt.data.split", "lfopt.data.io",
           "lfopt.estimators.lf",
           "lfopt.estimators.base", "lfopt.estimators.bpr", "lfopt.models.base", "lfopt.regularizers.lambda_opt"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0


def test_readme_quick_start_runs(tmp_path, monkeypatch):
    if not (DATA / "ml-1m" / "ratings.dat").exists():
        pytest.skip("ML-1M not available")
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    block = block.replace('"ml-1m/ratings.dat"', repr(str(DATA / "ml-1m" / "ratings.dat")))
    block = block.replace("rank=100", "rank=8").replace("epochs=40", "epochs=2")  # keep the test fast
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["model"].n_users_ == 6040
    assert (tmp_path / "ml1m.npz").exists()


def test_readme_command_lines_parse():
    """Every ``lfopt`` line of the README's command-line section names a command and flags that exist."""
    import shlex

    from lfopt.cli import build_parser

    text = (ROOT / "README.md").read_text()
    section = text.split("## Command line", 1)[1].split("\n## ", 1)[0]
    block = re.sub(r"\\\n\s*", " ", section)  # join continued lines
    commands = []
    for line in block.splitlines():
        words = shlex.split(line.split("  #")[0], comments=False) if line.startswith("    ") else []
        if "lfopt" in words and words[0] in ("lfopt", "torchrun"):
            commands.append(words[words.index("lfopt") + 1:])
    assert len(commands) >= 15 and {c[0] for c in commands if c} >= {"train", "evaluate", "predict", "recommend",
                                                                      "info", "compare", "rank", "experiment"}
    parser = build_parser()
    for argv in commands:
        if argv == ["--help"]:
            continue
        parser.parse_args(argv)  # argparse exits (SystemExit 2) on an unknown command or flag
