"""The method table and the one gradient dispatch (:mod:`hypergrad.methods`).

* the table: order, families, labels, and agreement with the core's and the tuner's names;
  what a row claims (``needs_jvp``, ``stackable``) is what the core does;
* :func:`hypergrad.gradient` by every method equals the direct call it dispatches to
  (:func:`hypergrad.unrolled_grad` / :func:`hypergrad.fixed_point_grad`), exactly;
* on a contraction run to its fixed point, every implicit method approaches BPTT and the
  dense implicit gradient (Eq. 8-9), and TBPTT(K) equals Neumann-RBP(K - 1) (Prop. 2);
* ``run``, ``fixed_point_step``, ``has_aux``, ``blocks`` and the non-finite path;
* bad input: ValueErrors that name the argument and the choices.
"""

from __future__ import annotations

import contextlib
import importlib
import math

import pytest
import torch

import hypergrad
from hypergrad import config, implicit, linalg, tuner
from hypergrad.methods import METHODS, GradResult, get_method, gradient, implicit_gradient, method_names
from tests._maps import DT, exact_grad, make_gru_problem, make_tanh_problem, rel_err

ALL = list(METHODS)
IMPLICIT = list(method_names("implicit"))
T, K = 30, 6


@pytest.fixture(scope="module")
def problem():
    return make_tanh_problem(shapes=((5,), (2, 2)), contraction=0.6, seed=3)


def _h0(p):
    return tuple(torch.zeros_like(s) for s in p.state)


# --------------------------------------------------------------------------- the table
def test_table_order_families_and_labels() -> None:
    assert ALL == ["bptt", "tbptt", "rbp", "cg", "neumann", "gmres", "forward"]
    assert method_names("unrolled") == ("bptt", "tbptt")
    assert method_names("implicit") == ("rbp", "cg", "neumann", "gmres")
    assert method_names("forward") == ("forward",)
    assert method_names() == tuple(ALL)
    assert {m: METHODS[m].label for m in ALL} == {
        "bptt": "BPTT", "tbptt": "TBPTT", "rbp": "RBP", "cg": "CG-RBP", "neumann": "Neumann-RBP",
        "gmres": "GMRES-RBP", "forward": "Forward-mode"}
    for name, m in METHODS.items():
        assert m.name == name and m.summary and m.reference
        assert m.uses_truncate == (name not in ("bptt", "forward"))
    assert [m for m in ALL if METHODS[m].needs_jvp] == ["cg", "forward"]
    assert "Algorithm 1" in METHODS["rbp"].reference and "Algorithm 2" in METHODS["neumann"].reference
    assert hypergrad.METHODS is METHODS and hypergrad.gradient is gradient
    with pytest.raises(TypeError):
        METHODS["adam"] = METHODS["cg"]  # the table is read-only


def test_core_and_tuner_names_agree_with_the_table() -> None:
    """The core's solver names and every method tuple above it (tuner, objective, config) are the table's."""
    assert implicit.METHODS == linalg.SOLVERS == method_names("implicit")
    expected = {
        "UNROLLED_METHODS": method_names("unrolled"),
        "IMPLICIT_METHODS": method_names("implicit"),
        "STACKABLE_METHODS": tuple(m for m in ALL if METHODS[m].stackable),
        "TUNE_METHODS": method_names("unrolled") + method_names("implicit") + method_names("forward"),
        "TUNER_METHODS": method_names("unrolled") + method_names("implicit") + method_names("forward"),
    }
    modules = [tuner, config]
    with contextlib.suppress(ImportError):
        modules.append(importlib.import_module("hypergrad.objective"))
    found = {(mod.__name__, name): getattr(mod, name) for mod in modules for name in expected if hasattr(mod, name)}
    assert ("hypergrad.tuner", "TUNE_METHODS") in found
    for (_, name), value in found.items():
        assert tuple(value) == expected[name], name
    if callable(getattr(config, "method_names", None)):
        assert tuple(config.method_names()) == method_names()


@pytest.mark.parametrize("name", IMPLICIT)
def test_rows_say_what_the_core_does(name: str, problem) -> None:
    """``needs_jvp``: the solver refuses to run without J u. ``stackable``: blocks=True works."""
    b = tuple(torch.ones(3, dtype=DT) for _ in range(1))
    vjp = lambda v: tuple(0.5 * t for t in v)  # noqa: E731
    if METHODS[name].needs_jvp:
        with pytest.raises(ValueError, match="jvp"):
            implicit.solve_adjoint(name, vjp, b, max_iter=3)
    else:
        implicit.solve_adjoint(name, vjp, b, max_iter=3)
    gru = make_gru_problem(batch=3, hidden=4, seed=1)
    if METHODS[name].stackable:
        hypergrad.fixed_point_grad(gru.step, gru.state, gru.params, gru.state_grad, method=name, max_iter=3,
                                   blocks=True)
    else:
        with pytest.raises(ValueError, match="blocks"):
            hypergrad.fixed_point_grad(gru.step, gru.state, gru.params, gru.state_grad, method=name, max_iter=3,
                                       blocks=True)


