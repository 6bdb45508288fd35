"""Optuna both ways, end to end on a real SQLite storage: TPE and hypergrad trials side by side in one study."""

from __future__ import annotations

import json
import math

import optuna
import pytest

from hypergrad import TuneConfig
from hypergrad.baselines import (
    OptunaObjective,
    SearchSpace,
    create_or_load_study,
    make_sampler,
    make_storage,
    run_study,
    worker_sampler_seed,
)
from hypergrad.cli import main
from hypergrad.objective import MetaObjective
from hypergrad.studies import StudyRecorder, refine_study
from hypergrad.tuner import Tuner
from tests.test_baselines import tiny_problem

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = [pytest.mark.timeout(300), pytest.mark.filterwarnings("ignore::DeprecationWarning",
                                                                    "ignore::UserWarning")]

PROBLEM = ["--inner-steps", "10", "--truncate", "4", "--batch-size", "50", "--hidden", "8"]
CFG = TuneConfig(inner_steps=6, truncate=3, hyper_batches=2, batch_size=16, meta_steps=3)


def _storage(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'not' / 'yet' / 'studies.db'}"  # a folder that does not exist yet


def test_tune_from_study_refines_tpes_best_and_writes_back(tmp_path, capsys):
    url = _storage(tmp_path)
    assert main(["compare", *PROBLEM, "--methods", "tpe", "--budget", "4", "--seeds", "1", "--storage", url,
                 "--study-name", "digits", "--out", str(tmp_path / "c.json"), "--no-progress"]) == 0
    assert (tmp_path / "not" / "yet" / "studies.db").is_file()
    study = optuna.load_study(study_name="digits.tpe.seed0", storage=url)
    tpe_best = min((t for t in study.trials), key=lambda t: t.value)

    out = tmp_path / "r.json"
    assert main(["tune", *PROBLEM, "--meta-steps", "3", "--from-study", url, "--study-name", "digits.tpe.seed0",
                 "--out", str(out), "--no-progress"]) == 0
    assert f"starting from trial {tpe_best.number}" in capsys.readouterr().err
    study = optuna.load_study(study_name="digits.tpe.seed0", storage=url)
    trials = study.trials
    assert [t.user_attrs["method"] for t in trials] == ["tpe"] * 4 + ["neumann"] * 3
    assert all(t.user_attrs["cost"] == 1.0 and t.user_attrs["seconds"] > 0 for t in trials)
    names = {f"{p}:{t}" for p in ("alpha", "momentum") for t in ("0.weight", "0.bias", "2.weight", "2.bias")}
    assert all(set(t.params) == names for t in trials)  # one search space for both kinds of trial
    try:
        import pandas  # noqa: F401  (optuna's trials_dataframe needs it)
    except ImportError:
        pass
    else:
        df = study.trials_dataframe()
        assert list(df["user_attrs_method"]) == ["tpe"] * 4 + ["neumann"] * 3
    res = json.loads(out.read_text())
    gradient = [t for t in study.trials if t.user_attrs["kind"] == "gradient"]
    # the written-back trials are the meta steps the tuner recorded: values, steps (no batch salt reused)
    assert [t.value for t in gradient] == pytest.approx(res["meta_loss"], rel=1e-6)
    assert [t.user_attrs["step"] for t in gradient] == [r["step"] for r in res["history"]] == [4, 5, 6]
    # the refinement started at TPE's best trial
    first = gradient[0].user_attrs["exact_params"]
    assert first == pytest.approx(tpe_best.params, rel=1e-5)
    # a TPE run on the same study sees the gradient trials but does not charge them to its budget
    assert main(["compare", *PROBLEM, "--methods", "tpe", "--budget", "5", "--seeds", "1", "--storage", url,
                 "--study-name", "digits", "--out", str(tmp_path / "c2.json"), "--no-progress"]) == 0
    study = optuna.load_study(study_name="digits.tpe.seed0", storage=url)
    assert sum(t.user_attrs["kind"] == "sampler" for t in study.trials) == 5


