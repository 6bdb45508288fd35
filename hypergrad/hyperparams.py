r"""Parametrisation of per-tensor learning rates and momenta (paper §5.3).

The tuned quantities are unconstrained: :math:`\alpha = \exp(\text{log\_lr})` and
:math:`\beta = \operatorname{sigmoid}(\text{logit\_momentum})`. A *group* shares
one pair; the granularity ``per`` decides the groups:

* ``"tensor"`` (default): one pair per parameter tensor (the paper's 16 for a
  784-50-50-50-10 MLP: 4 weights + 4 biases, 2 hyperparameters each);
* ``"layer"``: one pair per module (weight and bias share);
* ``"global"``: one pair for the whole model;
* ``"element"``: one pair per scalar weight (shaped like the tensor).

*Schedules* (``segments=S``): every hyperparameter tensor gains a leading axis of ``S``
piecewise-constant values over the ``T`` inner steps; segment ``s`` covers the steps
:math:`[sT/S, (s+1)T/S)` (:func:`segment_index`). :class:`SGDSchedule` exports a schedule to
``torch.optim.SGD`` exactly, as :func:`to_sgd_param_groups` exports constant values.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

__all__ = [
    "GRANULARITIES",
    "HyperSpec",
    "SGDSchedule",
    "group_names",
    "segment_bounds",
    "segment_index",
    "to_sgd_param_groups",
]

GRANULARITIES = ("tensor", "layer", "global", "element")


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def _check_segments(segments: int) -> int:
    if isinstance(segments, bool) or not isinstance(segments, int) or segments < 1:
        raise ValueError(f"segments must be an integer >= 1, got {segments!r}")
    return segments


def segment_index(num_steps: int, segments: int) -> tuple[int, ...]:
    r"""The segment of every inner step: step :math:`t` lies in segment :math:`\lfloor tS/T \rfloor`.

    Segment ``s`` covers the steps :math:`[sT/S, (s+1)T/S)`; with ``T`` a multiple of ``S``
    every segment has ``T/S`` steps, otherwise their lengths differ by at most one.

    Raises:
        ValueError: ``num_steps`` or ``segments`` is not an integer >= 1, or ``segments > num_steps``
            (a segment without a step would have no gradient).
    """
    _check_segments(segments)
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")
    if segments > num_steps:
        raise ValueError(f"segments ({segments}) must not exceed the number of inner steps ({num_steps})")
    return tuple(t * segments // num_steps for t in range(num_steps))


def segment_bounds(num_steps: int, segments: int) -> tuple[tuple[int, int], ...]:
    """``(start, stop)`` of every segment's steps (:func:`segment_index`): e.g. to train a schedule
    segment by segment, ``problem.train(spec.at_segment(hp, s), batches[start:stop], state=h)``."""
    seg = segment_index(num_steps, segments)
    starts = [t for t in range(num_steps) if t == 0 or seg[t] != seg[t - 1]]
    return tuple(zip(starts, [*starts[1:], num_steps]))


def group_names(param_names: Sequence[str], per: str) -> list[str]:
    """The group each parameter tensor belongs to, by granularity ``per``."""
    if per not in GRANULARITIES:
        raise ValueError(f"unknown granularity per={per!r}; expected one of {', '.join(GRANULARITIES)}")
    if per in ("tensor", "element"):
        return list(param_names)
    if per == "layer":
        return [n.rsplit(".", 1)[0] if "." in n else n for n in param_names]
    return ["global"] * len(param_names)


@dataclass(frozen=True)
class HyperSpec:
    """How hyperparameter tensors map onto parameter tensors.

    Attributes:
        param_names: names of the inner model's trainable tensors, in order.
        param_shapes: their shapes.
        per: the granularity.
        groups: ordered unique group names.
        group_of: for each parameter tensor, the index of its group.
        segments: ``S``, piecewise-constant values per hyperparameter over the inner run
            (1: constant, the tensors have no segment axis; ``S > 1``: each tensor has a
            leading axis of length ``S``, see :func:`segment_index`).
    """

    param_names: tuple[str, ...]
    param_shapes: tuple[torch.Size, ...]
    per: str
    groups: tuple[str, ...]
    group_of: tuple[int, ...]
    segments: int = 1

    @classmethod
    def build(
        cls, named_shapes: Sequence[tuple[str, torch.Size]], per: str = "tensor", *, segments: int = 1
    ) -> HyperSpec:
        names = [n for n, _ in named_shapes]
        if not names:
            raise ValueError("the model has no trainable parameters")
        gnames = group_names(names, per)
        groups: list[str] = []
        for g in gnames:
            if g not in groups:
                groups.append(g)
        return cls(
            param_names=tuple(names),
            param_shapes=tuple(torch.Size(s) for _, s in named_shapes),
            per=per,
            groups=tuple(groups),
            group_of=tuple(groups.index(g) for g in gnames),
            segments=_check_segments(segments),
        )

    def with_segments(self, segments: int) -> HyperSpec:
        """The same layout with ``segments`` piecewise-constant values per hyperparameter."""
        return dataclasses.replace(self, segments=_check_segments(segments))

    @property
    def num_groups(self) -> int:
        return len(self.groups)

    @property
    def num_hyperparameters(self) -> int:
        """Total count of tuned scalars (learning rates plus momenta, times the segments)."""
        if self.per == "element":
            return 2 * self.segments * sum(math.prod(s) for s in self.param_shapes)
        return 2 * self.segments * self.num_groups

    def segment_of(self, num_steps: int) -> tuple[int, ...] | None:
        """The segment of each of ``num_steps`` inner steps (:func:`segment_index`); ``None`` without a
        schedule (``segments == 1``: no segment axis), as ``forward_grad``/``gradient`` take ``segment_of``."""
        seg = segment_index(num_steps, self.segments)
        return None if self.segments == 1 else seg

    def init(
        self, lr: float, momentum: float, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
    ) -> tuple[Tensor, ...]:
        """Unconstrained hyperparameters ``(log_lr_0..log_lr_G-1, logit_mom_0..logit_mom_G-1)`` on ``device``.

        With ``segments = S > 1`` each tensor has a leading axis of ``S`` equal values.
        """
        if not (lr > 0 and math.isfinite(lr)):
            raise ValueError(f"initial learning rate must be a positive finite number, got {lr!r}")
        if not 0.0 < momentum < 1.0:
            raise ValueError(f"initial momentum must lie in (0, 1), got {momentum!r}")
        if self.per == "element":
            shapes = list(self.param_shapes)
        else:
            shapes = [torch.Size([])] * self.num_groups
        if self.segments > 1:
            shapes = [torch.Size([self.segments, *s]) for s in shapes]
        log_lr = tuple(torch.full(s, math.log(lr), dtype=dtype, device=device) for s in shapes)
        logit_m = tuple(torch.full(s, _logit(momentum), dtype=dtype, device=device) for s in shapes)
        return log_lr + logit_m

    def split(self, hparams: Sequence[Tensor]) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
        g = len(hparams) // 2
        return tuple(hparams[:g]), tuple(hparams[g:])

    def at_segment(self, hparams: Sequence[Tensor], segment: int) -> tuple[Tensor, ...]:
        """The constant hyperparameters of one segment (``hparams`` itself when ``segments == 1``).

        Differentiable: a step map given ``at_segment(hparams, s)`` sends its gradient to
        slice ``s`` of every tensor.
        """
        if isinstance(segment, bool) or not isinstance(segment, int) or not 0 <= segment < self.segments:
            raise ValueError(f"segment must be an integer in [0, {self.segments}), got {segment!r}")
        return tuple(hparams) if self.segments == 1 else tuple(h[segment] for h in hparams)

    def per_tensor(
        self, hparams: Sequence[Tensor], *, segment: int | None = None
    ) -> tuple[list[Tensor], list[Tensor]]:
        r"""Learning rates :math:`\alpha_i` and momenta :math:`\beta_i` for each parameter tensor.

        A schedule (``segments > 1``) needs ``segment``: the values in force at inner step
        ``t`` are those of ``segment = segment_index(T, spec.segments)[t]``.
        """
        if self.segments > 1 or segment is not None:
            if self.segments > 1 and segment is None:
                raise ValueError(f"a schedule of {self.segments} segments needs segment= (see HyperSpec.segment_of)")
            hparams = self.at_segment(hparams, segment)
        log_lr, logit_m = self.split(hparams)
        if self.per == "element":
            return [t.exp() for t in log_lr], [torch.sigmoid(t) for t in logit_m]
        lrs = [log_lr[g].exp() for g in self.group_of]
        moms = [torch.sigmoid(logit_m[g]) for g in self.group_of]
        return lrs, moms

    def describe(self, hparams: Sequence[Tensor]) -> dict[str, dict[str, float | list[float]]]:
        r"""``{tensor name: {"lr": alpha*(1-beta), "momentum": beta, "alpha": alpha}}`` (``*_mean`` for per-element).

        ``lr`` is the learning rate of ``torch.optim.SGD`` (:func:`to_sgd_param_groups`), the
        number the CLI prints; ``alpha`` is :math:`\alpha` of the update :math:`w' = w + \alpha v'`.
        A schedule (``segments > 1``) gives each a list of ``S`` values, one per segment.
        """
        hp = [h.detach() for h in hparams]
        per_segment = [self.per_tensor(hp, segment=s if self.segments > 1 else None) for s in range(self.segments)]
        out: dict[str, dict[str, float | list[float]]] = {}
        for i, name in enumerate(self.param_names):
            values: dict[str, list[float]] = {}
            for lrs, moms in per_segment:
                a64, b64 = lrs[i].double(), moms[i].double()
                mean = "" if a64.dim() == 0 else "_mean"
                for key, x in (("lr", a64 * (1.0 - b64)), ("momentum", b64), ("alpha", a64)):
                    values.setdefault(key + mean, []).append(float(x.mean()))
            out[name] = {k: v[0] for k, v in values.items()} if self.segments == 1 else dict(values)
        return out


def to_sgd_param_groups(
    spec: HyperSpec, hparams: Sequence[Tensor], params: Sequence[Tensor] | None = None, *, segment: int | None = None
) -> list[dict[str, object]]:
    r"""Export as ``torch.optim.SGD`` parameter groups.

    The inner update :math:`v' = \beta v - (1-\beta) g,\ w' = w + \alpha v'` is exactly
    ``torch.optim.SGD`` with ``momentum = beta``, ``lr = alpha * (1 - beta)`` and
    ``dampening = 0`` (its buffer is :math:`-v/(1-\beta)`). One group per tensor.

    Args:
        spec: the hyperparameter layout.
        hparams: the unconstrained hyperparameters.
        params: the model's parameter tensors in ``spec.param_names`` order; when
            given, each group carries ``"params": [tensor]`` ready for ``SGD``.
        segment: for a schedule (``spec.segments > 1``), the segment whose values the groups
            carry (default 0, the first); :class:`SGDSchedule` then sets them step by step.
    """
    if spec.per == "element":
        raise ValueError("per='element' learning rates cannot be expressed as torch.optim.SGD param groups")
    if spec.segments > 1 and segment is None:
        segment = 0
    lrs, moms = spec.per_tensor([h.detach() for h in hparams], segment=segment)
    if params is not None and len(params) != len(spec.param_names):
        raise ValueError(f"expected {len(spec.param_names)} parameter tensors, got {len(params)}")
    groups: list[dict[str, object]] = []
    for i, (name, a, b) in enumerate(zip(spec.param_names, lrs, moms)):
        a64, b64 = float(a.double()), float(b.double())
        group: dict[str, object] = {
            "name": name,
            "lr": a64 * (1.0 - b64),
            "momentum": b64,
            "dampening": 0.0,
            "weight_decay": 0.0,
            "nesterov": False,
        }
        if params is not None:
            group["params"] = [params[i]]
        groups.append(group)
    return groups


class SGDSchedule(LRScheduler):
    r"""A tuned schedule (``spec.segments = S``) as a ``torch.optim`` scheduler for ``SGD``.

    Stepped once after every ``optimizer.step()``, it sets each group's ``lr`` and
    ``momentum`` for the next inner step :math:`t`, so that ``torch.optim.SGD`` (dampening 0)
    on the groups of :func:`to_sgd_param_groups` takes exactly the inner loop's steps
    :math:`v_{t+1} = \beta_t v_t - (1-\beta_t) g_t,\ w_{t+1} = w_t + \alpha_t v_{t+1}` with
    :math:`(\alpha_t, \beta_t)` of segment :math:`\lfloor tS/T \rfloor`.

    The constant export's convention, ``lr = alpha (1 - beta)`` and SGD's buffer
    :math:`b_{t+1} = -v_{t+1}/(1-\beta_t)`, holds at every step. Then
    :math:`b_{t+1} = \mu_t b_t + g_t` with

    .. math::
        \mu_t = \beta_t \frac{1 - \beta_{t-1}}{1 - \beta_t},

    which is :math:`\beta_t` inside a segment and rescales the buffer at the first step of a
    new segment, where :math:`\beta` changes (the ``momentum`` a group shows there is this
    :math:`\mu_t`, not :math:`\beta_t`; it may exceed 1). At :math:`t = 0` SGD's buffer
    starts as :math:`g_0`, which is :math:`-v_1/(1-\beta_0)` from :math:`v_0 = 0`. After the
    last of the ``num_steps`` steps the last segment's values stay in force.

    Args:
        optimizer: a ``torch.optim.SGD`` over one group per parameter tensor, in
            ``spec.param_names`` order (``SGD(to_sgd_param_groups(spec, hparams, params))``),
            with ``dampening = 0`` and a zero (unset) momentum buffer.
        spec: the layout, with ``spec.segments`` segments (1: the constant export, stepped).
        hparams: the unconstrained hyperparameters, each with a leading axis of ``S``.
        num_steps: ``T``, the inner steps the schedule spans (``T >= S``).
        last_epoch: as in ``LRScheduler`` (``-1``: start at step 0).

    Example:
        >>> import torch
        >>> from hypergrad.hyperparams import HyperSpec, SGDSchedule, to_sgd_param_groups
        >>> w = torch.zeros(3, requires_grad=True)
        >>> spec = HyperSpec.build([("w", w.shape)], segments=2)
        >>> hp = spec.init(0.1, 0.5)
        >>> opt = torch.optim.SGD(to_sgd_param_groups(spec, hp, [w]))
        >>> sched = SGDSchedule(opt, spec, hp, num_steps=10)
        >>> for _ in range(10):
        ...     opt.zero_grad(); (w - 1).square().sum().backward(); opt.step(); sched.step()
    """

    def __init__(
        self, optimizer: Optimizer, spec: HyperSpec, hparams: Sequence[Tensor], num_steps: int, last_epoch: int = -1
    ) -> None:
        if spec.per == "element":
            raise ValueError("per='element' learning rates cannot be expressed as torch.optim.SGD param groups")
        if len(optimizer.param_groups) != len(spec.param_names):
            raise ValueError(f"the optimizer has {len(optimizer.param_groups)} param groups; expected one per "
                             f"parameter tensor ({len(spec.param_names)}), as to_sgd_param_groups makes them")
        for i, group in enumerate(optimizer.param_groups):
            if group.get("dampening", 0.0) != 0.0 or group.get("nesterov", False):
                raise ValueError(f"param group {i} must have dampening=0 and nesterov=False")
        self.segment_of = segment_index(num_steps, spec.segments)
        hp = [h.detach() for h in hparams]
        values = [spec.per_tensor(hp, segment=s if spec.segments > 1 else None) for s in range(spec.segments)]
        alpha = [[float(a.double()) for a in lrs] for lrs, _ in values]  # [segment][tensor]
        beta = [[float(b.double()) for b in moms] for _, moms in values]
        self.lrs: list[list[float]] = [[a * (1.0 - b) for a, b in zip(alpha[s], beta[s])] for s in self.segment_of]
        # [step][tensor]: beta inside a segment, the rescaled mu_t at a segment's first step
        self.momenta: list[list[float]] = []
        for t, s in enumerate(self.segment_of):
            prev = self.segment_of[t - 1] if t > 0 else s
            self.momenta.append(list(beta[s]) if prev == s else
                                [b * (1.0 - b0) / (1.0 - b) for b, b0 in zip(beta[s], beta[prev])])
        self.lrs.append([a * (1.0 - b) for a, b in zip(alpha[-1], beta[-1])])  # after the last step
        self.momenta.append(list(beta[-1]))
        super().__init__(optimizer, last_epoch)

    def _index(self) -> int:
        return min(max(self.last_epoch, 0), len(self.lrs) - 1)

    def get_lr(self) -> list[float]:
        """The groups' ``lr`` for inner step ``last_epoch``: :math:`\\alpha_t (1 - \\beta_t)`."""
        return list(self.lrs[self._index()])

    def step(self, epoch: int | None = None) -> None:
        """Advance to the next inner step: set every group's ``lr`` and ``momentum`` (:math:`\\mu_t`)."""
        super().step(epoch)
        for group, mu in zip(self.optimizer.param_groups, self.momenta[self._index()]):
            group["momentum"] = mu
