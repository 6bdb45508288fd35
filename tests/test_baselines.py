"""Optuna baselines: the shared objective, the search space mapping, budgets, pruning and storages."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import optuna
import pytest
import torch
import torch.nn.functional as F

from hypergrad import InnerProblem, TuneConfig, Tuner
from hypergrad.baselines import (
    OptunaObjective,
    SearchSpace,
    create_or_load_study,
    from_hparams,
    make_pruner,
    make_sampler,
    make_storage,
    run_study,
    to_hparams,
    trial_cost,
)
from hypergrad.objective import MetaObjective

optuna.logging.set_verbosity(optuna.logging.WARNING)


def tiny_problem(seed: int = 0, per: str = "tensor") -> InnerProblem:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(96, 5, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    return InnerProblem(model, F.cross_entropy, x[:64], y[:64], x[64:], y[64:], batch_size=16, per=per)


def tiny_config(method: str = "neumann", inner_steps: int = 6, **kw) -> TuneConfig:
    return TuneConfig(method=method, inner_steps=inner_steps, truncate=3, hyper_batches=2, batch_size=16, **kw)


def tiny_tuner(method: str = "neumann", inner_steps: int = 6, **kw) -> Tuner:
    cfg = tiny_config(method, inner_steps, **kw)
    return Tuner(tiny_problem(per=cfg.per), cfg)


def tiny_objective(method: str = "neumann", inner_steps: int = 6, **kw) -> MetaObjective:
    cfg = tiny_config(method, inner_steps, **kw)
    return MetaObjective(tiny_problem(per=cfg.per), cfg)


PARAMS = {
    "alpha:0.weight": 0.3, "alpha:0.bias": 0.05, "alpha:2.weight": 1.2, "alpha:2.bias": 0.01,
    "momentum:0.weight": 0.9, "momentum:0.bias": 0.0, "momentum:2.weight": 0.5, "momentum:2.bias": 0.25,
}


# ---------------------------------------------------------------------- the search space
def test_to_hparams_maps_onto_the_tuners_unconstrained_layout():
    tuner = tiny_tuner()
    hp = to_hparams(tuner.spec, PARAMS)
    assert len(hp) == len(tuner.hparams) == 2 * tuner.spec.num_groups
    lrs, moms = tuner.spec.per_tensor(hp)
    for name, a, b in zip(tuner.spec.param_names, lrs, moms):
        assert float(a) == pytest.approx(PARAMS[f"alpha:{name}"], rel=1e-6)
        assert float(b) == pytest.approx(PARAMS[f"momentum:{name}"], abs=2e-6)  # 0 -> 1e-6
    back = from_hparams(tuner.spec, hp)
    assert back.keys() == PARAMS.keys()
    for k, v in PARAMS.items():
        assert back[k] == pytest.approx(v, rel=1e-5, abs=2e-6)


def test_to_hparams_rejects_missing_and_invalid_values():
    spec = tiny_tuner().spec
    with pytest.raises(ValueError, match="missing"):
        to_hparams(spec, {"alpha:0.weight": 0.1})
    with pytest.raises(ValueError, match=r"momentum:0\.bias"):
        to_hparams(spec, {**PARAMS, "momentum:0.bias": 1.0})
    with pytest.raises(ValueError, match=r"alpha:0\.weight"):
        to_hparams(spec, {**PARAMS, "alpha:0.weight": -1.0})


def test_search_space_contains_the_tuners_initialisation_and_validates():
    tuner = tiny_tuner()
    space = SearchSpace()
    assert space.contains(tuner.spec, tuner.hparams)
    assert not SearchSpace(lr_low=0.5, lr_high=2.0).contains(tuner.spec, tuner.hparams)  # init lr = e^-1
    for bad in ({"lr_low": 0.0}, {"lr_low": 2.0, "lr_high": 1.0}, {"momentum_high": 1.0},
                {"momentum_low": -0.1}, {"lr_high": math.inf}):
        with pytest.raises(ValueError):
            SearchSpace(**bad)


def test_suggestions_cover_every_group_with_log_uniform_lr():
    tuner = tiny_tuner(per="layer")
    spec = tuner.spec
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    params = SearchSpace().suggest(trial, spec)
    assert sorted(params) == sorted([f"alpha:{g}" for g in spec.groups] + [f"momentum:{g}" for g in spec.groups])
    dist = trial.distributions
    assert dist["alpha:0"].log and dist["alpha:0"].low == 1e-3 and dist["alpha:0"].high == 10.0
    assert not dist["momentum:0"].log and dist["momentum:0"].low == 0.0 and dist["momentum:0"].high == 0.99


def test_element_granularity_is_refused():
    with pytest.raises(ValueError, match="element"):
        OptunaObjective(tiny_objective(per="element"))


def test_the_objective_is_a_meta_objective_not_a_tuner():
    with pytest.raises(TypeError, match="objective must be a MetaObjective, got Tuner"):
        OptunaObjective(tiny_tuner())


# ---------------------------------------------------------------------- one objective
@pytest.mark.parametrize("number", [0, 3])
def test_objective_value_is_the_tuners_meta_loss_for_the_same_hparams(number):
    meta = tiny_objective()
    objective = OptunaObjective(meta)
    hp = to_hparams(meta.spec, PARAMS)
    value = objective(optuna.trial.FixedTrial(PARAMS, number=number))
    # MetaObjective.evaluate: one inner training on the batches of salt `number`, validation loss of w_T.
    assert value == pytest.approx(meta.evaluate(hp, salt=number)["val_loss"], rel=1e-6)
    # MetaObjective.hypergradient: the same inner training inside the meta step -> the same meta loss.
    meta_loss = meta.hypergradient(hp, number, method="neumann").meta_loss
    assert value == pytest.approx(float(meta_loss), rel=1e-6)
    # Another trial number trains on other batches (the tuner's seed policy).
    other = objective(optuna.trial.FixedTrial(PARAMS, number=number + 1))
    assert other != value


def test_objective_matches_the_meta_loss_a_meta_step_records():
    tuner = tiny_tuner(method="bptt")
    start = tuple(h.detach().clone() for h in tuner.hparams)
    expected = tuner.objective.value(start, 0)
    record = tuner.meta_step()  # step 0 evaluates `start` on the batches of salt 0
    assert record.val_loss == pytest.approx(expected, rel=1e-6)
    value = OptunaObjective(tuner.objective)(optuna.trial.FixedTrial(from_hparams(tuner.spec, start), number=0))
    assert value == pytest.approx(expected, rel=1e-5)


def test_train_meta_loss_follows_the_tuners_setting():
    meta = tiny_objective(meta_loss="train")
    hp = to_hparams(meta.spec, PARAMS)
    value = OptunaObjective(meta)(optuna.trial.FixedTrial(PARAMS, number=1))
    assert value == pytest.approx(meta.evaluate(hp, salt=1)["train_loss"], rel=1e-6)


def test_diverging_hparams_report_the_finite_fail_value():
    meta = tiny_objective(inner_steps=30)
    objective = OptunaObjective(meta, SearchSpace(lr_high=1e7))
    with torch.no_grad():
        w0_loss = float(meta.meta_loss(meta.problem.w0))
    assert objective.fail_value == pytest.approx(2 * w0_loss)
    huge = {k: (1e6 if k.startswith("alpha") else 0.0) for k in PARAMS}
    trial = optuna.trial.FixedTrial(huge, number=0)
    assert objective(trial) == objective.fail_value
    raw = trial.user_attrs["meta_loss"]
    assert raw is None or raw > objective.fail_value


# ---------------------------------------------------------------------- budgets and pruning
def test_run_study_spends_exactly_the_budget_and_resumes_without_extra_trials():
    meta = tiny_objective()
    study = create_or_load_study(storage=None, study_name=None, sampler=make_sampler("random", 0))
    mine = run_study(study, OptunaObjective(meta), budget=5)
    assert len(mine) == 5 and len(study.trials) == 5
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert run_study(study, OptunaObjective(meta), budget=5) == []
    assert len(run_study(study, OptunaObjective(meta), budget=7)) == 2
    assert [t.number for t in study.trials] == list(range(7))


def test_median_pruner_charges_partial_inner_trainings():
    objective = OptunaObjective(tiny_objective(inner_steps=20), SearchSpace(lr_low=1e-4, lr_high=3.0), report_every=4)
    study = create_or_load_study(
        storage=None, study_name=None, sampler=make_sampler("random", 1),
        pruner=make_pruner("median", n_startup_trials=2),
    )
    run_study(study, objective, budget=8)
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert pruned, "random learning rates over four decades should get some trials pruned"
    for t in pruned:
        assert trial_cost(t) < 1.0 and trial_cost(t) * 20 % 4 == 0
        assert t.intermediate_values  # the reported validation losses
    costs = [trial_cost(t) for t in study.trials]
    assert 8 <= sum(costs) < 9  # stops as soon as the budget is spent
    assert len(study.trials) > 8  # pruning bought extra trials


def test_default_pruner_is_off_and_samplers_are_known():
    assert isinstance(make_pruner("none"), optuna.pruners.NopPruner)
    assert isinstance(make_sampler("tpe", 0), optuna.samplers.TPESampler)
    assert isinstance(make_sampler("cmaes", 0), optuna.samplers.CmaEsSampler)
    with pytest.raises(ValueError, match="sampler"):
        make_sampler("grid", 0)
    with pytest.raises(ValueError, match="pruner"):
        make_pruner("hyperband")


def test_cmaes_runs_on_the_objective():
    meta = tiny_objective()
    study = create_or_load_study(storage=None, study_name=None, sampler=make_sampler("cmaes", 0))
    run_study(study, OptunaObjective(meta), budget=6)
    assert len(study.trials) == 6 and math.isfinite(study.best_value)


# ---------------------------------------------------------------------- storages
def test_make_storage_parses_journal_sqlite_and_rejects_garbage(tmp_path):
    assert make_storage(None) is None
    for url in (f"journal:{tmp_path / 'a.txt'}", str(tmp_path / "b.log"), str(tmp_path / "c.journal")):
        assert isinstance(make_storage(url), optuna.storages.JournalStorage)
    assert make_storage(f"sqlite:///{tmp_path / 'd.db'}") == f"sqlite:///{tmp_path / 'd.db'}"
    with pytest.raises(ValueError, match="cannot read storage"):
        make_storage("study.db")
    # a storage in a missing folder: the folder is created (journal file and SQLite database)
    journal = make_storage(str(tmp_path / "missing" / "x.log"))
    assert (tmp_path / "missing").is_dir()
    optuna.create_study(storage=journal, study_name="j")
    url = make_storage(f"sqlite:///{tmp_path / 'new' / 'deeper' / 'e.db'}")
    optuna.create_study(storage=url, study_name="s")
    assert (tmp_path / "new" / "deeper" / "e.db").is_file()
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="cannot create the folder"):
        make_storage(str(tmp_path / "file" / "x.log"))


def test_sqlite_study_resumes_and_refuses_another_problem(tmp_path):
    url = make_storage(f"sqlite:///{tmp_path / 's.db'}")
    meta = tiny_objective()
    key = {"inner_steps": 6, "seed": 0}
    study = create_or_load_study(storage=url, study_name="s", sampler=make_sampler("tpe", 0), problem_key=key)
    run_study(study, OptunaObjective(meta), budget=3)
    again = create_or_load_study(storage=url, study_name="s", sampler=make_sampler("tpe", 0), problem_key=key)
    assert len(again.trials) == 3
    with pytest.raises(ValueError, match="another problem"):
        create_or_load_study(storage=url, study_name="s", sampler=make_sampler("tpe", 0),
                             problem_key={**key, "inner_steps": 7})


WORKER = textwrap.dedent(
    """
    import json, os, pathlib, sys, time
    import optuna, torch
    torch.set_num_threads(1)
    sys.path.insert(0, sys.argv[3])
    from tests.test_baselines import tiny_objective
    from hypergrad.baselines import OptunaObjective, create_or_load_study, make_sampler, make_storage, run_study
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = make_storage(sys.argv[1])
    study = create_or_load_study(storage=storage, study_name="shared", sampler=make_sampler("random", None))
    objective = OptunaObjective(tiny_objective(inner_steps=20))
    # Start together: announce readiness and wait for the other worker (bounded).
    ready = pathlib.Path(sys.argv[4])
    (ready / f"ready-{os.getpid()}").touch()
    deadline = time.time() + 60
    while len(list(ready.glob("ready-*"))) < 2 and time.time() < deadline:
        time.sleep(0.02)
    done = run_study(study, objective, budget=int(sys.argv[2]))
    print(json.dumps([t.number for t in done]))
    """
)


@pytest.mark.timeout(180)
def test_two_worker_processes_on_one_journal_file_lose_no_trial(tmp_path, repo_root):
    journal = tmp_path / "study.log"
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    budget = 12
    procs = [
        subprocess.Popen([sys.executable, str(script), f"journal:{journal}", str(budget), str(repo_root),
                          str(tmp_path)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=repo_root)
        for _ in range(2)
    ]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=150)
        assert p.returncode == 0, err[-2000:]
        outs.append(json.loads(out.strip().splitlines()[-1]))
    study = optuna.load_study(study_name="shared", storage=make_storage(f"journal:{journal}"))
    numbers = sorted(t.number for t in study.trials)
    mine = sorted(outs[0] + outs[1])
    assert numbers == mine == list(range(len(numbers)))  # every trial is in the file, none twice
    assert not set(outs[0]) & set(outs[1])
    assert outs[0] and outs[1], "both workers should have run trials"
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    # The budget is shared: a worker stops once the study has spent it (at most one trial over per worker).
    assert budget <= len(numbers) <= budget + 1


def test_parallel_threads_share_the_budget():
    meta = tiny_objective()
    study = create_or_load_study(storage=None, study_name=None, sampler=make_sampler("tpe", 0))
    mine = run_study(study, OptunaObjective(meta), budget=6, n_jobs=2)
    assert len(mine) == len(study.trials) == 6
    assert sorted(t.number for t in study.trials) == list(range(6))
    with pytest.raises(ValueError, match="n_jobs"):
        run_study(study, OptunaObjective(meta), budget=7, n_jobs=0)
