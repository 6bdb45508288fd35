"""The digits recipes: the stability grid and tune-your-model, each by its --quick run."""

from __future__ import annotations

import json
import math

import pytest

from recipes.digits import stability, tune_your_model

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:matplotlib")


def test_stability_quick_runs_every_method_and_replots(tmp_path, capsys):
    out = tmp_path / "stability.json"
    assert stability.main(["--quick", "--out", str(out), "--no-progress"]) == 0
    data = json.loads(out.read_text())
    assert [r["method"] for r in data["rows"]] == ["bptt", "tbptt", "rbp", "cg", "neumann"]
    assert {r["seed"] for r in data["rows"]} == {0}
    assert data["args"]["meta_steps"] == 2 and data["args"]["inner_steps"] == 20
    for r in data["rows"]:
        assert math.isfinite(r["initial_val"]) and r["best_val"] <= r["initial_val"]
    table = out.with_suffix(".md").read_text()
    assert table.count("\n") == 2 + 5 and "| neumann | 1 |" in table
    capsys.readouterr()
    assert stability.main(["--plot-only", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == table.strip()


def test_stability_flags(tmp_path, capsys):
    with pytest.raises(SystemExit):
        stability.main(["--quick"])  # no --out
    with pytest.raises(SystemExit):
        stability.main(["--methods", "cg_rbp", "--out", str(tmp_path / "x.json")])
    assert "choose from bptt, tbptt, rbp, cg, neumann, gmres" in capsys.readouterr().err


def test_tune_your_model_quick_two_methods(tmp_path, capsys):
    fig = tmp_path / "traj.png"
    assert tune_your_model.main(["--quick", "--methods", "neumann,tbptt", "--out", str(fig), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "Neumann-RBP: validation loss" in out and "TBPTT: test accuracy" in out
    assert fig.stat().st_size > 0