def test_get_method_and_method_names_reject_bad_names() -> None:
    assert get_method("neumann") is METHODS["neumann"]
    for bad in ("cg_rbp", "Neumann", "", None, 3):
        with pytest.raises(ValueError, match="bptt, tbptt, rbp, cg, neumann, gmres, forward"):
            get_method(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="family"):
        method_names("explicit")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- dispatch == direct call
# GMRES's small least-squares solve (torch.linalg.lstsq) is not bit-reproducible from call to
# call; every other solver is, and is compared exactly.
def _rtol(method: str) -> float:
    return 1e-12 if method == "gmres" else 0.0


def _same_info(a, b, rtol: float = 0.0) -> bool:
    """Field-wise equality (floats to ``rtol``), NaN equal to NaN (an unknown spectral radius)."""
    def close(x, y) -> bool:
        if isinstance(x, float) and isinstance(y, float):
            return (math.isnan(x) and math.isnan(y)) or abs(x - y) <= rtol * abs(y)
        if isinstance(x, tuple):
            return len(x) == len(y) and all(close(u, v) for u, v in zip(x, y))
        return x == y

    return all(close(x, y) for x, y in zip(a, b))


def _assert_same(a, b, rtol: float = 0.0) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        if rtol == 0.0:
            assert torch.equal(x, y)
        else:
            torch.testing.assert_close(x, y, rtol=rtol, atol=0.0)


@pytest.mark.parametrize("name", ALL)
def test_gradient_equals_the_direct_call(name: str, problem) -> None:
    p, h0 = problem, _h0(problem)
    kw = {"init": "uniform", "generator": torch.Generator().manual_seed(5)} if name == "rbp" else {}
    got = gradient(p.step, h0, p.params, p.loss, method=name, num_steps=T, truncate=K, **kw)
    assert isinstance(got, GradResult)
    h_t = hypergrad.unroll(p.step, h0, p.params, T)
    _assert_same(got.state, h_t)
    assert torch.equal(got.loss, p.loss(h_t)) and not got.loss.requires_grad and got.aux is None
    if METHODS[name].family == "unrolled":
        want = hypergrad.unrolled_grad(p.step, h0, p.params, T, p.loss, truncate=K if name == "tbptt" else None)
        assert got.info is None
    elif METHODS[name].family == "forward":
        want = hypergrad.forward_grad(p.step, h0, p.params, T, p.loss)
        assert got.info is None
    else:
        kw = {"init": "uniform", "generator": torch.Generator().manual_seed(5)} if name == "rbp" else {}
        leaf = tuple(t.clone().requires_grad_(True) for t in h_t)
        g = torch.autograd.grad(p.loss(leaf), leaf)  # dL/dh_T by autograd, as the dispatch does
        want, info = hypergrad.fixed_point_grad(p.step, h_t, p.params, g, method=name, max_iter=K, **kw)
        assert _same_info(got.info, info, _rtol(name)) and got.info.method == name
    _assert_same(got.grads, want, _rtol(name))
    assert max(float(g.abs().max()) for g in got.grads) > 0


@pytest.mark.parametrize("name", IMPLICIT)
def test_implicit_gradient_equals_fixed_point_grad(name: str, problem) -> None:
    p = problem
    got, info = implicit_gradient(p.step, p.state, p.params, p.state_grad, method=name, truncate=K)
    want, want_info = hypergrad.fixed_point_grad(p.step, p.state, p.params, p.state_grad, method=name, max_iter=K)
    _assert_same(got, want, _rtol(name))
    assert _same_info(info, want_info, _rtol(name))


@pytest.mark.parametrize("name", IMPLICIT)
def test_options_apply_only_where_the_method_uses_them(name: str, problem) -> None:
    """``init`` is RBP's, ``stop_on_growth`` Neumann's; the others run as without them."""
    p, h0 = problem, _h0(problem)
    plain = gradient(p.step, h0, p.params, p.loss, method=name, num_steps=T, truncate=K)
    opts = gradient(p.step, h0, p.params, p.loss, method=name, num_steps=T, truncate=K, init="uniform",
                    generator=torch.Generator().manual_seed(0), stop_on_growth=True)
    if name == "rbp":  # a different start z_0, a different K-step iterate
        assert not torch.equal(plain.grads[0], opts.grads[0])
    else:
        _assert_same(plain.grads, opts.grads, _rtol(name))


