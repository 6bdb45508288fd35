"""benchmarks.strategies: every kind of method runs, is retrained on fresh orders, and tables, plots and merges."""

from __future__ import annotations

import json

import pytest

from benchmarks import strategies


def test_every_method_kind_runs_on_a_zoo_model_and_is_tabled(tmp_path, capsys) -> None:
    out = tmp_path / "anytime_zoo_mlp.json"
    methods = "initial,online-5,auto,tpe,auto-forward,auto-schedule3"
    assert strategies.main(["--dataset", "zoo:mlp", "--methods", methods, "--budgets", "6", "--seeds", "0",
                            "--inner-steps", "10", "--orders", "2", "--out", str(out)]) == 0
    cells = json.loads(out.read_text())["cells"]
    assert {c["method"] for c in cells} == set(methods.split(","))
    budgets = {c["method"]: c["budget"] for c in cells}
    assert budgets["initial"] == 0 and budgets["online-5"] == 1 and budgets["auto"] == 6
    for c in cells:
        assert len(c["retrained"]) == 2 and c["score"] == pytest.approx(sum(c["retrained"]) / 2)
    by = {c["method"]: c for c in cells}
    assert by["auto"]["inner_trainings"] == 6
    # the schedule variant exports 3 values per hyperparameter; forward mode is the estimator asked for
    assert all(len(v["lr"]) == 3 for v in by["auto-schedule3"]["best_hyperparameters"].values())
    assert by["auto-forward"]["info"]["auto"]["estimator"]["method"] == "forward"
    capsys.readouterr()
    # a second call keeps the cells it has (nothing rerun) and prints the table, one seed without a spread
    assert strategies.main(["--out", str(out), "--table", "--plot", str(tmp_path / "a.png")]) == 0
    text = capsys.readouterr().out
    assert "| auto |" in text and "±" not in text
    assert (tmp_path / "a.png").stat().st_size > 1000
    merged = tmp_path / "zoo.json"
    assert strategies.main(["--merge", str(out), "--out", str(merged)]) == 0
    assert list(json.loads(merged.read_text())["models"]) == ["mlp"]
    assert strategies.main(["--out", str(merged), "--table"]) == 0
    assert "**mlp**" in capsys.readouterr().out


def test_an_unknown_dataset_is_a_usage_error(tmp_path) -> None:
    with pytest.raises(SystemExit) as exc:
        strategies.main(["--dataset", "cifar", "--out", str(tmp_path / "x.json")])
    assert exc.value.code == 2
