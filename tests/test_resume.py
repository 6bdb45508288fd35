"""Checkpoint and resume (reliability issue #9, section 1).

The main test runs the ``hypergrad tune`` CLI on digits (T=30, N=8 meta steps)
in child processes and interrupts it four times at different places, resuming
with ``--resume DIR`` after each interruption:

1. SIGKILL in the middle of meta step 1 (in the hypergradient solve, after
   the inner training);
2. SIGKILL in the middle of writing the checkpoint of meta step 2 (half of the
   temporary file written and fsynced, not yet renamed);
3. Ctrl-C (KeyboardInterrupt) in the middle of meta step 3 -> exit code 130;
4. SIGKILL without any instrumentation, at whatever point the run has reached
   once it has written the checkpoint of meta step 3;

then a last resume runs to the end. Its results must equal those of one
uninterrupted run with the same seed **bitwise**: every meta step restarts from
the same ``w_0`` with minibatches drawn from a generator seeded by
``(seed, meta step)``, and the checkpoint holds the hyperparameters, Adam's
state, the torch RNG state, the best-so-far bookkeeping and the history, so a
resumed step recomputes exactly the same floating-point operations on one
thread. Only the wall-clock ``seconds`` differ.

For stages 1 and 2 a small harness pauses the child at the chosen point (it
patches the child's own functions, then calls ``hypergrad.cli.main`` with the
CLI's arguments) so that the kill lands there deterministically. The children
import torch while the reference run computes, then wait for a go file.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hypergrad.checkpoint import CHECKPOINT_NAME, CheckpointError, load_checkpoint, save_checkpoint
from hypergrad.cli import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, main

ROOT = Path(__file__).resolve().parents[1]
RUN_ARGS = ["--dataset", "digits", "--inner-steps", "30", "--meta-steps", "8", "--seed", "3", "--no-progress"]
META_STEPS = 8
_CHILDREN: list[subprocess.Popen] = []
WAIT_S = 90.0  # upper bound on any wait for a child (a loaded machine); normally a few seconds

HARNESS = r'''
"""Run the hypergrad CLI, pausing at one chosen point so that the parent can kill it there."""
import io, os, sys, time
from pathlib import Path

marker = Path(os.environ["HG_MARKER"])
where = os.environ["HG_PAUSE_WHERE"]  # "solver", "write" or "none"
at = int(os.environ["HG_PAUSE_STEP"])


def pause():
    marker.write_text(where)
    time.sleep(600)  # the parent kills us here


import torch  # noqa: E402

import hypergrad.objective as O  # noqa: E402
import hypergrad.strategies as S  # noqa: E402

progress = {"salt": None, "solves": 0, "completed": None}
real_hypergradient, real_solve, real_step = O.MetaObjective.hypergradient, O.implicit_gradient, S.GradientStrategy.step


def hypergradient(self, hparams, salt, **kwargs):
    progress["salt"], progress["solves"] = salt, 0
    return real_hypergradient(self, hparams, salt, **kwargs)


def implicit_gradient(*args, **kwargs):
    progress["solves"] += 1
    if where == "solver" and progress["salt"] == at and progress["solves"] == 1:
        pause()
    return real_solve(*args, **kwargs)


def step(self, objective, config, state):
    record = real_step(self, objective, config, state)
    progress["completed"] = record.step
    return record


real_save = torch.save


def save(obj, f, *args, **kwargs):
    if where == "write" and isinstance(obj, dict) and "format_version" in obj and progress["completed"] == at:
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        os.fsync(f.fileno())
        pause()
    return real_save(obj, f, *args, **kwargs)


O.MetaObjective.hypergradient, O.implicit_gradient, S.GradientStrategy.step = hypergradient, implicit_gradient, step
torch.save = save

from hypergrad.cli import main  # noqa: E402

# Import what a run imports lazily (torch.func pulls in torch._dynamo: seconds), then wait for the
# parent's go, so that the children boot in parallel with the reference run.
import sklearn.datasets  # noqa: E402, F401
import torch._dynamo  # noqa: E402, F401
import torch.func  # noqa: E402, F401
import torch.utils.tensorboard  # noqa: E402, F401
import tqdm.auto  # noqa: E402, F401

import hypergrad.workloads  # noqa: E402, F401

go = Path(os.environ["HG_GO"])
deadline = time.monotonic() + 600
while not go.exists() and time.monotonic() < deadline:
    time.sleep(0.005)
sys.exit(main(sys.argv[1:]))
'''


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _start(argv: list[str], tmp: Path, name: str, pause: tuple[str, int] | None = None) -> subprocess.Popen:
    env = _env()
    if pause is None:
        cmd = [sys.executable, "-m", "hypergrad", *argv]
    else:
        harness = tmp / "harness.py"
        harness.write_text(HARNESS)
        env.update(
            HG_MARKER=str(tmp / f"{name}.paused"), HG_GO=str(tmp / f"{name}.go"),
            HG_PAUSE_WHERE=pause[0], HG_PAUSE_STEP=str(pause[1]),
        )
        cmd = [sys.executable, str(harness), *argv]
    with open(tmp / f"{name}.out", "w") as out, open(tmp / f"{name}.err", "w") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=err)
    _CHILDREN.append(proc)
    return proc


@pytest.fixture(autouse=True)
def _no_stray_children():
    """A failed assertion must not leave a paused child behind."""
    yield
    while _CHILDREN:
        proc = _CHILDREN.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _finish(proc: subprocess.Popen, tmp: Path, name: str) -> tuple[int, str]:
    try:
        code = proc.wait(timeout=WAIT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"{name}: the child did not finish within {WAIT_S} s")
    return code, (tmp / f"{name}.err").read_text()


def _wait_for(predicate, proc: subprocess.Popen, what: str, tmp: Path, name: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        if proc.poll() is not None:
            err = (tmp / f"{name}.err").read_text()
            pytest.fail(f"{name}: the child exited ({proc.returncode}) before {what}:\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            pytest.fail(f"{name}: timed out waiting for {what}")
        time.sleep(0.005)


def _step_count(logdir: Path) -> int:
    return int(load_checkpoint(logdir)["tuner"]["step_count"])


def _kill_when_paused(proc: subprocess.Popen, tmp: Path, name: str, sig: int) -> tuple[int, str]:
    (tmp / f"{name}.go").touch()
    _wait_for((tmp / f"{name}.paused").exists, proc, "the pause", tmp, name)
    proc.send_signal(sig)
    return _finish(proc, tmp, name)


def _comparable(results: dict) -> dict:
    """results.json without wall-clock times."""
    out = {k: v for k, v in results.items() if k not in ("seconds", "history")}
    wall = ("seconds", "inner_seconds")  # wall-clock timings differ between any two runs
    out["history"] = [{k: v for k, v in r.items() if k not in wall} for r in results["history"]]
    return out


def _all_finite(obj) -> bool:
    if isinstance(obj, dict):
        return all(_all_finite(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return all(_all_finite(v) for v in obj)
    if isinstance(obj, float):
        return math.isfinite(obj)
    if isinstance(obj, torch.Tensor) and obj.is_floating_point():
        return bool(torch.isfinite(obj).all())
    return True


def _assert_same_tuner_state(a: dict, b: dict) -> None:
    for key in ("hparams", "best"):
        assert len(a[key]) == len(b[key])
        for x, y in zip(a[key], b[key]):
            assert torch.equal(x, y), key
    assert a["best_loss"] == b["best_loss"] and a["best_step"] == b["best_step"]
    assert a["lr_scale"] == b["lr_scale"] and a["step_count"] == b["step_count"]
    assert torch.equal(a["torch_rng"], b["torch_rng"])
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for key in sa[i]:
            assert torch.equal(torch.as_tensor(sa[i][key]), torch.as_tensor(sb[i][key])), (i, key)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """One uninterrupted run, in-process (the same code path as the CLI); its logdir."""
    ref_dir = tmp_path_factory.mktemp("reference")
    assert main(["--threads", "1", "tune", *RUN_ARGS, "--logdir", str(ref_dir)]) == EXIT_OK
    assert len(json.loads((ref_dir / "results.json").read_text())["history"]) == META_STEPS
    return ref_dir


def _assert_same_results(ref_dir: Path, logdir: Path) -> None:
    reference = json.loads((ref_dir / "results.json").read_text())
    resumed = json.loads((logdir / "results.json").read_text())
    # Bitwise: losses, hypergradient norms, solver statistics, events, hyperparameters, evaluation.
    assert [r["step"] for r in resumed["history"]] == list(range(META_STEPS))
    assert resumed["meta_loss"] == reference["meta_loss"]
    assert resumed["hyperparameters"] == reference["hyperparameters"]
    assert resumed["final_hyperparameters"] == reference["final_hyperparameters"]
    ref_cmp, res_cmp = _comparable(reference), _comparable(resumed)
    assert ref_cmp["run"].pop("logdir") != res_cmp["run"].pop("logdir")
    assert res_cmp == ref_cmp
    final_ref, final_res = load_checkpoint(ref_dir)["tuner"], load_checkpoint(logdir)["tuner"]
    _assert_same_tuner_state(final_ref, final_res)
    assert _all_finite(final_res)


def test_killed_and_resumed_run_equals_an_uninterrupted_run(tmp_path, capsys, monkeypatch, request):
    logdir = tmp_path / "run"
    fresh = ["--threads", "1", "tune", *RUN_ARGS, "--logdir", str(logdir)]
    resume = ["--threads", "1", "tune", "--resume", str(logdir), "--no-progress"]
    results = logdir / "results.json"

    # The children boot (import torch, ...) while the reference run computes; each waits for its go.
    child1 = _start(fresh, tmp_path, "kill1", pause=("solver", 1))
    child2 = _start(resume, tmp_path, "kill2", pause=("write", 2))
    child4 = _start(resume, tmp_path, "kill4", pause=("none", -1))
    ref_dir = request.getfixturevalue("reference")
    capsys.readouterr()

    # 1. SIGKILL inside meta step 1's hypergradient solve (the inner training is done).
    code, err = _kill_when_paused(child1, tmp_path, "kill1", signal.SIGKILL)
    assert code == -signal.SIGKILL, err
    assert _step_count(logdir) == 1 and not results.exists()

    # 2. --resume, then SIGKILL while the checkpoint of meta step 2 is half written.
    code, err = _kill_when_paused(child2, tmp_path, "kill2", signal.SIGKILL)
    assert code == -signal.SIGKILL, err
    leftovers = list(logdir.glob(".checkpoint-*.tmp"))
    assert len(leftovers) == 1 and leftovers[0].stat().st_size > 0  # the torn write is in the tmp file ...
    assert _step_count(logdir) == 2 and not results.exists()  # ... and checkpoint.pt is the previous one

    # 3. Ctrl-C inside meta step 3 (in-process: Python turns SIGINT into KeyboardInterrupt, raised
    #    here at the same place): exit code 130, one line, no traceback, the checkpoint kept.
    from hypergrad.objective import MetaObjective

    real_hypergradient = MetaObjective.hypergradient

    def interrupted(self, hparams, salt, **kwargs):
        if salt == 3:
            raise KeyboardInterrupt
        return real_hypergradient(self, hparams, salt, **kwargs)

    monkeypatch.setattr(MetaObjective, "hypergradient", interrupted)
    assert main(resume) == EXIT_INTERRUPTED
    err = capsys.readouterr().err
    assert "interrupted" in err and "--resume" in err and "Traceback" not in err
    assert _step_count(logdir) == 3 and not results.exists()
    assert list(logdir.glob(".checkpoint-*.tmp")) == []  # the torn file of stage 2 was cleaned up
    monkeypatch.undo()

    # 4. Unassisted: SIGKILL as soon as the checkpoint of meta step 3 exists, wherever the run is then.
    (tmp_path / "kill4.go").touch()
    seen = {"key": None, "count": 3}

    def advanced() -> bool:
        st = (logdir / CHECKPOINT_NAME).stat()
        if (st.st_ino, st.st_mtime_ns) != seen["key"]:
            seen["key"] = (st.st_ino, st.st_mtime_ns)
            seen["count"] = _step_count(logdir)
        return seen["count"] >= 4

    _wait_for(advanced, child4, "the checkpoint of meta step 3", tmp_path, "kill4")
    child4.send_signal(signal.SIGKILL)
    code, err = _finish(child4, tmp_path, "kill4")
    assert code == -signal.SIGKILL, f"the run finished before it could be killed:\n{err}"
    assert 4 <= _step_count(logdir) < META_STEPS and not results.exists()

    # 5. Resume to the end.
    assert main(resume) == EXIT_OK
    err = capsys.readouterr().err
    assert "Traceback" not in err
    _assert_same_results(ref_dir, logdir)


def test_tensorboard_curve_of_a_resumed_run_continues_at_the_checkpointed_step(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logdir = tmp_path / "run"
    args = ["tune", "--inner-steps", "20", "--hidden", "16", "--no-progress"]
    # A run stopped after 2 meta steps, then resumed and extended to 4: one continuous curve.
    assert main([*args, "--meta-steps", "2", "--logdir", str(logdir)]) == EXIT_OK
    assert _step_count(logdir) == 2
    assert main(["tune", "--resume", str(logdir), "--meta-steps", "4", "--no-progress"]) == EXIT_OK
    capsys.readouterr()
    acc = EventAccumulator(str(logdir))
    acc.Reload()
    curve = {e.step: e.value for e in acc.Scalars("meta/val_loss")}
    history = json.loads((logdir / "results.json").read_text())["val_loss"]
    assert sorted(curve) == [0, 1, 2, 3]
    assert [curve[k] for k in range(4)] == pytest.approx(history, rel=1e-6)  # float32 in the event file


SMALL_ARGS = ["tune", "--inner-steps", "20", "--meta-steps", "2", "--hidden", "8", "--no-progress"]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> Path:
    logdir = tmp_path_factory.mktemp("small") / "run"
    assert main([*SMALL_ARGS, "--logdir", str(logdir)]) == EXIT_OK
    return logdir


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("empty", "truncated or corrupt"),
        ("truncate_head", "truncated or corrupt"),
        ("truncate_half", "truncated or corrupt"),
        ("truncate_last_byte", "truncated or corrupt"),
        ("flip_payload", "sha256 does not match"),
        ("garbage", "corrupt"),  # random bytes: a broken legacy pickle, refused as unsafe or corrupt
        ("not_hypergrad", "not a hypergrad checkpoint"),
        ("missing", "no checkpoint at"),
    ],
)
def test_damaged_checkpoint_is_a_clear_error_never_a_fresh_start(tmp_path, capsys, small_run, damage, message):
    logdir = tmp_path / "run"
    shutil.copytree(small_run, logdir)
    path = logdir / CHECKPOINT_NAME
    raw = path.read_bytes()
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "truncate_head":
        path.write_bytes(raw[:100])
    elif damage == "truncate_half":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "truncate_last_byte":
        path.write_bytes(raw[:-1])
    elif damage == "flip_payload":
        # Flip one byte in the middle of the stored state (the payload tensor's bytes, stored verbatim).
        inner = torch.load(path, weights_only=True)["payload"].numpy().tobytes()
        middle = len(inner) // 2
        # the first 64-byte window at or after the middle that occurs exactly once in the file
        for start in range(middle, len(inner) - 64):
            window = inner[start : start + 64]
            position = raw.find(window)
            if position > 0 and raw.find(window, position + 1) == -1:
                break
        else:
            pytest.fail("no unique window in the stored state to flip")
        corrupted = bytearray(raw)
        corrupted[position] ^= 0x01
        path.write_bytes(bytes(corrupted))
    elif damage == "garbage":
        path.write_bytes(os.urandom(len(raw)))
    elif damage == "not_hypergrad":
        torch.save({"weights": torch.zeros(3)}, path)
    elif damage == "missing":
        path.unlink()
    before = path.read_bytes() if path.exists() else None

    code = main(["tune", "--resume", str(logdir), "--no-progress"])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE
    assert message in err and str(path) in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    # Nothing was restarted or overwritten: the damaged file is untouched and no new results appeared.
    assert (path.read_bytes() if path.exists() else None) == before
    # Starting afresh in the same folder without --overwrite is refused as well.
    if path.exists():
        assert main([*SMALL_ARGS, "--logdir", str(logdir)]) == EXIT_USAGE
        assert "already holds a checkpoint" in capsys.readouterr().err


def test_every_single_byte_corruption_is_refused_or_harmless(tmp_path):
    """Flip each byte of a checkpoint: every flip in the stored state is refused (sha256); a flip
    elsewhere (zip bookkeeping the reader ignores) either is refused or loads the identical state."""
    state = {"run": {"dataset": "digits"}, "tuner": {"hparams": [torch.linspace(-1, 1, 64)], "step_count": 3}}
    path = save_checkpoint(tmp_path, state)
    raw = path.read_bytes()
    inner = torch.load(path, weights_only=True)["payload"].numpy().tobytes()
    begin = raw.find(inner)
    assert begin > 0
    refused_in_state = 0
    for pos in range(0, len(raw), 13):
        damaged = bytearray(raw)
        damaged[pos] ^= 0x5A
        path.write_bytes(bytes(damaged))
        try:
            loaded = load_checkpoint(path)
        except CheckpointError as exc:
            assert str(path) in str(exc)
            refused_in_state += begin <= pos < begin + len(inner)
            continue
        assert not begin <= pos < begin + len(inner), f"a flip at byte {pos} of the state loaded silently"
        assert loaded["run"] == state["run"] and loaded["tuner"]["step_count"] == 3
        assert torch.equal(loaded["tuner"]["hparams"][0], state["tuner"]["hparams"][0])
    assert refused_in_state == len(range(begin + (-begin) % 13, begin + len(inner), 13))


def test_checkpoint_write_is_atomic_and_leaves_no_tmp_file(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path, {"tuner": {"step_count": 1}})
    assert load_checkpoint(tmp_path)["tuner"]["step_count"] == 1

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("hypergrad.checkpoint.os.replace", fail)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path, {"tuner": {"step_count": 2}})
    monkeypatch.undo()
    assert load_checkpoint(path)["tuner"]["step_count"] == 1  # the previous checkpoint is intact
    assert list(tmp_path.glob(".checkpoint-*")) == []