def test_from_study_refuses_another_problem_and_a_missing_study(tmp_path, capsys):
    url = _storage(tmp_path)
    assert main(["compare", *PROBLEM, "--methods", "tpe", "--budget", "2", "--seeds", "1", "--storage", url,
                 "--study-name", "d", "--out", str(tmp_path / "c.json"), "--no-progress"]) == 0
    flags = ["--meta-steps", "1", "--from-study", url, "--no-progress", "--out", str(tmp_path / "r.json")]
    other = ["--inner-steps", "12", "--truncate", "4", "--batch-size", "50", "--hidden", "8"]
    assert main(["tune", *other, *flags, "--study-name", "d.tpe.seed0"]) == 2
    assert "inner_steps: study 10 vs run 12" in capsys.readouterr().err
    assert main(["tune", *PROBLEM, *flags, "--study-name", "nope"]) == 2
    assert "no study 'nope'" in capsys.readouterr().err
    assert main(["tune", *PROBLEM, *flags]) == 2
    assert "--study-name" in capsys.readouterr().err


def test_compare_stores_every_gradient_evaluation_as_a_trial(tmp_path):
    url = _storage(tmp_path)
    argv = ["compare", *PROBLEM, "--methods", "neumann,tpe+neumann", "--budget", "4", "--seeds", "1",
            "--storage", url, "--study-name", "cmp", "--out", str(tmp_path / "c.json"), "--no-progress"]
    assert main(argv) == 0
    doc = json.loads((tmp_path / "c.json").read_text())
    runs = {r["method"]: r for r in doc["runs"]}
    study = optuna.load_study(study_name="cmp.neumann.seed0", storage=url)
    assert [t.value for t in study.trials] == pytest.approx(runs["neumann"]["meta_loss"], rel=1e-6)
    assert {t.user_attrs["method"] for t in study.trials} == {"neumann"}
    hybrid = optuna.load_study(study_name="cmp.tpe+neumann.seed0", storage=url)
    assert [t.user_attrs["method"] for t in hybrid.trials] == ["tpe"] * 1 + ["neumann"] * 3
    assert [t.value for t in hybrid.trials] == pytest.approx(runs["tpe+neumann"]["meta_loss"], rel=1e-6)
    # a rerun resumes: no meta step is recorded twice
    assert main(argv) == 0
    assert len(optuna.load_study(study_name="cmp.neumann.seed0", storage=url).trials) == 4
    # one seed: the search's columns show no spread (the SGD retraining has 3 fresh batch orders: it has one)
    table = (tmp_path / "c.md").read_text()
    rows = [line.split("|")[2:5] for line in table.splitlines() if line.startswith("| neumann")]
    assert rows and not any("±" in cell for cell in rows[0]) and "one seed (no spread measured)" in table


def test_stored_runs_are_reproducible_by_seed_with_a_worker_index(tmp_path):
    def params(url: str | None, worker: int | None) -> list[dict]:
        argv = ["compare", *PROBLEM, "--methods", "tpe", "--budget", "3", "--seeds", "1", "--study-name", "r",
                "--out", str(tmp_path / "c.json"), "--no-progress"]
        argv += ["--storage", url] if url else []
        argv += ["--worker", str(worker)] if worker is not None else []
        assert main(argv) == 0
        if url is None:
            return json.loads((tmp_path / "c.json").read_text())["runs"][0]["meta_loss"]
        return [t.value for t in optuna.load_study(study_name="r.tpe.seed0", storage=make_storage(url)).trials]

    in_memory = params(None, None)
    assert params(f"sqlite:///{tmp_path / 'a.db'}", 0) == in_memory
    assert params(f"journal:{tmp_path / 'b.log'}", 0) == in_memory
    assert worker_sampler_seed(3, 0) == 3 and worker_sampler_seed(3, 1) != worker_sampler_seed(3, 2)
    with pytest.raises(ValueError, match="worker"):
        worker_sampler_seed(0, -1)


