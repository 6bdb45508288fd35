r"""The GGNN-style graph network of §5.2 as a map for hypergrad's core.

Node states start at the (PCA-reduced) features, :math:`h_0 = X`. One propagation step
(Li et al., 2016) sums the neighbours' states and feeds the sum to a GRU cell,

.. math::
    h_{t+1} = F(h_t, w) = \mathrm{GRU}(A h_t, h_t; w),

which is the map of Eq. (1) with state ``(h,)`` and parameters
``w = (W_ih, W_hh, b_ih, b_hh)``; the graph ``A`` lives in the closure. After ``T``
steps a linear layer gives the class logits, and the loss is the cross-entropy on the
training nodes.

**Seeds as one program.** The seeds of a table share the graph and differ in their weights
and split, so every tensor may carry a leading axis of ``S`` seeds (:func:`stack_params`):
``h`` is ``(S, N, H)``, the GRU weights ``(S, 3H, H)``, the messages one sparse product
``A [h_1 ... h_S]`` on an ``(N, S*H)`` matrix and each GRU step batched matmuls. Seed ``s``
of the stack computes what the one-seed map computes for it (up to round-off).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from hypergrad.data.planetoid import PlanetoidGraph

__all__ = [
    "GNNParams",
    "SymmetricSpMM",
    "gru_cell",
    "init_params",
    "make_step",
    "pca_features",
    "readout",
    "sparse_adjacency",
    "stack_params",
]

Step = Callable[[tuple[Tensor, ...], tuple[Tensor, ...]], tuple[Tensor, ...]]


class GNNParams(NamedTuple):
    """The learnable tensors: the GRU update (``gru``, the map's parameters) and the readout."""

    gru: tuple[Tensor, Tensor, Tensor, Tensor]  # W_ih (3H, H), W_hh (3H, H), b_ih (3H,), b_hh (3H,)
    out: tuple[Tensor, Tensor]  # W_out (C, H), b_out (C,)

    def all(self) -> tuple[Tensor, ...]:
        return (*self.gru, *self.out)

    def to(self, device: torch.device | str) -> GNNParams:
        """The same values on ``device``, as new leaves that require grad."""

        def move(ts: tuple[Tensor, ...]) -> tuple:
            return tuple(t.detach().to(device).requires_grad_(True) for t in ts)

        return GNNParams(gru=move(self.gru), out=move(self.out))


def init_params(hidden: int, num_classes: int, *, generator: torch.Generator) -> GNNParams:
    """Kaiming-normal weights (std ``sqrt(2 / H)``) and zero biases, as the paper's code does."""
    if hidden < 1 or num_classes < 2:
        raise ValueError(f"need hidden >= 1 and num_classes >= 2, got {hidden} and {num_classes}")
    std = math.sqrt(2.0 / hidden)

    def normal(*shape: int) -> Tensor:
        return (torch.randn(*shape, generator=generator) * std).requires_grad_(True)

    def zeros(*shape: int) -> Tensor:
        return torch.zeros(*shape).requires_grad_(True)

    gru = (normal(3 * hidden, hidden), normal(3 * hidden, hidden), zeros(3 * hidden), zeros(3 * hidden))
    return GNNParams(gru=gru, out=(normal(num_classes, hidden), zeros(num_classes)))


def stack_params(hidden: int, num_classes: int, generators: list[torch.Generator]) -> GNNParams:
    """The parameters of ``len(generators)`` seeds stacked along a leading axis.

    Seed ``i`` draws its tensors as :func:`init_params` does from ``generators[i]`` (so each
    generator is left where the one-seed run leaves it).
    """
    from recipes._common import stack_seeds

    leaves = stack_seeds(lambda g: init_params(hidden, num_classes, generator=g).all(), generators)
    return GNNParams(gru=leaves[:4], out=leaves[4:])


class SymmetricSpMM(torch.autograd.Function):
    """``A @ h`` for a constant symmetric sparse ``A``.

    The backward pass is ``A^T g = A g``, computed by the same function, so the product can
    be differentiated twice (CG-RBP's Jacobian-vector products differentiate a vjp).
    """

    @staticmethod
    def forward(ctx, h: Tensor, adjacency: Tensor) -> Tensor:  # type: ignore[override]
        ctx.adjacency = adjacency
        return adjacency @ h

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return SymmetricSpMM.apply(grad, ctx.adjacency), None


def sparse_adjacency(graph: PlanetoidGraph) -> Tensor:
    """The graph's symmetric 0/1 adjacency as a float32 sparse CSR tensor."""
    n = graph.num_nodes
    ei = graph.edge_index
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)
        coo = torch.sparse_coo_tensor(ei, torch.ones(ei.shape[1]), (n, n), check_invariants=True)
        return coo.coalesce().to_sparse_csr()


