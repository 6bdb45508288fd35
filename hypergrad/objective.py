r"""The meta objective: an inner problem, its batch schedules, its meta loss and its hypergradient.

The meta objective of a set of hyperparameters :math:`\theta = (\log\alpha, \operatorname{logit}\beta)`
is the meta loss (validation loss by default) of the weights :math:`w_T` reached by ``T`` inner
steps of SGD with momentum from :math:`w_0` (paper §5.3). :class:`MetaObjective` holds
everything that decides it, shared by every strategy of :mod:`hypergrad.strategies`, by the
:class:`~hypergrad.tuner.Tuner` and by the Optuna objective of :mod:`hypergrad.baselines`:

* **the batches**: meta step (or trial) ``k`` trains on :meth:`MetaObjective.batches` ``(k)``,
  the problem's schedule (:meth:`InnerProblem.schedule`) seeded by ``(seed, k)``, so every
  method, trial and rank trains on the same minibatches and a run is reproducible and
  resumable; salt ``-1`` is the evaluation run;
* **the hyper-batches** on which the RBP step map is linearised (:meth:`MetaObjective.hyper_batches`);
* **the meta loss** (:meth:`MetaObjective.meta_loss`) and the black-box value of a set of
  hyperparameters (:meth:`MetaObjective.value`: one inner training, then its meta loss);
* **the hypergradient** (:meth:`MetaObjective.hypergradient`):

  * the unrolled family (``"bptt"`` / ``"tbptt"``): :func:`hypergrad.methods.gradient`,
    back-propagation through all / the last ``truncate`` inner steps;
  * the implicit family (``"rbp"`` / ``"cg"`` / ``"neumann"`` / ``"gmres"``): the ``T`` inner
    steps keep no graph; at :math:`h_T` :func:`hypergrad.methods.implicit_gradient` (Eq. 8-9)
    on the step map is solved for each of ``hyper_batches`` minibatches and the results
    averaged ("average the meta gradient ... across multiple minibatches"), as one stacked
    block-diagonal system under ``batch_hyper``, and summed over ranks under
    ``torch.distributed``.

The methods' names and families come from :data:`hypergrad.methods.METHODS`; the data only
through the problem's data API (``schedule``, ``sample_batches``, ``full_batch``), so any
data source the problem accepts (tensors, a ``Dataset``, a ``DataLoader``) serves.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from hypergrad._tree import Tree, tree_isfinite, tree_norm
from hypergrad.config import TuneConfig
from hypergrad.data.source import Batch, Batches, stack_batches
from hypergrad.hyperparams import HyperSpec
from hypergrad.inner import InnerProblem
from hypergrad.linalg import SolveInfo
from hypergrad.methods import get_method, gradient, implicit_gradient, method_names
from hypergrad.records import HypergradResult, SolverStats

__all__ = ["MetaObjective"]

# Generator salt of the hyper-batches of meta step k: seed(k * 7919 + 17).
_HYPER_SALT_MUL, _HYPER_SALT_ADD = 7919, 17
_SEED_MUL = 1_000_003


class MetaObjective:
    """The meta objective of one :class:`InnerProblem` under one configuration.

    Args:
        problem: the inner problem (model, loss, data, :math:`w_0`).
        config: the run's :class:`~hypergrad.config.TuneConfig` (its ``seed``, ``inner_steps``,
            ``batch_size``, ``meta_loss``, ``hyper_batches``, ``fixed_point_batch``, ``truncate``,
            ``stop_on_growth``, ``batch_hyper``, ``init_lr``/``init_momentum`` and ``method``
            are read here).
        test_data: optional test set reported by :meth:`evaluate` (anything
            :func:`~hypergrad.data.source.as_source` accepts; ``x_test, y_test`` is the old form).

    Every inner run (:meth:`value`, :meth:`evaluate`, :meth:`hypergradient`) runs inside
    ``problem.rng(seed(salt))``: Dropout masks are a function of the run's seed and salt,
    identical for every method, and the global generators are left as they were.
    Hyperparameters are moved to the problem's device (:attr:`InnerProblem.device`).
    """

    def __init__(
        self,
        problem: InnerProblem,
        config: TuneConfig,
        *,
        test_data: Any = None,
        x_test: Tensor | None = None,
        y_test: Tensor | None = None,
    ) -> None:
        if problem.per != config.per:
            raise ValueError(f"problem granularity {problem.per!r} differs from config.per {config.per!r}")
        if x_test is not None and y_test is not None:
            if test_data is not None:
                raise TypeError("pass the test set either as test_data=(x, y) or as x_test=, y_test=, not both")
            test_data = (x_test, y_test)
        self.test_data = test_data
        self.problem = problem
        self.config = config

    @property
    def spec(self) -> HyperSpec:
        """The hyperparameter layout: the problem's, with ``config.segments`` segments (a schedule when > 1)."""
        spec = self.problem.spec
        return spec if self.config.segments == 1 else spec.with_segments(self.config.segments)

    def segment_runs(self, start: int = 0, stop: int | None = None) -> list[tuple[int, int, int]]:
        """``(segment, a, b)``: the inner steps ``a <= t < b`` of ``[start, stop)`` that use each segment, in order."""
        num_steps = self.config.inner_steps
        stop = num_steps if stop is None else stop
        seg = self.spec.segment_of(num_steps)
        if seg is None:
            return [(0, start, stop)] if stop > start else []
        runs: list[tuple[int, int, int]] = []
        for t in range(start, stop):
            if runs and runs[-1][0] == seg[t]:
                runs[-1] = (seg[t], runs[-1][1], t + 1)
            else:
                runs.append((seg[t], t, t + 1))
        return runs

    @property
    def meta_split(self) -> str:
        """The split the meta loss is taken on: ``"val"`` (default) or ``"train"``."""
        return "train" if self.config.meta_loss == "train" else "val"

    # ------------------------------------------------------------------ data
    def seed(self, salt: int) -> int:
        """The generator seed of salt ``salt`` (meta step, trial, or ``-1`` for the evaluation run)."""
        return self.config.seed * _SEED_MUL + salt

    def batches(self, salt: int) -> Batches:
        """The ``T`` minibatches ``(x, y)`` of meta step ``salt`` (``-1``: the evaluation run).

        Seeded by ``(seed, salt)``: every method, trial and rank trains on the same batches.
        Lazy and re-iterable (:meth:`InnerProblem.schedule`; for in-memory data the consecutive
        shuffled epochs of :class:`~hypergrad.data.BatchSchedule`, drawn one epoch at a time,
        so the index memory does not grow with ``T``).
        """
        cfg = self.config
        return self.problem.schedule(cfg.inner_steps, self.seed(salt), batch_size=cfg.batch_size)

    def hyper_batches(self, salt: int) -> list[Batch]:
        """The ``M`` minibatches on which the RBP step map is linearised at meta step ``salt``.

        Drawn independently of the inner run's batches (``fixed_point_batch="full"``:
        the whole training set once, the paper code's setting).
        """
        problem, cfg = self.problem, self.config
        if cfg.fixed_point_batch == "full":
            return [problem.full_batch("train")]
        return problem.sample_batches(cfg.hyper_batches, self.seed(salt * _HYPER_SALT_MUL + _HYPER_SALT_ADD),
                                      batch_size=cfg.batch_size)

    # ------------------------------------------------------------------ values
    def initial_hparams(self) -> tuple[Tensor, ...]:
        """The configured start (``init_lr``, ``init_momentum``) in unconstrained coordinates."""
        problem = self.problem
        return tuple(h.detach() for h in self.spec.init(self.config.init_lr, self.config.init_momentum,
                                                        problem.w0[0].dtype, problem.device))

    def meta_loss(self, weights: Sequence[Tensor]) -> Tensor:
        """The meta loss of inner weights: validation loss (default) or the whole training loss."""
        return self.problem.eval_loss(weights, self.meta_split)

    def _hp(self, hparams: Tree) -> tuple[Tensor, ...]:
        """Detached hyperparameters on the problem's device."""
        device = self.problem.device
        return tuple(h.detach().to(device) for h in hparams)

    def run_steps(
        self,
        hparams: Tree,
        batches: Sequence[Batch],
        *,
        start: int = 0,
        stop: int | None = None,
        state: Tree | None = None,
        on_step: Callable[[int, Tree], None] | None = None,
    ) -> Tree:
        """Inner steps ``start <= t < stop`` (default: all ``T``) without a graph, from ``state`` (default :math:`h_0`).

        ``batches`` holds the minibatches of those steps. With a schedule (``segments > 1``)
        each step takes the values of its segment (:meth:`segment_runs`), the run of
        :class:`~hypergrad.hyperparams.SGDSchedule`; ``on_step(t, state)`` counts ``t`` from ``start``.
        """
        hp = self._hp(hparams)
        if self.config.segments == 1:
            return self.problem.train(hp, batches, state=state, on_step=on_step)
        spec = self.spec
        for segment, a, b in self.segment_runs(start, stop):
            hook = None if on_step is None else (lambda t, h, a=a: on_step(t + a - start, h))
            state = self.problem.train(spec.at_segment(hp, segment), batches[a - start : b - start], state=state,
                                       on_step=hook)
        return self.problem.initial_state() if state is None else state

    def train(self, hparams: Tree, salt: int, *, on_step: Callable[[int, Tree], None] | None = None) -> Tree:
        """One inner training (no graph) with ``hparams`` on the batches of ``salt``; returns :math:`h_T`."""
        with self.problem.rng(self.seed(salt)):
            return self.run_steps(hparams, self.batches(salt), on_step=on_step)

    def value(self, hparams: Tree, salt: int, *, on_step: Callable[[int, Tree], None] | None = None) -> float:
        """The meta loss of ``hparams``: ONE inner training on the batches of ``salt``, then its meta loss.

        The black-box objective (one Optuna trial). The same inner run as
        :meth:`hypergradient` and :meth:`evaluate`; non-finite losses are returned as they are.
        """
        with self.problem.rng(self.seed(salt)):
            h_t = self.run_steps(hparams, self.batches(salt), on_step=on_step)
            with torch.no_grad():
                return float(self.meta_loss(h_t[: self.problem.num_tensors]))

    def evaluate(self, hparams: Tree, salt: int = -1) -> dict[str, float]:
        """Train once with ``hparams`` (the batches of ``salt``) and report losses and the metric.

        Returns ``val_loss``, ``train_loss`` (the meta loss's definition), and, where the
        test set is given, ``test_loss``; beside them ``test_<metric>`` and ``val_<metric>``
        where a metric applies (:meth:`InnerProblem.evaluate`: ``accuracy`` for class targets,
        the ``metric=`` callable's name, nothing for a regression without one). Never raises
        on non-finite values (a blown-up run reports ``nan``/``inf``).
        """
        problem = self.problem
        with problem.rng(self.seed(salt)):
            h_t = self.run_steps(hparams, self.batches(salt))
            return self.evaluate_weights(h_t[: problem.num_tensors])

    def evaluate_weights(self, weights: Sequence[Tensor]) -> dict[str, float]:
        """:meth:`evaluate`'s report of given inner weights (no training): losses and the metric."""
        problem, w = self.problem, tuple(weights)
        with torch.no_grad():
            out = {
                "val_loss": float(problem.eval_loss(w, "val")),
                "train_loss": float(problem.eval_loss(w, "train")),
            }
            if self.test_data is not None:
                test = problem.evaluate(w, self.test_data)
                out["test_loss"] = test.pop("loss")
                out.update({f"test_{k}": v for k, v in test.items()})
            val = problem.evaluate(w, "val")
            out.update({f"val_{k}": v for k, v in val.items() if k != "loss"})
        return out

    # ------------------------------------------------------------------ hypergradients
    def hypergradient(
        self, hparams: Tree, salt: int, *, method: str | None = None, batches: Sequence[Batch] | None = None
    ) -> HypergradResult:
        """One inner run from :math:`w_0` and its hypergradient.

        Args:
            hparams: the unconstrained hyperparameters.
            salt: the meta step: the inner run trains on ``batches(salt)`` and the RBP
                methods linearise on ``hyper_batches(salt)``.
            method: the hypergradient method (default: the config's).
            batches: the inner run's minibatches, if not ``batches(salt)``.
        """
        method = method or self.config.method
        batches = self.batches(salt) if batches is None else batches
        hp = self._hp(hparams)
        family = get_method(method).family
        if self.config.segments > 1 and family == "implicit":
            raise ValueError(f"method={method!r} cannot differentiate a schedule (segments={self.config.segments}); "
                             "use bptt, tbptt or forward")
        with self.problem.rng(self.seed(salt)):
            if family == "unrolled":
                return self._unrolled(hp, batches, method)
            if family == "forward":
                return self._forward(hp, batches)
            start = time.perf_counter()
            h_t = self.problem.train(hp, batches)
            inner_seconds = time.perf_counter() - start
            return dataclasses.replace(self.fixed_point_hypergradient(h_t, hp, salt, method=method),
                                       inner_seconds=inner_seconds)

    def _unrolled(self, hp: Tree, batches: Sequence[Batch], method: str) -> HypergradResult:
        """BPTT / TBPTT by :func:`hypergrad.methods.gradient`: back-propagation through the last ``K`` steps."""
        problem, cfg = self.problem, self.config
        n = problem.num_tensors
        start = time.perf_counter()
        timing: dict[str, float] = {}
        k = cfg.truncate if get_method(method).uses_truncate else cfg.inner_steps  # TBPTT: K; BPTT: all T
        first = cfg.inner_steps - k
        tail = iter(batches[first:])  # the steps differentiated through
        seg = self.spec.segment_of(cfg.inner_steps)
        t = first

        def step(state: Tree, p: Tree) -> Tree:
            nonlocal t
            if seg is not None:  # a schedule: step t uses (and sends its gradient to) its segment's slice
                p = tuple(h[seg[t]] for h in p)
            t += 1
            return problem.step(state, p, *next(tail))

        def run(state: Tree, p: Tree, num_steps: int) -> Tree:  # the steps before them, without a graph
            return self.run_steps(p, batches[:num_steps], stop=num_steps, state=state)

        def loss_fn(state: Tree) -> Tensor:
            timing["inner"] = time.perf_counter() - start  # the T steps, before the backward
            return self.meta_loss(state[:n])

        out = gradient(step, problem.initial_state(), hp, loss_fn, method=method, num_steps=cfg.inner_steps,
                       truncate=cfg.truncate, run=run)
        return HypergradResult(grad=tuple(out.grads), state=out.state, meta_loss=out.loss,
                               inner_seconds=timing.get("inner"))

    def _forward(self, hp: Tree, batches: Sequence[Batch]) -> HypergradResult:
        r"""Forward mode (:func:`hypergrad.forward_grad`): BPTT's hypergradient, the tangents
        :math:`\mathrm{d}h_t/\mathrm{d}\theta` carried through the ``T`` steps, memory constant in ``T``.

        The step map is :meth:`InnerProblem.functional_step` (``torch.func``-composable); a
        schedule's steps use their segments (``segment_of``).
        """
        problem, cfg = self.problem, self.config
        n = problem.num_tensors
        start = time.perf_counter()
        timing: dict[str, float] = {}

        def step(state: Tree, p: Tree, batch: Batch) -> Tree:
            return problem.functional_step(state, p, *batch)

        def loss_fn(state: Tree) -> Tensor:
            timing["inner"] = time.perf_counter() - start
            return self.meta_loss(state[:n])

        out = gradient(step, problem.initial_state(), hp, loss_fn, method="forward", num_steps=cfg.inner_steps,
                       inputs=batches, segment_of=self.spec.segment_of(cfg.inner_steps))
        return HypergradResult(grad=tuple(out.grads), state=out.state, meta_loss=out.loss,
                               inner_seconds=timing.get("inner"))

    def fixed_point_hypergradient(
        self, state: Tree, hparams: Tree, salt: int, *, method: str | None = None
    ) -> HypergradResult:
        """The RBP hypergradient at an inner state :math:`h_T`, averaged over the hyper-batches of ``salt``.

        The gradient of the meta loss in :math:`w_T` (chunk by chunk: no graph over the whole
        split), then :func:`hypergrad.methods.implicit_gradient` on the step map of each
        hyper-batch (Eq. 8-9).
        A non-finite :math:`h_T` or meta loss returns zeros with a ``nan`` meta loss and
        ``solver.skipped`` set: there is no fixed point to differentiate.
        """
        method = method or self.config.method
        spec = get_method(method)
        if spec.family != "implicit":
            raise ValueError(f"method={method!r} has no fixed-point hypergradient; expected one of "
                             f"{', '.join(method_names('implicit'))}")
        problem, cfg = self.problem, self.config
        n = problem.num_tensors
        h_t = tuple(state)
        hp = tuple(h.detach() for h in hparams)
        meta_loss, gw = problem.eval_loss_and_grad(h_t[:n], self.meta_split)
        if not (tree_isfinite(h_t) and tree_isfinite(gw) and bool(torch.isfinite(meta_loss))):
            # The inner training blew up: the caller sees a non-finite meta loss and applies the
            # divergence policy; nothing non-finite is returned.
            nan = torch.full((), float("nan"), dtype=meta_loss.dtype, device=meta_loss.device)
            return HypergradResult(grad=tuple(torch.zeros_like(h) for h in hp), state=h_t, meta_loss=nan,
                                   solver=SolverStats(method=method, skipped="non-finite inner state"))
        state_grad = tuple(gw) + tuple(torch.zeros_like(v) for v in h_t[n:])
        hyper_sets = self.hyper_batches(salt)
        par = problem.parallel
        mine = hyper_sets[par.rank :: par.world_size] if par is not None else hyper_sets
        grads: list[Tree] = []
        infos: list[SolveInfo] = []
        if cfg.batch_hyper and par is None and len(mine) > 1 and spec.stackable:
            grads, info = self._stacked(h_t, hp, state_grad, mine, method)
            infos.append(info)
            mine = []
        for x, y in mine:

            def step(s: Tree, p: Tree, x: Tensor = x, y: Tensor = y) -> Tree:
                return problem.step(s, p, x, y)

            g, info = self._solve(step, h_t, hp, state_grad, method)
            grads.append(g)
            infos.append(info)
        mean, spread = self._average(grads, hp, len(hyper_sets))
        return HypergradResult(grad=mean, state=h_t, meta_loss=meta_loss.detach(), spread=spread,
                               solver=self._solver_stats(method, infos))

    def _solve(self, step: Any, h_t: Tree, hp: Tree, state_grad: Tree, method: str, blocks: bool = False
               ) -> tuple[Tree, SolveInfo]:
        """The one call of the fixed-point solver: ``K = truncate`` iterations, Neumann's ``stop_on_growth``."""
        cfg = self.config
        return implicit_gradient(step, h_t, hp, state_grad, method=method, truncate=cfg.truncate,
                                 stop_on_growth=cfg.stop_on_growth, blocks=blocks)

    def _stacked(
        self, h_t: Tree, hp: Tree, state_grad: Tree, batches: list[Batch], method: str
    ) -> tuple[list[Tree], SolveInfo]:
        """Per-minibatch hypergradients from ONE solve of the stacked (block-diagonal) system."""
        problem = self.problem
        m = len(batches)
        xs, ys = stack_batches(batches)  # tuple inputs stacked input by input

        def stack(tree: Tree) -> Tree:
            return tuple(t.unsqueeze(0).expand(m, *t.shape).clone() for t in tree)

        def step(state: Tree, p: Tree) -> Tree:
            return problem.step_batched(state, p, xs, ys)

        g, info = self._solve(step, stack(h_t), stack(hp), stack(state_grad), method, blocks=True)
        return [tuple(t[i] for t in g) for i in range(m)], info

    def _average(self, grads: list[Tree], hp: Tree, count: int) -> tuple[tuple[Tensor, ...], float]:
        """Mean of the per-hyper-batch hypergradients (summed over ranks) and their relative spread."""
        par = self.problem.parallel
        sums = [torch.zeros_like(h) for h in hp]
        squares = [torch.zeros_like(h) for h in hp]
        for g in grads:
            for s_, q_, gi in zip(sums, squares, g):
                s_.add_(gi)
                q_.add_(gi * gi)
        if par is not None:  # the meta update is identical on every rank
            reduced = par.all_reduce_sum(sums + squares)
            sums, squares = reduced[: len(hp)], reduced[len(hp) :]
        mean = tuple(s_ / count for s_ in sums)
        if count <= 1:
            return mean, 0.0
        var = tuple(((q_ - count * m * m) / (count - 1)).clamp_min(0) for q_, m in zip(squares, mean))
        return mean, tree_norm(tuple(v.sqrt() for v in var)) / max(tree_norm(mean), 1e-30)

    def _solver_stats(self, method: str, infos: list[SolveInfo]) -> SolverStats:
        # A Neumann series cut short by stop_on_growth is the safeguard at work: the partial sum
        # up to the first growing term is kept and logged ("growth" in stop_reasons), not backed off.
        diverged = any(i.diverged and i.stop_reason != "growth" for i in infos)
        par = self.problem.parallel
        if par is not None:
            diverged = par.any(diverged)
        finite_rho = [i.spectral_radius for i in infos if not math.isnan(i.spectral_radius)]
        return SolverStats(
            method=method,
            iterations=float(sum(i.iterations for i in infos) / max(len(infos), 1)),
            residual=max((i.residual for i in infos), default=0.0),
            converged=all(i.converged for i in infos),
            diverged=diverged,
            stop_reasons=tuple(sorted({i.stop_reason for i in infos})),
            spectral_radius=max(finite_rho) if finite_rho else float("nan"),
        )