# --------------------------------------------------------------------------- the mathematics
def test_implicit_methods_approach_bptt_on_a_contraction() -> None:
    """T = 200 steps of a contraction reach h*; with K = 60 every implicit method solves Eq. (9)."""
    p = make_tanh_problem(shapes=((4,), (3,)), contraction=0.5, seed=7)
    h0 = _h0(p)
    bptt = gradient(p.step, h0, p.params, p.loss, method="bptt", num_steps=200)
    dense = exact_grad(p.step, p.state, p.params, p.state_grad)
    assert rel_err(bptt.grads, dense) < 1e-8
    for name in IMPLICIT:
        got = gradient(p.step, h0, p.params, p.loss, method=name, num_steps=200, truncate=60)
        assert got.info.converged, name
        assert rel_err(got.grads, bptt.grads) < 1e-8, name
    # A short solve is an approximation, not the answer: the test can fail.
    short = gradient(p.step, h0, p.params, p.loss, method="neumann", num_steps=200, truncate=1)
    assert rel_err(short.grads, bptt.grads) > 1e-3


@pytest.mark.parametrize("k", [2, 5])
def test_tbptt_k_equals_neumann_k_minus_1_at_a_fixed_point(k: int) -> None:
    """Proposition 2, with the off-by-one made exact (see hypergrad.unroll)."""
    p = make_tanh_problem(contraction=0.5, seed=2)
    h0 = _h0(p)
    tb = gradient(p.step, h0, p.params, p.loss, method="tbptt", num_steps=200, truncate=k)
    ne = gradient(p.step, h0, p.params, p.loss, method="neumann", num_steps=200, truncate=k - 1)
    assert rel_err(tb.grads, ne.grads) < 1e-10


# --------------------------------------------------------------------------- run, fixed_point_step, aux, blocks
class _Counter:
    def __init__(self, step) -> None:
        self.step, self.calls = step, 0

    def __call__(self, state, params):
        self.calls += 1
        return self.step(state, params)


@pytest.mark.parametrize("name", ["bptt", "tbptt", "neumann", "cg"])
def test_run_replaces_the_no_graph_steps(name: str, problem) -> None:
    p, h0 = problem, _h0(problem)
    ref = gradient(p.step, h0, p.params, p.loss, method=name, num_steps=T, truncate=K)
    runs: list[int] = []

    def run(state, params, n):
        assert not any(t.requires_grad for t in params)
        runs.append(n)
        return hypergrad.unroll(p.step, state, params, n)

    step = _Counter(p.step)
    got = gradient(step, h0, p.params, p.loss, method=name, num_steps=T, truncate=K, run=run)
    for x, y in zip(got.grads, ref.grads):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-14)
    # bptt: no step without a graph; tbptt: the T - K before the last K; implicit: all T.
    assert runs == {"bptt": [], "tbptt": [T - K]}.get(name, [T])
    assert step.calls >= {"bptt": T, "tbptt": K}.get(name, 1)
    if name == "tbptt":
        assert step.calls == K


def test_fixed_point_step_is_the_map_linearised_at_h_t(problem) -> None:
    p, h0 = problem, _h0(problem)
    forward, fixed = _Counter(p.step), _Counter(p.step)
    got = gradient(forward, h0, p.params, p.loss, method="neumann", num_steps=T, truncate=K, fixed_point_step=fixed)
    assert forward.calls == T and fixed.calls == 1  # one graph of one step at h_T
    ref = gradient(p.step, h0, p.params, p.loss, method="neumann", num_steps=T, truncate=K)
    _assert_same(got.grads, ref.grads)
    # A different map at h_T gives a different gradient: the argument is used.
    halved = lambda s, w: tuple(0.5 * t for t in p.step(s, w))  # noqa: E731
    other = gradient(p.step, h0, p.params, p.loss, method="neumann", num_steps=T, truncate=K,
                     fixed_point_step=halved)
    assert not torch.allclose(other.grads[0], ref.grads[0])


@pytest.mark.parametrize("name", ALL)
def test_has_aux_returns_aux_and_allows_a_second_backward(name: str, problem) -> None:
    """As the GNN recipe does: ``loss_fn`` differentiates the loss w.r.t. an output layer itself."""
    p, h0 = problem, _h0(problem)
    head = torch.full((5,), 0.3, dtype=DT, requires_grad=True)

    def loss_fn(s):
        loss = p.loss(s) + (head * s[0]).sum()
        (g_head,) = torch.autograd.grad(loss, head, retain_graph=True)
        return loss, {"g_head": g_head}

    got = gradient(p.step, h0, p.params, loss_fn, method=name, num_steps=T, truncate=K, has_aux=True)
    torch.testing.assert_close(got.aux["g_head"], got.state[0])
    plain = gradient(p.step, h0, p.params, lambda s: p.loss(s) + (head * s[0]).sum(), method=name, num_steps=T,
                     truncate=K)
    _assert_same(got.grads, plain.grads, _rtol(name))