def test_values_outside_the_search_space_are_clipped_and_kept_exactly():
    space = SearchSpace(lr_low=0.5, lr_high=0.6, momentum_low=0.0, momentum_high=0.2)  # the init 0.37, 0.5: outside
    study = optuna.create_study()
    Tuner(tiny_problem(), CFG, callbacks=[StudyRecorder(study, space=space)]).run()
    assert len(study.trials) == 3
    for t in study.trials:
        for name, value in t.params.items():
            dist = t.distributions[name]
            assert dist.low <= value <= dist.high
        exact = t.user_attrs["exact_params"]
        assert set(t.user_attrs["clipped"]) == {n for n in exact if exact[n] != t.params[n]}
    first = study.trials[0]
    assert first.user_attrs["exact_params"]["alpha:0.weight"] == pytest.approx(math.exp(-1), rel=1e-6)
    assert first.params["alpha:0.weight"] == 0.5 and first.params["momentum:0.weight"] == 0.2


def test_refine_study_is_the_python_form(tmp_path):
    problem = tiny_problem()
    storage = make_storage(f"sqlite:///{tmp_path / 'p.db'}")
    study = create_or_load_study(storage=storage, study_name="s", sampler=make_sampler("tpe", 0))
    run_study(study, OptunaObjective(MetaObjective(problem, CFG), method="tpe"), budget=3)
    result = refine_study(problem, CFG, study)
    trials = optuna.load_study(study_name="s", storage=storage).trials
    assert [t.user_attrs["method"] for t in trials] == ["tpe"] * 3 + ["neumann"] * 3
    assert [r.step for r in result.history] == [3, 4, 5]
    assert [t.value for t in trials[3:]] == pytest.approx([r.meta_loss for r in result.history], rel=1e-6)


def test_params_hold_alpha_and_the_lr_user_attribute_is_the_sgd_lr(tmp_path):
    study = optuna.create_study()
    result = Tuner(tiny_problem(), CFG, callbacks=[StudyRecorder(study)]).run()
    for trial, record in zip(study.trials, result.history):
        assert not any(n.startswith("lr:") for n in trial.params)  # `lr` never names alpha
        for tensor, hp in record.hyperparameters.items():  # per=tensor: the groups are the tensors
            assert trial.user_attrs[f"lr:{tensor}"] == pytest.approx(hp["lr"], rel=1e-9)  # alpha * (1 - beta)
            assert trial.user_attrs["exact_params"][f"alpha:{tensor}"] == pytest.approx(hp["alpha"], rel=1e-9)
    # sampler trials carry the same user attribute
    run_study(study, OptunaObjective(MetaObjective(tiny_problem(), CFG), method="tpe"), budget=1)
    (tpe,) = [t for t in study.trials if t.user_attrs["kind"] == "sampler"]
    assert tpe.user_attrs["lr:0.weight"] == pytest.approx(
        tpe.params["alpha:0.weight"] * (1 - tpe.params["momentum:0.weight"]), rel=1e-12)
    # a study stored before the rename (alpha under "lr:<group>") is still read as alpha
    old = {("lr:" + k[6:] if k.startswith("alpha:") else k): v for k, v in tpe.params.items()}
    from hypergrad.baselines import to_hparams

    spec = tiny_problem().spec
    assert all(torch_equal(a, b) for a, b in zip(to_hparams(spec, old), to_hparams(spec, tpe.params)))


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


def _tpe_study(tmp_path, budget: int) -> tuple[str, list]:
    url = _storage(tmp_path)
    assert main(["compare", *PROBLEM, "--methods", "tpe", "--budget", str(budget), "--seeds", "1", "--storage", url,
                 "--study-name", "digits", "--out", str(tmp_path / "c.json"), "--no-progress"]) == 0
    study = optuna.load_study(study_name="digits.tpe.seed0", storage=url)
    return url, sorted(study.trials, key=lambda t: (t.value, t.number))


