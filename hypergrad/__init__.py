"""hypergrad: gradient-based hyperparameter optimisation with recurrent back-propagation.

Implements Liao et al., "Reviving and Improving Recurrent Back-Propagation",
ICML 2018. The public namespace:

* :data:`METHODS` / :func:`gradient`: the method table (BPTT, TBPTT, RBP, CG-RBP,
  Neumann-RBP, GMRES-RBP, forward mode) and the one function that computes a gradient by any of them
  (:mod:`hypergrad.methods`);
* :func:`fixed_point_grad`: RBP, CG-RBP, Neumann-RBP (and GMRES) through a steady state;
* :func:`unrolled_grad`: BPTT and truncated BPTT over the same map;
* :func:`forward_grad`: forward mode (the tangents dh_t/dw carried through the run: BPTT's
  gradient at a memory that does not grow with T), and :func:`scheduled_step`, the same
  time-varying, segmented map for BPTT;
* :class:`HyperSpec` / :func:`to_sgd_param_groups` / :class:`SGDSchedule`: the hyperparameter
  layout (granularity, schedules of :func:`segment_index` segments) and its exact export to
  ``torch.optim.SGD``;
* :class:`FixedPoint`: a differentiable fixed-point layer with an RBP backward;
* :mod:`hypergrad.linalg`: the matrix-free solvers and :class:`SolveInfo`;
* :func:`tune`: tune the learning rates and momenta of your own model (any ``nn.Module``,
  tensors / ``Dataset`` / ``DataLoader``, any device); :class:`TuneError` keeps the finished
  meta steps of a run that failed;
* :func:`compare_models`: hypergradient methods against Optuna on your own model at a matched
  budget (``hypergrad.compare`` is the package that implements it).
"""

from hypergrad import linalg, methods
from hypergrad.compare import Comparison, compare_models
from hypergrad.config import TuneConfig
from hypergrad.forward import forward_grad, scheduled_step
from hypergrad.hyperparams import HyperSpec, SGDSchedule, segment_bounds, segment_index, to_sgd_param_groups
from hypergrad.implicit import FixedPoint, fixed_point_grad, solve_adjoint
from hypergrad.inner import InnerProblem
from hypergrad.linalg import SolveInfo
from hypergrad.methods import METHODS, GradResult, Method, get_method, gradient, method_names
from hypergrad.tuner import TuneError, Tuner, TuneResult, tune
from hypergrad.unroll import unroll, unrolled_grad

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "Comparison",
    "FixedPoint",
    "GradResult",
    "HyperSpec",
    "InnerProblem",
    "Method",
    "SGDSchedule",
    "SolveInfo",
    "TuneConfig",
    "TuneError",
    "TuneResult",
    "Tuner",
    "__version__",
    "compare_models",
    "fixed_point_grad",
    "forward_grad",
    "get_method",
    "gradient",
    "linalg",
    "method_names",
    "methods",
    "scheduled_step",
    "segment_bounds",
    "segment_index",
    "solve_adjoint",
    "to_sgd_param_groups",
    "tune",
    "unroll",
    "unrolled_grad",
]
