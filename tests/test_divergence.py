"""Divergence: detection, the ``on_divergence`` policies, and no NaN/Inf anywhere (issue #9, section 2).

Three ways a meta step goes wrong, each provoked on digits with the paper's
64-50-50-50-10 tanh MLP and T=20 inner steps:

* ``nonfinite_loss``: ``init_lr=1e36`` -- the inner weights stay finite but the
  validation loss overflows float32;
* ``exploding_hypergrad``: ``explode_threshold=1e-6`` -- every hypergradient
  (norm about 0.03) counts as exploding;
* ``solver_diverged``: ``method="rbp"`` with ``truncate=50`` -- the fixed-point
  iteration of Alg. 1 grows (spectral radius estimate 1.11 at meta step 0) and
  :class:`hypergrad.SolveInfo` reports ``diverged``.

For each of them and each policy (``backoff`` (default), ``skip``, ``clip``,
``fallback``, ``stop``) the test checks the event in ``record.events`` at
its meta step, the warning of the ``hypergrad`` logger, the action taken, and
that the hyperparameters, the history and the tuner state stay finite.
"""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch

from hypergrad.callbacks import LoggingCallback
from hypergrad.cli import EXIT_DIVERGED, EXIT_OK, main
from hypergrad.config import RunConfig
from hypergrad.divergence import ACTIONS as ALL_ACTIONS
from hypergrad.divergence import Decision, decide, detect, fallback_method, fallback_sound
from hypergrad.tuner import DIVERGENCE_POLICIES, DivergenceError, TuneConfig, Tuner
from hypergrad.workloads import build_problem
from tests._problems import tiny_tuner

CASES = {
    "nonfinite_loss": {"init_lr": 1e36},
    "exploding_hypergrad": {"explode_threshold": 1e-6},
    "solver_diverged": {"method": "rbp", "truncate": 50, "hyper_batches": 2},
}
# The action each policy takes on each case ("stop" raises DivergenceError).
ACTIONS = {
    "nonfinite_loss": {"backoff": "backoff", "skip": "skipped", "clip": "skipped", "fallback": "skipped"},
    "exploding_hypergrad": {"backoff": "backoff", "skip": "skipped", "clip": "clipped", "fallback": "skipped"},
    "solver_diverged": {"backoff": "backoff", "skip": "skipped", "clip": "skipped", "fallback": "fallback"},
}
META_STEPS = {"nonfinite_loss": 2, "exploding_hypergrad": 2, "solver_diverged": 2}


# ---------------------------------------------------------------------- the pure functions
FINITE = {"meta_loss": 0.5, "val_loss": 0.5, "train_loss": 0.4, "hypergrad_norm": 0.03, "solver_diverged": False,
          "first_val_loss": 0.6, "blowup_ratio": 2.0, "explode_threshold": 1e6}
NAN, INF = math.nan, math.inf
DETECT_CASES = [  # (changes to FINITE, expected events)
    ({}, []),
    ({"val_loss": NAN}, ["nonfinite_loss"]),
    ({"train_loss": INF}, ["nonfinite_loss"]),
    ({"meta_loss": -INF}, ["nonfinite_loss"]),
    ({"val_loss": 1.3}, ["loss_blowup"]),  # > 2 x 0.6
    ({"val_loss": 1.2}, []),  # = 2 x 0.6 is not above it
    ({"val_loss": 1.3, "blowup_ratio": None}, []),
    ({"val_loss": 1.3, "first_val_loss": None}, []),  # the first meta step has nothing to compare with
    ({"hypergrad_norm": NAN}, ["nonfinite_hypergrad"]),
    ({"hypergrad_norm": INF}, ["nonfinite_hypergrad"]),
    ({"hypergrad_norm": 2e6}, ["exploding_hypergrad"]),
    ({"hypergrad_norm": 1e6}, []),
    ({"solver_diverged": True}, ["solver_diverged"]),
    # the loss, blow-up and hypergradient checks exclude each other (the first one found counts) ...
    ({"val_loss": NAN, "hypergrad_norm": NAN}, ["nonfinite_loss"]),
    ({"val_loss": 1.3, "hypergrad_norm": 2e6}, ["loss_blowup"]),
    # ... the solver's is independent of them
    ({"val_loss": NAN, "solver_diverged": True}, ["nonfinite_loss", "solver_diverged"]),
    ({"hypergrad_norm": 2e6, "solver_diverged": True}, ["exploding_hypergrad", "solver_diverged"]),
]


