r"""Parametrisation of per-tensor learning rates and momenta (paper §5.3).

The tuned quantities are unconstrained: :math:`\alpha = \exp(\text{log\_lr})` and
:math:`\beta = \operatorname{sigmoid}(\text{logit\_momentum})`. A *group* shares
one pair; the granularity ``per`` decides the groups:

* ``"tensor"`` (default): one pair per parameter tensor (the paper's 16 for a
  784-50-50-50-10 MLP: 4 weights + 4 biases, 2 hyperparameters each);
* ``"layer"``: one pair per module (weight and bias share);
* ``"global"``: one pair for the whole model;
* ``"element"``: one pair per scalar weight (shaped like the tensor).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["GRANULARITIES", "HyperSpec", "group_names", "to_sgd_param_groups"]

GRANULARITIES = ("tensor", "layer", "global", "element")


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


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
    """

    param_names: tuple[str, ...]
    param_shapes: tuple[torch.Size, ...]
    per: str
    groups: tuple[str, ...]
    group_of: tuple[int, ...]

    @classmethod
    def build(cls, named_shapes: Sequence[tuple[str, torch.Size]], per: str = "tensor") -> HyperSpec:
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
        )

    @property
    def num_groups(self) -> int:
        return len(self.groups)

    @property
    def num_hyperparameters(self) -> int:
        """Total count of tuned scalars (learning rates plus momenta)."""
        if self.per == "element":
            return 2 * sum(math.prod(s) for s in self.param_shapes)
        return 2 * self.num_groups

    def init(
        self, lr: float, momentum: float, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
    ) -> tuple[Tensor, ...]:
        """Unconstrained hyperparameters ``(log_lr_0..log_lr_G-1, logit_mom_0..logit_mom_G-1)`` on ``device``."""
        if not (lr > 0 and math.isfinite(lr)):
            raise ValueError(f"initial learning rate must be a positive finite number, got {lr!r}")
        if not 0.0 < momentum < 1.0:
            raise ValueError(f"initial momentum must lie in (0, 1), got {momentum!r}")
        if self.per == "element":
            shapes = list(self.param_shapes)
        else:
            shapes = [torch.Size([])] * self.num_groups
        log_lr = tuple(torch.full(s, math.log(lr), dtype=dtype, device=device) for s in shapes)
        logit_m = tuple(torch.full(s, _logit(momentum), dtype=dtype, device=device) for s in shapes)
        return log_lr + logit_m

    def split(self, hparams: Sequence[Tensor]) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
        g = len(hparams) // 2
        return tuple(hparams[:g]), tuple(hparams[g:])

    def per_tensor(self, hparams: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        r"""Learning rates :math:`\alpha_i` and momenta :math:`\beta_i` for each parameter tensor."""
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
        """
        lrs, moms = self.per_tensor([h.detach() for h in hparams])
        out: dict[str, dict[str, float | list[float]]] = {}
        for name, a, b in zip(self.param_names, lrs, moms):
            a64, b64 = a.double(), b.double()
            sgd_lr = a64 * (1.0 - b64)
            if a.dim() == 0:
                out[name] = {"lr": float(sgd_lr), "momentum": float(b64), "alpha": float(a64)}
            else:
                out[name] = {"lr_mean": float(sgd_lr.mean()), "momentum_mean": float(b64.mean()),
                             "alpha_mean": float(a64.mean())}
        return out


def to_sgd_param_groups(
    spec: HyperSpec, hparams: Sequence[Tensor], params: Sequence[Tensor] | None = None
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
    """
    if spec.per == "element":
        raise ValueError("per='element' learning rates cannot be expressed as torch.optim.SGD param groups")
    lrs, moms = spec.per_tensor([h.detach() for h in hparams])
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
