"""``hypergrad compare``: budget accounting, the hybrid, the SGD export, outputs and the CLI functions."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math

import optuna
import pytest
import torch

from hypergrad import TuneConfig, Tuner
from hypergrad.baselines import to_hparams
from hypergrad.cli import add_compare_arguments, cmd_compare
from hypergrad.compare import (
    OptunaSettings,
    Trace,
    best_at,
    best_at_seconds,
    compare,
    markdown_table,
    parse_methods,
    run_gradient,
    run_hybrid,
    run_optuna,
    sgd_evaluate,
)
from hypergrad.data import Split
from hypergrad.objective import MetaObjective
from tests.test_baselines import tiny_problem

optuna.logging.set_verbosity(optuna.logging.WARNING)

CFG = TuneConfig(inner_steps=6, truncate=3, hyper_batches=2, batch_size=16)


def tiny_split(problem) -> Split:
    return Split(problem.x_train, problem.y_train, problem.x_val, problem.y_val, problem.x_val, problem.y_val)


def problems(seed: int):
    p = tiny_problem(seed)
    return p, tiny_split(p)


# ---------------------------------------------------------------------- methods and traces
def test_parse_methods():
    assert parse_methods("neumann, tpe,random,cmaes,tpe+bptt") == ["neumann", "tpe", "random", "cmaes", "tpe+bptt"]
    for bad, msg in (("adam", "unknown method"), ("tpe+random", "unknown method"), ("", "empty"),
                     ("tpe,tpe", "twice")):
        with pytest.raises(ValueError, match=msg):
            parse_methods(bad)


def test_best_at_counts_cost_and_seconds():
    t = Trace("x", 0)
    for cost, sec, loss in ((1, 0.5, 0.9), (0.25, 0.6, None), (1, 1.0, 0.4), (1, 2.0, 0.7)):
        t.add(cost, sec, loss, "x")
    assert t.cost == [1, 1.25, 2.25, 3.25]
    assert t.best_so_far == [0.9, 0.9, 0.4, 0.4]
    assert best_at(t, 0.5) is None
    assert best_at(t, 2.0) == 0.9  # the third point ends at 2.25 inner trainings
    assert best_at(t, 2.25) == 0.4
    assert best_at_seconds(t, 0.99) == 0.9 and best_at_seconds(t, 1.0) == 0.4
    t.add(1, 3.0, math.nan, "x")
    assert t.meta_loss[-1] is None and t.best_so_far[-1] == 0.4


# ---------------------------------------------------------------------- budget accounting
def test_gradient_method_spends_one_inner_training_per_meta_step():
    problem = tiny_problem()
    trace = run_gradient(problem, CFG, "neumann", 5)
    assert trace.cost == [1, 2, 3, 4, 5]
    # The same meta steps, run directly: the trace is the tuner's recorded validation losses.
    tuner = Tuner(problem, dataclasses.replace(CFG, meta_steps=5))
    losses = [tuner.meta_step().val_loss for _ in range(5)]
    assert trace.meta_loss == pytest.approx(losses, rel=1e-6)
    assert trace.best_so_far[-1] == pytest.approx(min(losses))
    assert all(b >= a for a, b in zip(trace.seconds, trace.seconds[1:]))
    best = trace.best
    assert tuner.objective.value(best, losses.index(min(losses))) == pytest.approx(min(losses), rel=1e-6)


def test_optuna_method_spends_one_inner_training_per_trial():
    problem = tiny_problem()
    trace = run_optuna(problem, CFG, "random", 4, OptunaSettings())
    assert trace.cost == [1, 2, 3, 4] and trace.phase == ["random"] * 4
    info = trace.info["random"]
    assert info["trials"] == 4 and info["trials_in_study"] == 4
    best_value = min(v for v in trace.meta_loss if v is not None)
    assert MetaObjective(problem, CFG).value(trace.best, info["best_trial"]) == pytest.approx(best_value, rel=1e-5)


def test_hybrid_refines_tpes_best_for_the_rest_of_the_budget():
    problem = tiny_problem()
    trace = run_hybrid(problem, CFG, "tpe+bptt", 10, OptunaSettings(), split=0.3)
    assert trace.cost == list(range(1, 11))
    assert trace.phase == ["tpe"] * 3 + ["bptt"] * 7
    tpe_best = to_hparams(problem.spec, trace.info["tpe"]["best_params"])
    # The first refinement step evaluates TPE's best on the next batches (salt 3, none reused).
    assert trace.meta_loss[3] == pytest.approx(MetaObjective(problem, CFG).value(tpe_best, 3), rel=1e-5)
    assert trace.info["bptt"]["first_step"] == 3 and trace.info["bptt"]["meta_steps"] == 7
    # Best so far never worse than TPE's part, and seconds keep growing across the phases.
    assert trace.best_so_far[-1] <= min(v for v in trace.meta_loss[:3] if v is not None)
    assert trace.seconds[3] >= trace.seconds[2]


def test_sgd_export_retrains_to_the_tuners_own_result():
    problem = tiny_problem()
    objective = MetaObjective(problem, CFG)
    hp = tuple(h.detach() for h in objective.spec.init(0.2, 0.7))
    sgd = sgd_evaluate(problem, problem.spec, hp, objective.batches(-1), test_data=(problem.x_val, problem.y_val))
    ev = objective.evaluate(hp, salt=-1)
    assert sgd["val_loss"] == pytest.approx(ev["val_loss"], rel=1e-4)
    assert sgd["val_accuracy"] == pytest.approx(ev["val_accuracy"])
    assert sgd["test_loss"] == pytest.approx(sgd["val_loss"]) and sgd["test_accuracy"] == sgd["val_accuracy"]
    assert all(torch.equal(a, b) for a, b in zip(problem.w0, [p.detach() for p in problem.model.parameters()]))


# ---------------------------------------------------------------------- the document
def test_compare_document_schema():
    methods = ["neumann", "tpe", "tpe+tbptt"]
    doc = compare(problems, CFG, methods, 8, [0, 1], progress=False)
    text = json.dumps(doc, allow_nan=False)  # strict JSON
    doc = json.loads(text)
    assert doc["budget"] == 8 and doc["seeds"] == [0, 1] and doc["methods"] == methods
    assert "inner training" in doc["budget_accounting"]
    assert len(doc["runs"]) == 6
    for r in doc["runs"]:
        assert r["inner_trainings"] == list(range(1, 9))
        assert len(r["seconds"]) == len(r["meta_loss"]) == len(r["best_meta_loss"]) == 8
        running = math.inf
        for v, b in zip(r["meta_loss"], r["best_meta_loss"]):
            running = min(running, v) if v is not None else running
            assert b == pytest.approx(running)
        assert set(r["best_hyperparameters"]) == set(problems(0)[0].spec.param_names)
        assert {"lr", "momentum", "name"} <= set(r["param_groups"][0])
        sgd = r["sgd_eval"]
        assert sgd["orders"] == 3 and len(sgd["runs"]) == len(sgd["seeds"]) == 3
        assert 0.0 <= sgd["test_accuracy"]["mean"] <= 1.0 and sgd["test_accuracy"]["n"] == 3
        assert sgd["val_loss"]["values"] == [run["val_loss"] for run in sgd["runs"]]
    s = doc["summary"]
    assert list(s) == methods
    for m in methods:
        assert set(s[m]["best_at"]) == {"25%", "50%", "100%"}
        assert s[m]["best_at"]["100%"]["n"] == 2
        finals = [r["best_meta_loss"][-1] for r in doc["runs"] if r["method"] == m]
        assert s[m]["best_at"]["100%"]["mean"] == pytest.approx(sum(finals) / 2)
        assert s[m]["best_at"]["25%"]["mean"] >= s[m]["best_at"]["100%"]["mean"]
        retrained = [v for r in doc["runs"] if r["method"] == m for v in r["sgd_eval"]["test_loss"]["values"]]
        assert s[m]["sgd"]["test_loss"]["n"] == 6 and s[m]["sgd_orders"] == 6
        assert s[m]["sgd"]["test_loss"]["mean"] == pytest.approx(sum(retrained) / 6)
    table = markdown_table(s, 8)
    assert table.count("\n| ") == len(methods) and "± " in table
    assert "test loss (SGD)" in table and "test accuracy (SGD)" in table


# ---------------------------------------------------------------------- the CLI functions
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_compare_arguments(p)
    return p


def test_cmd_compare_writes_json_table_plot_and_tensorboard(tmp_path, capsys):
    out = tmp_path / "c.json"
    args = parser().parse_args([
        "--dataset", "digits", "--hidden", "8", "--inner-steps", "4", "--batch-size", "32", "--budget", "3",
        "--seeds", "1", "--methods", "neumann,random", "--out", str(out), "--logdir", str(tmp_path / "tb"),
        "--on-divergence", "skip", "--meta-lr", "0.2", "--no-progress",
    ])
    assert cmd_compare(args) == 0
    doc = json.loads(out.read_text())
    assert [r["method"] for r in doc["runs"]] == ["neumann", "random"]
    assert doc["run"]["dataset"] == "digits" and doc["config"]["inner_steps"] == 4
    assert doc["config"]["on_divergence"] == "skip" and doc["config"]["meta_lr"] == 0.2
    assert out.with_suffix(".md").read_text().startswith("| method |")
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for m in ("neumann", "random"):
        assert list((tmp_path / "tb" / m / "seed0").glob("events.out.tfevents.*"))
    assert "| neumann |" in capsys.readouterr().out


def test_cmd_compare_resumes_a_journal_study(tmp_path):
    journal = tmp_path / "s.log"
    argv = ["--dataset", "digits", "--hidden", "8", "--inner-steps", "4", "--budget", "3", "--seeds", "1",
            "--methods", "tpe", "--storage", str(journal), "--no-progress"]
    assert cmd_compare(parser().parse_args([*argv, "--out", str(tmp_path / "a.json")])) == 0
    assert cmd_compare(parser().parse_args([*argv, "--out", str(tmp_path / "b.json")])) == 0
    a, b = (json.loads((tmp_path / f"{n}.json").read_text())["runs"][0] for n in "ab")
    assert a["meta_loss"] == b["meta_loss"]  # the second run found the budget spent and reused the trials
    assert b["info"]["tpe"]["trials_in_study"] == 3
    study = optuna.load_study(study_name="hypergrad-compare.tpe.seed0",
                              storage=optuna.storages.JournalStorage(
                                  optuna.storages.journal.JournalFileBackend(str(journal))))
    assert len(study.trials) == 3
    with pytest.raises(ValueError, match="another problem"):
        cmd_compare(parser().parse_args([*argv, "--inner-steps", "5", "--out", str(tmp_path / "c.json")]))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--methods", "neumann,sgd"], "unknown method"),
        (["--storage", "nowhere"], "cannot read storage"),
        (["--per", "element", "--methods", "tpe"], "element"),
        (["--hybrid-split", "1.5"], "hybrid-split"),
        (["--lr-range", "1,0.1"], "lr_low"),
        (["--inner-steps", "3", "--truncate", "5", "--methods", "tbptt"], "truncate"),
    ],
)
def test_cmd_compare_user_errors_raise_value_error(tmp_path, extra, message):
    args = parser().parse_args(["--dataset", "digits", "--inner-steps", "4", "--truncate", "2", "--budget", "2",
                                "--seeds", "1", "--out", str(tmp_path / "x.json"), "--no-progress", *extra])
    with pytest.raises(ValueError, match=message):
        cmd_compare(args)
    assert not (tmp_path / "x.json").exists()


def test_registered_cli_reports_user_errors_with_exit_code_2(capsys):
    from hypergrad.cli import main

    assert main(["compare", "--methods", "neumann,grid", "--budget", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["hypergrad: error: unknown method 'grid' in --methods; expected gradient methods "
                   "(bptt, tbptt, rbp, cg, neumann, gmres, forward), samplers (tpe, random, cmaes), a hybrid "
                   "tpe+<gradient method> or strategies (auto, sign, hybrid)"]