@pytest.mark.parametrize(("changes", "events"), DETECT_CASES)
def test_detect(changes, events):
    assert detect(**{**FINITE, **changes}) == events


@pytest.mark.parametrize(
    ("events", "policy", "method", "loss_ok", "expected"),
    [
        (["solver_diverged"], "fallback", "rbp", True, "neumann"),
        (["exploding_hypergrad"], "fallback", "rbp", True, "neumann"),
        ([], "fallback", "rbp", True, None),  # nothing to fall back from
        (["solver_diverged"], "fallback", "rbp", False, None),  # the inner run itself blew up
        (["solver_diverged"], "fallback", "neumann", True, None),  # only rbp has a fallback
        (["solver_diverged"], "fallback", "cg", True, None),
        (["solver_diverged"], "skip", "rbp", True, None),  # only the fallback policy falls back
        (["solver_diverged"], "backoff", "rbp", True, None),
    ],
)
def test_fallback_method(events, policy, method, loss_ok, expected):
    assert fallback_method(events, policy, method, loss_ok=loss_ok) == expected


def test_fallback_sound():
    assert fallback_sound(1.0, diverged=False, explode_threshold=10.0)
    assert not fallback_sound(11.0, diverged=False, explode_threshold=10.0)
    assert not fallback_sound(NAN, diverged=False, explode_threshold=10.0)
    assert not fallback_sound(1.0, diverged=True, explode_threshold=10.0)


UPDATE = Decision("update", apply=True)
FALLBACK = Decision("fallback", apply=True)


def clipped(scale: float, *events: str) -> Decision:
    return Decision("clipped", apply=True, scale=scale, unhandled=events)


def backoff(*events: str) -> Decision:
    return Decision("backoff", apply=False, restore_best=True, lr_factor=0.5, unhandled=events)


def skipped(*events: str) -> Decision:
    return Decision("skipped", apply=False, unhandled=events)


def stop(*events: str) -> Decision:
    return Decision("stop", apply=False, unhandled=events)


FB = ["solver_diverged", "fallback_neumann"]
# (events, policy, keyword arguments of decide, expected decision)
DECIDE_CASES = [
    # no event: an update, for every policy; `clip` rescales a norm above it (and only then)
    *[([], policy, {}, UPDATE) for policy in DIVERGENCE_POLICIES],
    ([], "backoff", {"clip": 1.0, "hypergrad_norm": 4.0}, clipped(0.25)),
    ([], "skip", {"clip": 1.0, "hypergrad_norm": 0.5}, UPDATE),
    ([], "skip", {"clip": 1.0, "hypergrad_norm": 1.0}, UPDATE),
    # a non-finite loss: the policies of the table in hypergrad.divergence (clip and fallback skip it)
    (["nonfinite_loss"], "backoff", {}, backoff("nonfinite_loss")),
    (["nonfinite_loss"], "skip", {}, skipped("nonfinite_loss")),
    (["nonfinite_loss"], "clip", {}, skipped("nonfinite_loss")),
    (["nonfinite_loss"], "fallback", {}, skipped("nonfinite_loss")),
    (["nonfinite_loss"], "stop", {}, stop("nonfinite_loss")),
    (["loss_blowup"], "backoff", {}, backoff("loss_blowup")),
    (["loss_blowup"], "clip", {}, skipped("loss_blowup")),
    # an exploding hypergradient: clipped to `clip`, or to explode_threshold without one ...
    (["exploding_hypergrad"], "clip", {"hypergrad_norm": 4.0, "explode_threshold": 2.0},
     clipped(0.5, "exploding_hypergrad")),
    (["exploding_hypergrad"], "clip", {"hypergrad_norm": 4.0, "explode_threshold": 2.0, "clip": 1.0},
     clipped(0.25, "exploding_hypergrad")),
    # ... never enlarged (a clip above the norm leaves it as it is)
    (["exploding_hypergrad"], "clip", {"hypergrad_norm": 4.0, "explode_threshold": 2.0, "clip": 8.0},
     clipped(1.0, "exploding_hypergrad")),
    (["exploding_hypergrad"], "skip", {}, skipped("exploding_hypergrad")),
    (["exploding_hypergrad"], "backoff", {}, backoff("exploding_hypergrad")),
    (["exploding_hypergrad"], "stop", {}, stop("exploding_hypergrad")),
    # clip handles a lone explosion only
    (["exploding_hypergrad", "solver_diverged"], "clip", {}, skipped("exploding_hypergrad", "solver_diverged")),
    (["nonfinite_hypergrad"], "clip", {}, skipped("nonfinite_hypergrad")),
    # a diverged solve: the fallback replaces it when the Neumann hypergradient is sound, else skips
    (["solver_diverged"], "fallback", {}, skipped("solver_diverged")),  # no fallback was computed
    (FB, "fallback", {"fallback_ok": True}, FALLBACK),
    (FB, "fallback", {"fallback_ok": True, "clip": 1e-9, "hypergrad_norm": 1.0}, FALLBACK),  # not clipped
    (FB, "fallback", {"fallback_ok": False}, skipped("solver_diverged")),
    (["exploding_hypergrad", "solver_diverged", "fallback_neumann"], "fallback", {"fallback_ok": True}, FALLBACK),
    # a fallback does not repair the inner run: a blow-up beside the diverged solve is still skipped
    (["loss_blowup", *FB], "fallback", {"fallback_ok": True}, skipped("loss_blowup")),
    (["solver_diverged"], "backoff", {}, backoff("solver_diverged")),
    (["solver_diverged"], "skip", {}, skipped("solver_diverged")),
    (["solver_diverged"], "clip", {}, skipped("solver_diverged")),
    (["solver_diverged"], "stop", {}, stop("solver_diverged")),
]