@pytest.mark.parametrize("name", [m for m in ALL if METHODS[m].stackable])
def test_blocks_is_passed_through(name: str) -> None:
    gru = make_gru_problem(batch=3, hidden=4, seed=4)
    h0 = tuple(torch.zeros_like(s) for s in gru.state)
    got = gradient(gru.step, h0, gru.params, gru.loss, method=name, num_steps=40, truncate=5, blocks=True)
    leaf = tuple(t.clone().requires_grad_(True) for t in got.state)
    g = torch.autograd.grad(gru.loss(leaf), leaf)
    want, info = implicit_gradient(gru.step, got.state, gru.params, g, method=name, truncate=5, blocks=True)
    _assert_same(got.grads, want)
    assert _same_info(got.info, info)


@pytest.mark.parametrize("name", [m for m in ALL if not METHODS[m].stackable])
def test_blocks_is_refused_by_methods_that_cannot_stack(name: str, problem) -> None:
    p = problem
    with pytest.raises(ValueError, match="blocks=True is supported by methods rbp, cg, neumann"):
        gradient(p.step, _h0(p), p.params, p.loss, method=name, num_steps=T, truncate=K, blocks=True)


@pytest.mark.parametrize("name", ALL)
def test_a_blown_up_forward_gives_non_finite_grads(name: str) -> None:
    w = (torch.tensor([[3.0]], dtype=DT),)
    step = lambda s, p: (p[0] @ s[0] * s[0],)  # noqa: E731  # h' = 3 h^2: overflows
    h0 = (torch.tensor([2.0], dtype=DT),)
    got = gradient(step, h0, w, lambda s: s[0].sum(), method=name, num_steps=12, truncate=2)
    assert not all(bool(torch.isfinite(g).all()) for g in got.grads)
    if METHODS[name].family == "implicit":  # no solve on a non-finite state
        assert got.info.diverged and got.info.stop_reason == "nonfinite" and got.info.iterations == 0
        assert all(bool(torch.isnan(g).all()) for g in got.grads)
        assert math.isnan(got.info.residual) or math.isinf(got.info.residual)


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(method="cg_rbp"), ValueError, "unknown method 'cg_rbp'; expected one of bptt, tbptt, rbp, cg"),
        (dict(method="tbptt", truncate=None), ValueError, "method 'tbptt' needs truncate"),
        (dict(method="neumann", truncate=0), ValueError, "method 'neumann' needs truncate"),
        (dict(method="rbp", truncate=2.5), ValueError, "needs truncate"),
        (dict(method="tbptt", truncate=T + 1), ValueError, r"truncate \(31\) must not exceed num_steps \(30\)"),
        (dict(method="neumann", num_steps=0), ValueError, "num_steps"),
        (dict(method="bptt", num_steps=0), ValueError, "num_steps"),
        (dict(method="neumann", run=3), TypeError, "run must be callable"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, match, problem) -> None:
    p = problem
    call = dict(method="neumann", num_steps=T, truncate=K) | kwargs
    with pytest.raises(error, match=match):
        gradient(p.step, _h0(p), p.params, p.loss, **call)


@pytest.mark.parametrize("name", ["bptt", "neumann"])
def test_bad_loss_fn(name: str, problem) -> None:
    p = problem
    with pytest.raises(ValueError, match="scalar tensor"):
        gradient(p.step, _h0(p), p.params, lambda s: s[0], method=name, num_steps=T, truncate=K)
    with pytest.raises(ValueError, match=r"pair \(loss, aux\)"):
        gradient(p.step, _h0(p), p.params, p.loss, method=name, num_steps=T, truncate=K, has_aux=True)
    with pytest.raises(TypeError, match="loss_fn must be callable"):
        gradient(p.step, _h0(p), p.params, None, method=name, num_steps=T, truncate=K)  # type: ignore[arg-type]


def test_bptt_ignores_truncate_and_tbptt_with_k_equal_t_is_bptt(problem) -> None:
    p, h0 = problem, _h0(problem)
    a = gradient(p.step, h0, p.params, p.loss, method="bptt", num_steps=T)
    b = gradient(p.step, h0, p.params, p.loss, method="bptt", num_steps=T, truncate=3)
    c = gradient(p.step, h0, p.params, p.loss, method="tbptt", num_steps=T, truncate=T)
    _assert_same(a.grads, b.grads)
    _assert_same(a.grads, c.grads)


def test_implicit_gradient_refuses_unrolled_methods(problem) -> None:
    p = problem
    with pytest.raises(ValueError, match="implicit family"):
        implicit_gradient(p.step, p.state, p.params, p.state_grad, method="tbptt", truncate=3)
    with pytest.raises(ValueError, match="needs truncate"):
        implicit_gradient(p.step, p.state, p.params, p.state_grad, method="cg", truncate=None)  # type: ignore