def test_from_study_refines_from_the_k_best_trials(tmp_path, capsys):
    url, ranked = _tpe_study(tmp_path, 6)
    out = tmp_path / "r.json"
    assert main(["tune", *PROBLEM, "--budget", "10", "--from-study", url, "--study-name", "digits.tpe.seed0",
                 "--refine-from", "2", "--out", str(out), "--no-progress"]) == 0  # strategy auto -> refine top 2
    assert f"starting from trials {ranked[0].number}, {ranked[1].number} of study" in capsys.readouterr().err
    study = optuna.load_study(study_name="digits.tpe.seed0", storage=url)
    gradient = sorted((t for t in study.trials if t.user_attrs["kind"] == "gradient"),
                      key=lambda t: t.user_attrs["step"])
    assert len(gradient) == 10 and [t.user_attrs["step"] for t in gradient] == list(range(6, 16))
    # the first refinement step evaluates the best trial, and a later run starts at the second best
    assert gradient[0].user_attrs["exact_params"] == pytest.approx(ranked[0].params, rel=1e-6)
    assert any(t.user_attrs["exact_params"] == pytest.approx(ranked[1].params, rel=1e-6) for t in gradient[1:])
    res = json.loads(out.read_text())
    assert res["study"]["study_name"] == "digits.tpe.seed0" and res["strategy"]["strategy"] == "hybrid"
    assert [r["step"] for r in res["history"]] == list(range(16))  # the study's trials, then this run's steps


def test_a_resumed_from_study_run_keeps_writing_trials_back(tmp_path, capsys):
    url, _ = _tpe_study(tmp_path, 4)
    logdir = tmp_path / "run"
    assert main(["tune", *PROBLEM, "--meta-steps", "2", "--from-study", url, "--study-name", "digits.tpe.seed0",
                 "--logdir", str(logdir), "--no-progress"]) == 0
    assert main(["tune", "--resume", str(logdir), "--meta-steps", "4", "--no-progress"]) == 0  # 2 more steps
    study = optuna.load_study(study_name="digits.tpe.seed0", storage=url)
    steps = [t.user_attrs["step"] for t in study.trials if t.user_attrs["kind"] == "gradient"]
    assert steps == [4, 5, 6, 7]
    res = json.loads((logdir / "results.json").read_text())
    assert [r["step"] for r in res["history"]] == [4, 5, 6, 7]
    gradient = [t for t in study.trials if t.user_attrs["kind"] == "gradient"]
    assert [t.value for t in gradient] == pytest.approx([r["meta_loss"] for r in res["history"]], rel=1e-6)
    capsys.readouterr()
    assert main(["tune", "--resume", str(logdir), "--from-study", url, "--no-progress"]) == 2
    assert "--resume continues the study" in capsys.readouterr().err


HYBRID = [*PROBLEM, "--dataset", "digits", "--strategy", "hybrid", "--budget", "12", "--global-trials", "4"]


def test_a_stored_hybrid_run_is_the_in_memory_run(tmp_path, capsys):
    """One process on a storage draws what the in-memory run draws: stored runs are reproducible by seed."""
    assert main(["tune", *HYBRID, "--out", str(tmp_path / "m.json"), "--no-progress"]) == 0
    url = f"journal:{tmp_path / 'j' / 'h.log'}"
    assert main(["tune", *HYBRID, "--storage", url, "--study-name", "h", "--out", str(tmp_path / "s.json"),
                 "--no-progress"]) == 0
    mem, stored = (json.loads((tmp_path / f).read_text()) for f in ("m.json", "s.json"))
    assert [r["action"] for r in stored["history"]][:4] == ["trial"] * 4
    assert [r["meta_loss"] for r in stored["history"]] == [r["meta_loss"] for r in mem["history"]]
    assert [r["hyperparameters"] for r in stored["history"]] == [r["hyperparameters"] for r in mem["history"]]
    study = optuna.load_study(study_name="h", storage=make_storage(url))
    assert [t.user_attrs["method"] for t in study.trials][:4] == ["tpe"] * 4
    assert len(study.trials) == 12  # 4 TPE trials and the 8 steps after them, one study
    capsys.readouterr()