@pytest.mark.parametrize(("events", "policy", "kwargs", "expected"), DECIDE_CASES)
def test_decide(events, policy, kwargs, expected):
    kwargs = {"hypergrad_norm": 0.03, "clip": None, "explode_threshold": 1e6, **kwargs}
    decision = decide(events, policy, **kwargs)
    assert decision == expected
    assert decision.stop == (expected.action == "stop")


def test_the_decide_table_covers_every_policy_and_action():
    assert {policy for _, policy, _, _ in DECIDE_CASES} == set(DIVERGENCE_POLICIES)
    assert {d.action for *_, d in DECIDE_CASES} == set(ALL_ACTIONS)


def test_decide_refuses_an_unknown_policy():
    with pytest.raises(ValueError, match="on_divergence='pray' is not allowed"):
        decide(["nonfinite_loss"], "pray", hypergrad_norm=1.0, clip=None, explode_threshold=1e6)


# ---------------------------------------------------------------------- the policies in the meta loop
@pytest.fixture(scope="module")
def problem():
    return build_problem(RunConfig(dataset="digits"), TuneConfig())[0]


def _config(case: str, policy: str, **extra) -> TuneConfig:
    return TuneConfig(inner_steps=20, meta_steps=META_STEPS[case], on_divergence=policy, **CASES[case], **extra)


