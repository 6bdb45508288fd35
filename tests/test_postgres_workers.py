"""Optuna workers of ``hypergrad compare`` on one shared PostgreSQL study (issue #8 §3).

A session fixture starts a real, private PostgreSQL server on 127.0.0.1 (see ``tests/_postgres.py``).
Two ``hypergrad compare --storage postgresql+psycopg2://...`` processes with the same
``--study-name`` then run at the same time. ``compare`` shares ONE study per (method, seed)
between them (``<name>.tpe.seed0``) and ONE budget: :func:`hypergrad.baselines.run_study`
counts the finished trials of every worker, so together they run ``--budget`` trials (at most
one more per extra worker), not ``--budget`` each.

The test is skipped when no server can be started here (no binaries, no psycopg2); with
``HYPERGRAD_REQUIRE_POSTGRES=1`` (CI, after ``.ci/postgres.sh``) it fails instead.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest

from tests._postgres import PostgresUnavailable, start_server

pytestmark = pytest.mark.slow  # two CLI processes plus one in-process compare run

ROOT = Path(__file__).resolve().parents[1]
BUDGET = 16
STUDY = "pgworkers"
N_WORKERS = 2

# One compare worker: the real CLI (`python -m hypergrad --threads 1 compare ...`), with
# run_study wrapped to (1) wait until every worker has opened the study, so they really run
# side by side, and (2) write down the numbers of the trials this process finished.
WORKER = textwrap.dedent(
    """
    import json, os, pathlib, sys, time
    sys.path.insert(0, sys.argv[1])
    import hypergrad.compare.runners as runners
    from hypergrad.cli import main

    sync, record, n_workers, argv = pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3]), int(sys.argv[4]), sys.argv[5:]
    real_run_study = runners.run_study

    def run_study(study, objective, **kw):
        (sync / f"ready-{os.getpid()}").touch()
        deadline = time.monotonic() + 60
        while len(list(sync.glob("ready-*"))) < n_workers and time.monotonic() < deadline:
            time.sleep(0.02)
        mine = real_run_study(study, objective, **kw)
        record.write_text(json.dumps([t.number for t in mine]))
        return mine

    runners.run_study = run_study
    sys.exit(main(argv))
    """
)


def compare_argv(url: str, out: Path, *, budget: int = BUDGET) -> list[str]:
    return ["compare", "--dataset", "digits", "--methods", "tpe", "--budget", str(budget), "--seeds", "1",
            "--storage", url, "--study-name", STUDY, "--inner-steps", "10", "--hidden", "8", "--out", str(out),
            "--no-progress"]


@pytest.fixture(scope="session")
def postgres_url():
    """A private PostgreSQL server on a free loopback port; yields its SQLAlchemy URL."""
    try:
        server = start_server(timeout=60)
    except PostgresUnavailable as exc:
        if os.environ.get("HYPERGRAD_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"HYPERGRAD_REQUIRE_POSTGRES=1 but the PostgreSQL server cannot be started: {exc}")
        pytest.skip(f"PostgreSQL server cannot be started here: {exc}")
    try:
        yield server.url
    finally:
        server.stop(timeout=30)


@pytest.fixture(scope="module")
def two_workers(postgres_url, tmp_path_factory):
    """Run two compare workers concurrently on one study; return what each saw and wrote."""
    tmp = tmp_path_factory.mktemp("pgworkers")
    script = tmp / "worker.py"
    script.write_text(WORKER)
    sync = tmp / "sync"
    sync.mkdir()
    # Create Optuna's tables once before the workers start (docs/distributed.md): on a fresh
    # database, concurrent workers race on CREATE TYPE/TABLE and one of them dies with a
    # UniqueViolation. Opening the same study concurrently afterwards is safe (load_if_exists).
    optuna.storages.RDBStorage(postgres_url).engine.dispose()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = []
    for i in range(N_WORKERS):
        argv = ["--threads", "1", *compare_argv(postgres_url, tmp / f"worker{i}.json")]
        procs.append(subprocess.Popen(
            [sys.executable, str(script), str(ROOT), str(sync), str(tmp / f"trials{i}.json"), str(N_WORKERS), *argv],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp,
        ))
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=240)
            results.append((p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    for code, _, err in results:
        if code != 0:
            pytest.fail(f"a worker failed with exit code {code}:\n{err[-3000:]}")
    return {
        "trials": [json.loads((tmp / f"trials{i}.json").read_text()) for i in range(N_WORKERS)],
        "docs": [json.loads((tmp / f"worker{i}.json").read_text()) for i in range(N_WORKERS)],
        "tmp": tmp,
    }


def _db_trials(url: str, study_name: str) -> list[tuple[int, str, float | None]]:
    """(number, state, value) of every trial of ``study_name``, read with plain SQL (no Optuna cache)."""
    import psycopg2
    from sqlalchemy.engine import make_url

    u = make_url(url)
    conn = psycopg2.connect(host=u.host, port=u.port, user=u.username, dbname=u.database, connect_timeout=10)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT t.number, t.state::text, v.value FROM trials t JOIN studies s ON s.study_id = t.study_id "
                "LEFT JOIN trial_values v ON v.trial_id = t.trial_id AND v.objective = 0 "
                "WHERE s.study_name = %s ORDER BY t.number",
                (study_name,),
            )
            return list(cur.fetchall())
    finally:
        conn.close()


@pytest.mark.timeout(420)
def test_two_compare_workers_share_one_postgres_study_and_lose_no_trial(two_workers, postgres_url):
    rows = _db_trials(postgres_url, f"{STUDY}.tpe.seed0")
    numbers = [r[0] for r in rows]
    # Every trial is finished and stored once; numbers are 0..n-1 with no gap or repeat.
    assert numbers == list(range(len(rows)))
    assert [r[1] for r in rows] == ["COMPLETE"] * len(rows), rows
    assert all(r[2] is not None for r in rows)
    # One shared budget: the workers stop once the study holds BUDGET finished trials; a worker
    # that had a trial in flight at that moment finishes it (at most N_WORKERS - 1 extra).
    assert BUDGET <= len(rows) <= BUDGET + N_WORKERS - 1
    # Each trial was run by exactly one worker, and both workers ran some.
    mine = two_workers["trials"]
    assert all(mine), f"both workers should have run trials, got {mine}"
    assert not set(mine[0]) & set(mine[1])
    assert sorted(mine[0] + mine[1]) == numbers
    # Optuna reads back the same study.
    study = optuna.load_study(study_name=f"{STUDY}.tpe.seed0", storage=postgres_url)
    assert sorted(t.number for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == numbers
    # Each worker's report traces exactly BUDGET trials of the shared study (the first by number
    # that had finished when it stopped) and names the storage without secrets.
    for doc in two_workers["docs"]:
        (run,) = doc["runs"]
        assert run["inner_trainings"] == list(range(1, BUDGET + 1))
        assert run["info"]["tpe"]["study_name"] == f"{STUDY}.tpe.seed0"
        assert BUDGET <= run["info"]["tpe"]["trials_in_study"] <= len(rows)
        assert doc["optuna"]["storage"] == postgres_url


@pytest.mark.timeout(420)
def test_a_later_run_resumes_the_finished_study_without_new_trials(two_workers, postgres_url, capsys):
    from hypergrad.cli import add_compare_arguments, cmd_compare

    before = _db_trials(postgres_url, f"{STUDY}.tpe.seed0")
    parser = argparse.ArgumentParser()
    add_compare_arguments(parser)
    out = two_workers["tmp"] / "final.json"
    assert cmd_compare(parser.parse_args(compare_argv(postgres_url, out)[1:])) == 0
    capsys.readouterr()
    assert _db_trials(postgres_url, f"{STUDY}.tpe.seed0") == before  # the budget was spent: nothing added
    (run,) = json.loads(out.read_text())["runs"]
    first = [value for _, _, value in before[:BUDGET]]
    assert run["meta_loss"] == pytest.approx(first, rel=1e-12)  # the report covers trials 0..BUDGET-1


def test_workers_do_not_repeat_each_others_hyperparameters(two_workers, postgres_url):
    study = optuna.load_study(study_name=f"{STUDY}.tpe.seed0", storage=postgres_url)
    points = [tuple(sorted(t.params.items())) for t in study.trials]
    assert len(set(points)) == len(points)