@pytest.mark.parametrize("argv, message", [
    (["--worker"], "--worker runs the hybrid strategy's TPE trials"),
    (["--storage", "journal:x.log", "--study-name", "s", "--strategy", "sign"], "--storage shares the global phase"),
    (["--storage", "journal:x.log", "--from-study", "journal:x.log", "--study-name", "s"], "exclude each other"),
    (["--storage", "journal:x.log"], "--storage needs --study-name"),
])
def test_study_flags_are_checked_before_work(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["tune", *PROBLEM, "--budget", "12", *argv, "--no-progress"]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.log").exists()


# ---------------------------------------------------------------------- the hybrid's global phase on workers
# One process of `python -m hypergrad tune ...` with run_global_phase wrapped to wait until every process has
# opened the study, so the workers and the main really run trials side by side.
SYNCED = """
import os, pathlib, sys, time
import hypergrad.studies as studies
from hypergrad.cli import main

sync, n, argv = pathlib.Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
real = studies.run_global_phase

def run_global_phase(*a, **kw):
    (sync / f"ready-{os.getpid()}").touch()
    deadline = time.monotonic() + 60
    while len(list(sync.glob("ready-*"))) < n and time.monotonic() < deadline:
        time.sleep(0.02)
    return real(*a, **kw)

studies.run_global_phase = run_global_phase
sys.exit(main(argv))
"""
N_GLOBAL = 6
SHARED = [*PROBLEM, "--dataset", "digits", "--strategy", "hybrid", "--budget", "14", "--global-trials",
          str(N_GLOBAL), "--study-name", "shared", "--no-progress"]


@pytest.fixture(params=["journal", "postgresql"])
def shared_storage(request, tmp_path):
    if request.param == "journal":
        yield f"journal:{tmp_path / 'shared.log'}"
        return
    from tests._postgres import PostgresUnavailable, start_server

    try:
        server = start_server(timeout=60)
    except PostgresUnavailable as exc:
        pytest.skip(f"PostgreSQL server cannot be started here: {exc}")
    try:
        optuna.storages.RDBStorage(server.url).engine.dispose()  # create the tables before the workers race
        yield server.url
    finally:
        server.stop(timeout=30)


@pytest.mark.timeout(300)
def test_two_workers_and_a_main_share_the_global_phase_and_the_refinement_starts_at_its_best(
        shared_storage, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    script, sync = tmp_path / "synced.py", tmp_path / "sync"
    script.write_text(SYNCED)
    sync.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    roles = {"w0": ["--worker"], "w1": ["--worker"], "main": []}
    procs = {r: subprocess.Popen([sys.executable, str(script), str(sync), str(len(roles)), "--threads", "1", "tune",
                                  *SHARED, "--storage", shared_storage, "--out", str(tmp_path / f"{r}.json"), *extra],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
             for r, extra in roles.items()}
    results = {}
    try:
        for r, p in procs.items():
            results[r] = (*p.communicate(timeout=240), p.returncode)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.communicate()
    for r, (_, err, code) in results.items():
        assert code == 0, f"{r} failed with exit code {code}:\n{err[-3000:]}"
    study = optuna.load_study(study_name="shared", storage=make_storage(shared_storage))
    trials = study.trials
    tpe = [t for t in trials if t.user_attrs["kind"] == "sampler"]
    gradient = [t for t in trials if t.user_attrs["kind"] == "gradient"]
    # the global phase: N_GLOBAL trials (a process with one in flight when the others stopped finishes it)
    assert N_GLOBAL <= len(tpe) <= N_GLOBAL + 2
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    ran = {r: json.loads((tmp_path / f"{r}.json").read_text())["trials"] for r in ("w0", "w1")}
    assert ran["w0"] and ran["w1"] and not set(ran["w0"]) & set(ran["w1"])  # both workers ran trials, none twice
    main_doc = json.loads((tmp_path / "main.json").read_text())
    history = main_doc["history"]
    assert [r["step"] for r in history if r["action"] == "trial"] == sorted(t.number for t in tpe)
    assert len({tuple(sorted(t.params.items())) for t in tpe}) == len(tpe)  # no point drawn twice
    # the refinement (every step of the main after the trials) is in the same study, and starts at its best trial
    own = [r for r in history if r["action"] != "trial"]
    assert [t.user_attrs["step"] for t in gradient] == [r["step"] for r in own]
    assert [t.value for t in gradient] == pytest.approx([r["meta_loss"] for r in own], rel=1e-6)
    best = min(tpe, key=lambda t: (t.value, t.number))
    assert gradient[0].user_attrs["exact_params"] == pytest.approx(best.params, rel=1e-6)
    assert f"starting from trials {best.number}," in results["main"][1]
    try:
        df = study.trials_dataframe()
    except ImportError:  # optuna's trials_dataframe needs pandas
        return
    assert sorted(df["user_attrs_kind"].unique()) == ["gradient", "sampler"] and len(df) == len(trials)
