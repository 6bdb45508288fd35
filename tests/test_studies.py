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
    names = {f"{p}:{t}" for p in ("lr", "momentum") for t in ("0.weight", "0.bias", "2.weight", "2.bias")}
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
    assert first.user_attrs["exact_params"]["lr:0.weight"] == pytest.approx(math.exp(-1), rel=1e-6)
    assert first.params["lr:0.weight"] == 0.5 and first.params["momentum:0.weight"] == 0.2


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