def _finite(obj) -> bool:
    if isinstance(obj, dict):
        return all(_finite(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return all(_finite(v) for v in obj)
    if isinstance(obj, float):
        return math.isfinite(obj)
    if isinstance(obj, torch.Tensor) and obj.is_floating_point():
        return bool(torch.isfinite(obj).all())
    return True


def _strict_json(text: str):
    def refuse(constant: str):
        raise AssertionError(f"{constant} in JSON")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("policy", DIVERGENCE_POLICIES)
@pytest.mark.parametrize("case", list(CASES))
def test_each_divergence_is_detected_logged_and_handled(problem, caplog, case, policy):
    cfg = _config(case, policy)
    tuner = Tuner(problem, cfg, callbacks=[LoggingCallback()])
    initial = tuple(h.detach().clone() for h in tuner.hparams)
    caplog.set_level(logging.WARNING, logger="hypergrad")

    if policy == "stop":
        with pytest.raises(DivergenceError, match=rf"meta step 0: .*{case}.*on_divergence='stop'"):
            tuner.run()
        assert [r.action for r in tuner.history] == ["stop"]
        assert case in tuner.history[0].events
        assert all(torch.equal(h, i) for h, i in zip(tuner.hparams, initial))  # no update was applied
    else:
        tuner.run()
        assert len(tuner.history) == cfg.meta_steps
        for k, record in enumerate(tuner.history):
            assert record.step == k
            expected = [case, "fallback_neumann"] if (case, policy) == ("solver_diverged", "fallback") else [case]
            assert all(e in record.events for e in expected), record.events
            assert record.action == ACTIONS[case][policy]
        # The hypergrad logger names the meta step and the event of every meta step.
        messages = [r.getMessage() for r in caplog.records if r.name == "hypergrad"]
        for k in range(cfg.meta_steps):
            assert any(m.startswith(f"meta step {k}: ") and expected[0] in m for m in messages), messages

        if policy == "backoff":  # back to the best hyperparameters so far, meta lr halved each time
            assert all(torch.equal(h, b) for h, b in zip(tuner.hparams, tuner.best))
            assert tuner.state.lr_scale == 0.5 ** cfg.meta_steps
        if ACTIONS[case][policy] == "skipped":  # nothing applied
            assert all(torch.equal(h, i) for h, i in zip(tuner.hparams, initial))
        if ACTIONS[case][policy] in ("clipped", "fallback"):  # the step was taken
            assert not all(torch.equal(h, i) for h, i in zip(tuner.hparams, initial))

    assert _finite(list(tuner.hparams)) and _finite(list(tuner.best))
    json.dumps([r.to_dict() for r in tuner.history], allow_nan=False)  # raises on NaN/Inf
    state = tuner.state_dict()
    assert _finite(state["hparams"]) and _finite(state["optimizer"]["state"])


def test_the_default_policy_is_backoff():
    assert TuneConfig().on_divergence == "backoff"


def test_no_divergence_no_event(problem):
    tuner = Tuner(problem, TuneConfig(inner_steps=20, meta_steps=2))
    tuner.run()
    assert [r.events for r in tuner.history] == [(), ()]
    assert [r.action for r in tuner.history] == ["update", "update"]


def test_nonfinite_inner_weights_are_a_divergence_not_a_crash(problem):
    tuner = Tuner(problem, TuneConfig(inner_steps=20, meta_steps=2, init_lr=1e38))
    record = tuner.meta_step()
    assert "nonfinite_loss" in record.events and record.action == "backoff"
    assert _finite(list(tuner.hparams))


def test_no_inf_in_the_tuner_state_after_nonfinite_losses(problem):
    tuner = Tuner(problem, _config("nonfinite_loss", "backoff"))
    tuner.run()
    assert _finite(tuner.state_dict())


def test_clip_policy_never_enlarges_the_hypergradient(problem):
    tuner = Tuner(problem, TuneConfig(inner_steps=20, meta_steps=1, explode_threshold=1e-6, on_divergence="clip"))
    record = tuner.meta_step()
    assert record.action == "clipped"
    # After Adam's first step exp_avg = (1 - beta1) * applied gradient.
    optimizer = tuner.state.optimizer
    beta1 = optimizer.param_groups[0]["betas"][0]
    states = optimizer.state.values()
    applied = math.sqrt(sum(float((s["exp_avg"] / (1 - beta1)).pow(2).sum()) for s in states))
    assert applied <= record.hypergrad_norm * (1 + 1e-6)


def test_fallback_record_still_names_the_divergence(problem):
    tuner = Tuner(problem, _config("solver_diverged", "fallback"))
    record = tuner.meta_step()
    assert "solver_diverged" in record.events and "fallback_neumann" in record.events


# ---------------------------------------------------------------------- the CLI
def _tune(tmp_path, capsys, caplog, toml: str, *flags: str) -> tuple[int, str, dict | None]:
    """Run the CLI in-process; returns (exit code, stderr + the hypergrad log, results.json)."""
    caplog.set_level(logging.WARNING, logger="hypergrad")
    config = tmp_path / "c.toml"
    config.write_text(toml)
    logdir = tmp_path / "run"
    code = main(["tune", "--config", str(config), "--inner-steps", "20", "--no-progress", "--logdir", str(logdir),
                 *flags])
    err = capsys.readouterr().err + "".join(f"hypergrad: {r.levelname}: {r.getMessage()}\n" for r in caplog.records)
    results = logdir / "results.json"
    return code, err, (_strict_json(results.read_text()) if results.exists() else None)


def test_cli_stop_policy_exits_1_with_finite_results(tmp_path, capsys, caplog):
    code, err, results = _tune(tmp_path, capsys, caplog, "explode_threshold = 1e-6\non_divergence = \"stop\"\n",
                               "--meta-steps", "3")
    assert code == EXIT_DIVERGED
    assert "hypergrad: error: meta step 0: exploding_hypergrad (on_divergence='stop')" in err
    assert "Traceback" not in err
    assert results is not None and results["history"][0]["action"] == "stop"
    assert results["best_step"] == 0


def test_cli_rbp_fallback_logs_and_completes(tmp_path, capsys, caplog):
    code, err, results = _tune(tmp_path, capsys, caplog, "", "--method", "rbp", "--truncate", "50",
                               "--on-divergence", "fallback", "--meta-steps", "2", "--hyper-batches", "2")
    assert code == EXIT_OK
    assert "hypergrad: WARNING: meta step 0: solver_diverged, fallback_neumann -> fallback" in err
    assert results is not None and all(r["solver"]["method"] == "neumann" for r in results["history"])


def test_cli_huge_learning_rate_writes_finite_results(tmp_path, capsys, caplog):
    code, err, results = _tune(tmp_path, capsys, caplog, "init_lr = 1e36\n", "--meta-steps", "2")
    assert "meta step 0: nonfinite_loss -> backoff" in err
    assert code == EXIT_OK and results is not None


@pytest.mark.parametrize("argv", [["--help"], ["tune", "--help"]])
def test_help_documents_the_exit_codes(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "Exit codes:" in text
    for code, words in (("0", "success"), ("1", "diverge"), ("2", "invalid input"), ("130", "interrupted")):
        assert any(line.strip().startswith(code + " ") and words in line for line in text.splitlines()), code


def test_reported_best_is_never_worse_than_the_initial_hyperparameters():
    cfg = TuneConfig(inner_steps=20, meta_steps=4, init_lr=1e6)
    problem = build_problem(RunConfig(dataset="digits", hidden=(20,)), cfg)[0]
    result = Tuner(problem, cfg).run()
    assert result.evaluation["best"]["val_loss"] <= result.evaluation["initial"]["val_loss"]


def test_a_neumann_series_with_zero_terms_is_logged_once(caplog):
    # lr 3 on the tiny problem: the Jacobian at h_T has spectral radius > 1 and every series of
    # every meta step stops before its first term (measured: 0 terms at lr >= 2)
    tuner = tiny_tuner(method="neumann", inner_steps=15, truncate=8, hyper_batches=4, init_lr=3.0, meta_steps=3,
                       meta_lr=1e-6, on_divergence="skip", blowup_ratio=1e9)
    tuner.callbacks.append(LoggingCallback())
    caplog.set_level(logging.WARNING, logger="hypergrad")
    tuner.run()
    assert all(r.solver.iterations == 0 for r in tuner.history)
    zero = [r.getMessage() for r in caplog.records if "before its first term" in r.getMessage()]
    assert len(zero) == 1 and zero[0].startswith("meta step 0:")


def test_a_sign_backtrack_is_information_and_a_divergence_a_warning(caplog):
    from hypergrad.records import MetaStepRecord

    cb = LoggingCallback()
    caplog.set_level(logging.INFO, logger="hypergrad")
    cb.on_meta_step(None, MetaStepRecord(step=2, meta_loss=None, val_loss=None, train_loss=None,
                                         events=("backtrack",), action="backtrack"))
    cb.on_meta_step(None, MetaStepRecord(step=3, meta_loss=None, val_loss=None, train_loss=None,
                                         events=("nonfinite_loss",), action="backoff"))
    levels = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert levels[0][0] == logging.INFO and "back to the last accepted point" in levels[0][1]
    assert levels[1] == (logging.WARNING, "meta step 3: nonfinite_loss -> backoff")