def gru_cell(x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor) -> Tensor:
    """``torch.nn.GRUCell`` written out (gate order r, z, n), so it is twice differentiable.

    One network: ``x, h`` ``(N, H)``, weights ``(3H, H)``, biases ``(3H,)``. A stack of seeds:
    ``x, h`` ``(S, N, H)``, weights ``(S, 3H, H)``, biases ``(S, 3H)`` (batched matmuls).
    """
    if w_ih.dim() == 2:
        gi = torch.addmm(b_ih, x, w_ih.t())
        gh = torch.addmm(b_hh, h, w_hh.t())
    else:
        gi = torch.baddbmm(b_ih.unsqueeze(-2), x, w_ih.mT)
        gh = torch.baddbmm(b_hh.unsqueeze(-2), h, w_hh.mT)
    i_r, i_z, i_n = gi.chunk(3, dim=-1)
    h_r, h_z, h_n = gh.chunk(3, dim=-1)
    r = torch.sigmoid(i_r + h_r)
    z = torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)
    return n + z * (h - n)  # = (1 - z) * n + z * h


def make_step(adjacency: Tensor) -> Step:
    """The propagation map ``F((h,), (W_ih, W_hh, b_ih, b_hh)) = (GRU(A h, h),)``.

    ``adjacency`` must be symmetric (Planetoid graphs are undirected). ``h`` is ``(N, H)``, or
    ``(S, N, H)`` for a stack of seeds (:func:`stack_params`): then all seeds' messages are
    one sparse product on the ``(N, S*H)`` matrix of their states side by side.
    """

    def step(state: tuple[Tensor, ...], params: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        (h,) = state
        if h.dim() == 2:
            message = SymmetricSpMM.apply(h, adjacency)  # sum of the neighbours' states
        else:
            s, n, k = h.shape
            flat = h.transpose(0, 1).reshape(n, s * k)
            message = SymmetricSpMM.apply(flat, adjacency).reshape(n, s, k).transpose(0, 1)
        return (gru_cell(message, h, *params),)

    return step


def readout(h: Tensor, out: tuple[Tensor, Tensor]) -> Tensor:
    """Class logits of every node: the output layer.

    With stacked weights (``(S, C, H)``, ``(S, C)``), ``h`` is ``(S, N, H)`` or one ``(N, H)``
    shared by the seeds (the baseline's features); the logits are ``(S, N, C)``.
    """
    if out[0].dim() == 2:
        return F.linear(h, out[0], out[1])
    return torch.matmul(h, out[0].mT) + out[1].unsqueeze(-2)


def pca_features(features: Tensor, dim: int, *, seed: int = 1234) -> Tensor:
    """Project the node features on their first ``dim`` principal components (all nodes).

    As the paper's code does (scikit-learn ``PCA(n_components=dim, random_state=seed)``,
    centred, not whitened), over all nodes: the task is transductive.
    """
    from sklearn.decomposition import PCA

    if not 1 <= dim <= min(features.shape):
        raise ValueError(f"PCA dimension must be in 1..{min(features.shape)}, got {dim}")
    x = features.numpy().astype(np.float64)
    z = PCA(n_components=dim, random_state=seed).fit_transform(x)
    return torch.from_numpy(z.astype(np.float32))
