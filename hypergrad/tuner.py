r"""The meta loop: inner training -> hypergradient (averaged) -> Adam step (paper §5.3).

Each meta step

1. restarts the inner model from the same initial weights :math:`w_0`;
2. trains it for ``T = inner_steps`` steps of SGD with momentum on fresh
   minibatches (drawn from a generator seeded by ``(seed, meta step)``, so a run
   is reproducible and resumable);
3. evaluates the meta loss at :math:`w_T` (validation loss by default);
4. computes the hypergradient w.r.t. :math:`(\log\alpha, \operatorname{logit}\beta)`:

   * ``"bptt"`` / ``"tbptt"``: :func:`hypergrad.unrolled_grad` through all / the
     last ``truncate`` inner steps;
   * ``"rbp"`` / ``"cg"`` / ``"neumann"`` / ``"gmres"``: the ``T`` inner steps keep
     no graph; at :math:`h_T` :func:`hypergrad.fixed_point_grad` on the step map is
     solved for each of ``hyper_batches`` minibatches and the results averaged
     ("average the meta gradient ... across multiple minibatches");
5. guards against divergence (non-finite losses, exploding hypergradients,
   diverging solvers) by the ``on_divergence`` policy, and takes an Adam step.

The best hyperparameters by validation loss are tracked; a tuned run therefore
never reports worse hyperparameters than it started with.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from hypergrad._tree import Tree, tree_isfinite, tree_norm
from hypergrad.config import TuneConfig, tune_config
from hypergrad.hyperparams import HyperSpec, to_sgd_param_groups
from hypergrad.implicit import fixed_point_grad
from hypergrad.inner import BatchSchedule, InnerProblem
from hypergrad.unroll import unrolled_grad

__all__ = [
    "TUNE_METHODS",
    "Callback",
    "DivergenceError",
    "TuneConfig",
    "TuneResult",
    "Tuner",
    "tune",
]

UNROLLED_METHODS = ("bptt", "tbptt")
IMPLICIT_METHODS = ("rbp", "cg", "neumann", "gmres")
STACKABLE_METHODS = ("rbp", "cg", "neumann")  # solved as one block-diagonal system under batch_hyper
TUNE_METHODS = UNROLLED_METHODS + IMPLICIT_METHODS
DIVERGENCE_POLICIES = ("backoff", "skip", "clip", "fallback", "stop")
logger = logging.getLogger("hypergrad")


class DivergenceError(RuntimeError):
    """Raised when ``on_divergence="stop"`` and a meta step diverged."""


class Callback(Protocol):
    """Observer of a tuning run. Every method is optional."""

    def on_start(self, tuner: Tuner) -> None: ...

    def on_meta_step(self, tuner: Tuner, record: dict[str, Any]) -> None: ...

    def on_end(self, tuner: Tuner, result: TuneResult) -> None: ...


@dataclass
class TuneResult:
    """Outcome of :func:`tune`.

    Attributes:
        spec: the hyperparameter layout.
        config: the resolved configuration.
        best: unconstrained hyperparameters with the lowest validation meta loss.
        final: hyperparameters after the last meta step.
        history: one record per meta step (losses, hypergradient norm, solver info, timing).
        evaluation: ``{"initial"|"best"|"final": {val_loss, train_loss, test_loss, test_accuracy}}``
            from one identical inner run per set of hyperparameters.
        best_step: meta step of ``best`` (0: the initial hyperparameters).
    """

    spec: HyperSpec
    config: TuneConfig
    best: tuple[Tensor, ...]
    final: tuple[Tensor, ...]
    history: list[dict[str, Any]]
    evaluation: dict[str, dict[str, float]] = field(default_factory=dict)
    best_step: int = 0

    @property
    def hyperparameters(self) -> dict[str, dict[str, float | list[float]]]:
        """The best learning rate and momentum of each tensor, by name."""
        return self.spec.describe(self.best)

    @property
    def final_hyperparameters(self) -> dict[str, dict[str, float | list[float]]]:
        return self.spec.describe(self.final)

    def param_groups(self, model_or_params: nn.Module | Sequence[Tensor] | None = None) -> list[dict[str, Any]]:
        """The best hyperparameters as ``torch.optim.SGD`` param groups.

        Pass the model (or its trainable tensors in order) to get groups with
        ``"params"`` filled in: ``torch.optim.SGD(result.param_groups(model))``.
        """
        params: Sequence[Tensor] | None
        if isinstance(model_or_params, nn.Module):
            params = [p for p in model_or_params.parameters() if p.requires_grad]
        else:
            params = model_or_params
        return to_sgd_param_groups(self.spec, self.best, params)

    def to_json(self) -> dict[str, Any]:
        groups = self.param_groups() if self.spec.per != "element" else []
        return {
            "config": self.config.to_dict(),
            "num_hyperparameters": self.spec.num_hyperparameters,
            "best_step": self.best_step,
            "hyperparameters": self.hyperparameters,
            "final_hyperparameters": self.final_hyperparameters,
            "param_groups": groups,
            "evaluation": {
                k: {m: (v if _finite(v) else None) for m, v in ev.items()} for k, ev in self.evaluation.items()
            },
            "meta_loss": [r["meta_loss"] for r in self.history],
            "train_loss": [r["train_loss"] for r in self.history],
            "val_loss": [r["val_loss"] for r in self.history],
            "seconds": [r["seconds"] for r in self.history],
            "hypergrad_norm": [r["hypergrad_norm"] for r in self.history],
            "history": self.history,
        }


def _finite(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


class Tuner:
    """Stateful meta-optimisation of one :class:`InnerProblem`.

    Use :func:`tune` for the one-call API. The tuner's whole state is in
    :meth:`state_dict` (hyperparameters, Adam state, history, best so far,
    meta-lr scale), which is what checkpoints hold.
    """

    def __init__(
        self,
        problem: InnerProblem,
        config: TuneConfig,
        *,
        callbacks: Sequence[Callback] = (),
        x_test: Tensor | None = None,
        y_test: Tensor | None = None,
    ) -> None:
        if problem.per != config.per:
            raise ValueError(f"problem granularity {problem.per!r} differs from config.per {config.per!r}")
        if problem.parallel is not None and config.method in UNROLLED_METHODS:
            raise ValueError(
                f"method {config.method!r} is not supported with torch.distributed (it would need differentiable "
                f"collectives through all inner steps); use one of {', '.join(IMPLICIT_METHODS)}"
            )
        self.problem = problem
        self.config = config
        self.callbacks = list(callbacks)
        self.x_test, self.y_test = x_test, y_test
        self.spec = problem.spec
        dtype = problem.w0[0].dtype
        self.hparams = tuple(
            h.requires_grad_(True) for h in self.spec.init(config.init_lr, config.init_momentum, dtype)
        )
        self.optimizer = torch.optim.Adam(self.hparams, lr=config.meta_lr)
        self.history: list[dict[str, Any]] = []
        self.best = tuple(h.detach().clone() for h in self.hparams)
        self.best_loss = math.inf
        self.best_step = 0
        self.lr_scale = 1.0
        self.step_count = 0

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "hparams": [h.detach().clone() for h in self.hparams],
            "optimizer": self.optimizer.state_dict(),
            "history": self.history,
            "best": [b.clone() for b in self.best],
            "best_loss": self.best_loss if math.isfinite(self.best_loss) else None,
            "best_step": self.best_step,
            "lr_scale": self.lr_scale,
            "step_count": self.step_count,
            "torch_rng": torch.get_rng_state(),
            "config": self.config.to_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["hparams"]) != len(self.hparams):
            raise ValueError("checkpoint does not match this problem's hyperparameter layout")
        with torch.no_grad():
            for h, s in zip(self.hparams, state["hparams"]):
                if h.shape != s.shape:
                    raise ValueError("checkpoint does not match this problem's hyperparameter shapes")
                h.copy_(s)
        self.optimizer.load_state_dict(state["optimizer"])
        self.history = list(state["history"])
        self.best = tuple(b.clone() for b in state["best"])
        self.best_loss = math.inf if state["best_loss"] is None else float(state["best_loss"])
        self.best_step = int(state["best_step"])
        self.lr_scale = float(state["lr_scale"])
        self.step_count = int(state["step_count"])
        torch.set_rng_state(state["torch_rng"])

    # ------------------------------------------------------------------ pieces
    def _seed(self, salt: int) -> int:
        return self.config.seed * 1_000_003 + salt

    def _generator(self, salt: int) -> torch.Generator:
        return torch.Generator().manual_seed(self._seed(salt))

    def batches(self, salt: int) -> BatchSchedule:
        """The ``T`` minibatches (rows of ``B`` indices) of meta step ``salt`` (``-1``: the evaluation run).

        Seeded by ``(seed, salt)``: every method, trial and rank trains on the same batches.
        Drawn lazily, one epoch at a time (:class:`~hypergrad.inner.BatchSchedule`), so the
        index memory does not grow with ``T``.
        """
        return BatchSchedule(
            len(self.problem.x_train), self.config.batch_size, self.config.inner_steps, self._seed(salt)
        )

    def _meta_lr(self) -> float:
        base = self.config.meta_lr * self.lr_scale
        if self.config.lr_schedule == "cosine":
            frac = self.step_count / max(self.config.meta_steps, 1)
            return base * 0.5 * (1.0 + math.cos(math.pi * min(frac, 1.0)))
        return base

    @property
    def _meta_split(self) -> str:
        return "train" if self.config.meta_loss == "train" else "val"

    def meta_loss(self, weights: Sequence[Tensor]) -> Tensor:
        """The meta loss of inner weights: validation loss (default) or the whole training loss."""
        return self.problem.eval_loss(weights, self._meta_split)

    def hypergradient(
        self, hparams: Tree, batches: Sequence[Tensor] | Tensor, method: str | None = None, salt: int = 0
    ) -> tuple[Tree, Tree, Tensor, dict[str, Any]]:
        """One inner run and its hypergradient.

        Returns ``(grad, h_T, meta_loss, stats)``; ``grad`` is aligned with
        ``hparams``. For RBP methods, ``stats`` holds the solver statistics and
        the spread of the per-minibatch hypergradients.
        """
        cfg = self.config
        method = method or cfg.method
        problem = self.problem
        n = problem.num_tensors
        hp = tuple(h.detach() for h in hparams)
        stats: dict[str, Any] = {}
        start = time.perf_counter()
        if method in UNROLLED_METHODS:
            k = cfg.inner_steps if method == "bptt" else cfg.truncate
            prefix = cfg.inner_steps - k
            h_start = problem.train(hp, batches[:prefix]) if prefix > 0 else problem.initial_state()
            rows = iter(batches[prefix:])

            def step(state: Tree, p: Tree) -> Tree:
                idx = next(rows)
                return problem.step(state, p, problem.x_train[idx], problem.y_train[idx])

            def loss_fn(state: Tree) -> tuple[Tensor, tuple[Tensor, Tree]]:
                stats["inner_seconds"] = time.perf_counter() - start  # the T steps, before the backward
                loss = self.meta_loss(state[:n])
                return loss, (loss.detach(), tuple(s.detach() for s in state))

            grad, (meta_loss, h_t) = unrolled_grad(step, h_start, hp, k, loss_fn, truncate=None, has_aux=True)
            return grad, h_t, meta_loss, stats

        h_t = problem.train(hp, batches)
        stats["inner_seconds"] = time.perf_counter() - start
        # the meta loss and dL/dw_T chunk by chunk: no graph over the whole split
        meta_loss, gw = problem.eval_loss_and_grad(h_t[:n], self._meta_split)
        if not (tree_isfinite(h_t) and tree_isfinite(gw) and bool(torch.isfinite(meta_loss))):
            # The inner training blew up: there is no fixed point to differentiate. The caller sees a
            # non-finite meta loss and applies the divergence policy; nothing non-finite is returned.
            nan = torch.full((), float("nan"), dtype=meta_loss.dtype)
            stats["hypergrad_spread"] = float("nan")
            stats["solver"] = {"method": method, "skipped": "non-finite inner state"}
            return tuple(torch.zeros_like(h) for h in hp), h_t, nan, stats
        state_grad = tuple(gw) + tuple(torch.zeros_like(v) for v in h_t[n:])
        hyper_sets = self.hyper_batches(salt)
        par = problem.parallel
        mine = hyper_sets[par.rank :: par.world_size] if par is not None else hyper_sets
        grads, infos = [], []
        if cfg.batch_hyper and par is None and len(mine) > 1 and method in STACKABLE_METHODS:
            grads, info = self._stacked_hypergradients(h_t, hp, state_grad, mine, method)
            infos.append(info)
            mine = []
        for x, y in mine:

            def step(state: Tree, p: Tree, x: Tensor = x, y: Tensor = y) -> Tree:
                return problem.step(state, p, x, y)

            g, info = fixed_point_grad(
                step,
                h_t,
                hp,
                state_grad,
                method=method,
                max_iter=cfg.truncate,
                stop_on_growth=cfg.stop_on_growth and method == "neumann",
            )
            grads.append(g)
            infos.append(info)
        count = len(hyper_sets)
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
        if count > 1:
            var = tuple(((q_ - count * m * m) / (count - 1)).clamp_min(0) for q_, m in zip(squares, mean))
            stats["hypergrad_spread"] = tree_norm(tuple(v.sqrt() for v in var)) / max(tree_norm(mean), 1e-30)
        else:
            stats["hypergrad_spread"] = 0.0
        # A Neumann series cut short by stop_on_growth is the safeguard at work: the partial sum
        # up to the first growing term is kept and logged ("growth" in stop_reasons), not backed off.
        diverged = any(i.diverged and i.stop_reason != "growth" for i in infos)
        if par is not None:
            diverged = par.any(diverged)
        finite_rho = [i.spectral_radius for i in infos if not math.isnan(i.spectral_radius)]
        stats["solver"] = {
            "method": method,
            "iterations": float(sum(i.iterations for i in infos) / max(len(infos), 1)),
            "residual": max((i.residual for i in infos), default=0.0),
            "converged": all(i.converged for i in infos),
            "diverged": diverged,
            "stop_reasons": sorted({i.stop_reason for i in infos}),
            "spectral_radius": max(finite_rho) if finite_rho else float("nan"),
        }
        return mean, h_t, meta_loss.detach(), stats

    def _stacked_hypergradients(
        self, h_t: Tree, hp: Tree, state_grad: Tree, batches: list[tuple[Tensor, Tensor]], method: str
    ) -> tuple[list[Tree], Any]:
        """Per-minibatch hypergradients from ONE solve of the stacked (block-diagonal) system."""
        problem, cfg = self.problem, self.config
        m = len(batches)
        xs = torch.stack([x for x, _ in batches])
        ys = torch.stack([y for _, y in batches])

        def stack(tree: Tree) -> Tree:
            return tuple(t.unsqueeze(0).expand(m, *t.shape).clone() for t in tree)

        def step(state: Tree, p: Tree) -> Tree:
            return problem.step_batched(state, p, xs, ys)

        g, info = fixed_point_grad(
            step, stack(h_t), stack(hp), stack(state_grad), method=method, max_iter=cfg.truncate,
            stop_on_growth=cfg.stop_on_growth and method == "neumann", blocks=True,
        )
        return [tuple(t[i] for t in g) for i in range(m)], info

    def hyper_batches(self, salt: int) -> list[tuple[Tensor, Tensor]]:
        """The ``M`` minibatches on which the RBP step map is linearised at meta step ``salt``.

        Drawn independently of the inner run's batches (``fixed_point_batch="full"``:
        the whole training set once, the paper code's setting).
        """
        problem, cfg = self.problem, self.config
        if cfg.fixed_point_batch == "full":
            return [(problem.x_train, problem.y_train)]
        gen = self._generator(salt * 7919 + 17)
        n_train = len(problem.x_train)
        out = []
        for _ in range(cfg.hyper_batches):
            idx = torch.randperm(n_train, generator=gen)[: cfg.batch_size]
            out.append((problem.x_train[idx], problem.y_train[idx]))
        return out

    def evaluate(self, hparams: Tree, salt: int = -1) -> dict[str, float]:
        """Train once with ``hparams`` (a fixed batch order) and report losses/accuracy."""
        problem = self.problem
        h_t = problem.train(hparams, self.batches(salt))
        w = h_t[: problem.num_tensors]
        with torch.no_grad():
            out = {
                "val_loss": float(problem.eval_loss(w, "val")),
                "train_loss": float(problem.eval_loss(w, "train")),
            }
            if self.x_test is not None and self.y_test is not None:
                out["test_loss"] = float(problem.loss_fn(problem.forward(w, self.x_test), self.y_test))
                out["test_accuracy"] = problem.accuracy(w, self.x_test, self.y_test)
            out["val_accuracy"] = problem.accuracy(w, problem.x_val, problem.y_val)
        return out

    # ------------------------------------------------------------------ the loop
    def meta_step(self) -> dict[str, Any]:
        """Run one meta step and return its record (also appended to ``history``)."""
        cfg = self.config
        t0 = time.perf_counter()
        k = self.step_count
        current = tuple(h.detach().clone() for h in self.hparams)
        batches = self.batches(k)
        events: list[str] = []
        method = cfg.method
        grad, h_t, meta_loss, stats = self.hypergradient(current, batches, method, salt=k)
        n = self.problem.num_tensors
        with torch.no_grad():
            train_loss = float(self.problem.eval_loss(h_t[:n], "train")) if cfg.meta_loss == "val" else float(
                meta_loss
            )
            val_loss = float(meta_loss) if cfg.meta_loss == "val" else float(self.problem.eval_loss(h_t[:n], "val"))
        gnorm = tree_norm(grad)
        loss_ok = _finite(val_loss) and _finite(train_loss) and _finite(float(meta_loss))
        first = self.history[0]["val_loss"] if self.history else None
        if not loss_ok:
            events.append("nonfinite_loss")
        elif cfg.blowup_ratio is not None and first is not None and val_loss > cfg.blowup_ratio * first:
            events.append("loss_blowup")
        elif not _finite(gnorm):
            events.append("nonfinite_hypergrad")
        elif gnorm > cfg.explode_threshold:
            events.append("exploding_hypergrad")
        if stats.get("solver", {}).get("diverged"):
            events.append("solver_diverged")
        handled: set[str] = set()
        if events and cfg.on_divergence == "fallback" and method == "rbp" and loss_ok:
            grad, _, _, stats = self.hypergradient(current, batches, "neumann", salt=k)
            gnorm = tree_norm(grad)
            events.append("fallback_neumann")
            neumann_diverged = bool(stats.get("solver", {}).get("diverged"))
            if _finite(gnorm) and gnorm <= cfg.explode_threshold and not neumann_diverged:
                handled = {"solver_diverged", "exploding_hypergrad", "nonfinite_hypergrad", "fallback_neumann"}
        # Track the best hyperparameters by validation loss (of the hparams evaluated this step).
        if loss_ok and val_loss < self.best_loss:
            self.best_loss, self.best, self.best_step = val_loss, current, k
        apply = True
        action = "update"
        bad = [e for e in events if e not in handled and e != "fallback_neumann"]
        if handled:
            action = "fallback"
        if bad:
            policy = cfg.on_divergence
            if policy == "stop":
                self._record(k, t0, current, val_loss, train_loss, float(meta_loss), gnorm, stats, events, "stop")
                raise DivergenceError(f"meta step {k}: {', '.join(bad)} (on_divergence='stop')")
            if policy == "clip" and bad == ["exploding_hypergrad"]:
                target = cfg.clip if cfg.clip is not None else cfg.explode_threshold
                scale = min(1.0, target / gnorm)
                grad = tuple(g * scale for g in grad)
                action = "clipped"
            elif policy == "backoff":
                with torch.no_grad():
                    for h, b in zip(self.hparams, self.best):
                        h.copy_(b)
                self.lr_scale *= 0.5
                apply, action = False, "backoff"
            else:
                apply, action = False, "skipped"
        if apply:
            if cfg.clip is not None and gnorm > cfg.clip and action == "update":
                grad = tuple(g * (cfg.clip / gnorm) for g in grad)
                action = "clipped"
            if cfg.normalize and gnorm > 0:
                grad = tuple(g / tree_norm(grad) for g in grad)
            for group in self.optimizer.param_groups:
                group["lr"] = self._meta_lr()
            for h, g in zip(self.hparams, grad):
                h.grad = g.to(h.dtype)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.step_count += 1
        record = self._record(k, t0, current, val_loss, train_loss, float(meta_loss), gnorm, stats, events, action)
        for cb in self.callbacks:
            if hasattr(cb, "on_meta_step"):
                cb.on_meta_step(self, record)
        return record

    def _record(
        self,
        k: int,
        t0: float,
        hparams: Tree,
        val_loss: float,
        train_loss: float,
        meta_loss: float,
        gnorm: float,
        stats: dict[str, Any],
        events: list[str],
        action: str,
    ) -> dict[str, Any]:
        def clean(x: float) -> float | None:
            return float(x) if _finite(x) else None

        record = {
            "step": k,
            "meta_loss": clean(meta_loss),
            "val_loss": clean(val_loss),
            "train_loss": clean(train_loss),
            "hypergrad_norm": clean(gnorm),
            "hypergrad_spread": clean(stats.get("hypergrad_spread", float("nan"))),
            "solver": {
                key: (clean(v) if isinstance(v, float) else v) for key, v in stats.get("solver", {}).items()
            },
            "events": events,
            "action": action,
            "meta_lr": self._meta_lr(),
            "seconds": time.perf_counter() - t0,
            "inner_seconds": stats.get("inner_seconds"),
            "hyperparameters": self.spec.describe(hparams),  # those this step evaluated
        }
        self.history.append(record)
        return record

    def finish(self) -> TuneResult:
        """Evaluate the initial, best and final hyperparameters on one identical inner run."""
        initial = tuple(h.detach() for h in self.spec.init(self.config.init_lr, self.config.init_momentum,
                                                            self.problem.w0[0].dtype))
        final = tuple(h.detach().clone() for h in self.hparams)
        evaluation = {"initial": self.evaluate(initial), "best": self.evaluate(self.best)}
        evaluation["final"] = self.evaluate(final)
        init_val, final_val = evaluation["initial"]["val_loss"], evaluation["final"]["val_loss"]
        blown = not _finite(final_val) or (
            self.config.blowup_ratio is not None and final_val > self.config.blowup_ratio * init_val
        )
        if blown and self.config.on_divergence != "stop":
            # The last update was never guarded by a meta step: apply the guard here.
            logger.warning("after the last meta step: validation loss %.4g blew up; restoring the best", final_val)
            with torch.no_grad():
                for h, b in zip(self.hparams, self.best):
                    h.copy_(b)
            final = tuple(b.clone() for b in self.best)
            evaluation["final"] = dict(evaluation["best"], reverted=1.0)
        # On the common evaluation run, the exported hyperparameters must be no worse than the
        # initial ones (the loop compared losses on different minibatch orders), and the final ones,
        # never evaluated during the loop, may be the best.
        def val(key: str) -> float:
            v = evaluation[key]["val_loss"]
            return v if _finite(v) else math.inf

        if val("initial") < val("best"):
            self.best, self.best_step = initial, 0
            evaluation["best"] = evaluation["initial"]
        if val("final") < val("best"):
            self.best, self.best_step = final, len(self.history)
            evaluation["best"] = evaluation["final"]
        result = TuneResult(
            spec=self.spec,
            config=self.config,
            best=tuple(b.clone() for b in self.best),
            final=final,
            history=self.history,
            evaluation=evaluation,
            best_step=self.best_step,
        )
        for cb in self.callbacks:
            if hasattr(cb, "on_end"):
                cb.on_end(self, result)
        return result

    def run(self, *, on_checkpoint: Callable[[Tuner], None] | None = None) -> TuneResult:
        """Run the remaining meta steps, then :meth:`finish`."""
        for cb in self.callbacks:
            if hasattr(cb, "on_start"):
                cb.on_start(self)
        while self.step_count < self.config.meta_steps:
            self.meta_step()
            if on_checkpoint is not None:
                on_checkpoint(self)
        return self.finish()


def tune(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    train_data: tuple[Tensor, Tensor],
    val_data: tuple[Tensor, Tensor],
    *,
    test_data: tuple[Tensor, Tensor] | None = None,
    callbacks: Sequence[Callback] = (),
    **config: Any,
) -> TuneResult:
    """Tune per-tensor learning rates and momenta of ``model`` for SGD with momentum.

    Args:
        model: the user's module; its current weights are the inner runs' start.
        loss_fn: ``loss_fn(outputs, targets) -> scalar``.
        train_data: ``(x, y)`` for the inner training.
        val_data: ``(x, y)`` for the validation meta loss and best tracking.
        test_data: optional ``(x, y)`` reported in ``result.evaluation``.
        callbacks: observers (e.g. :class:`hypergrad.callbacks.TensorBoardLogger`).
        **config: fields of :class:`TuneConfig` (``method``, ``inner_steps``, ...).

    Returns:
        A :class:`TuneResult`; ``torch.optim.SGD(result.param_groups(model))``
        trains with the tuned hyperparameters.

    Example:
        >>> import torch, torch.nn.functional as F, hypergrad
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <...>
        >>> x, y = torch.randn(256, 8), torch.randint(0, 3, (256,))
        >>> model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
        >>> result = hypergrad.tune(model, F.cross_entropy, (x, y), (x, y), method="neumann",
        ...                         inner_steps=20, meta_steps=3, batch_size=32)
        >>> sorted(result.hyperparameters)[:1]
        ['0.bias']
    """
    cfg = tune_config(config)  # TypeError naming unknown keywords; ConfigError (a ValueError) for bad values
    problem = InnerProblem(
        model, loss_fn, train_data[0], train_data[1], val_data[0], val_data[1],
        batch_size=cfg.batch_size, per=cfg.per,
    )
    x_test, y_test = test_data if test_data is not None else (None, None)
    tuner = Tuner(problem, cfg, callbacks=callbacks, x_test=x_test, y_test=y_test)
    return tuner.run()
