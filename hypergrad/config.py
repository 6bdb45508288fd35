"""Configuration: the tuner's settings and a run's settings, each declared once.

:class:`TuneConfig` (the tuner) and :class:`RunConfig` (data, model, output) are keyword-only
frozen dataclasses. Each field carries its help text and constraints in ``metadata``
(``help``, ``choices``, ``minimum``, ``positive``, ``open_interval``, ``none``), and everything
else is generated from the field's type and metadata:

* the validation in ``__post_init__`` (errors name the field and what is allowed);
* the coercion of config-file values (:func:`load_config_file`, :func:`validate_keys`);
* the command-line flags (:func:`add_config_flags`), their types, choices and defaults in help;
* the keywords of :func:`hypergrad.tune` (:func:`tune_config`).

A config file (TOML or YAML, parsed with the safe loaders ``tomllib`` / ``yaml.safe_load``)
holds the fields of both classes as keys (``-`` or ``_``); flags given on the command line
override it. This module imports only the numerical core.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import sys
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hypergrad.hyperparams import GRANULARITIES
from hypergrad.methods import get_method, method_names

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, from PyPI
    import tomli as tomllib

__all__ = [
    "DATASETS",
    "DIVERGENCE_POLICIES",
    "STRATEGY_NAMES",
    "TUNER_METHODS",
    "ConfigError",
    "Option",
    "RunConfig",
    "TuneConfig",
    "add_config_flags",
    "build_configs",
    "check_online",
    "flag_values",
    "float_flag",
    "int_flag",
    "load_config_file",
    "method_names",
    "options",
    "tune_config",
    "validate_keys",
]


DIVERGENCE_POLICIES = ("backoff", "skip", "clip", "fallback", "stop")
#: The built-in strategies (:data:`hypergrad.strategies.STRATEGIES`, which a test keeps equal to this).
STRATEGY_NAMES = ("auto", "gradient", "sign", "hybrid", "online")
DATASETS = ("digits", "mnist")
#: The methods the Tuner runs: forward mode is in the core only until the Tuner takes it (issue 15).
TUNER_METHODS = method_names("unrolled") + method_names("implicit") + method_names("forward")


class ConfigError(ValueError):
    """An invalid configuration: unknown key, wrong type, or value out of range."""


def _field(
    default: Any,
    help: str,
    *,
    choices: Iterable[str] | None = None,
    minimum: int | None = None,
    positive: bool = False,
    open_interval: tuple[float, float] | None = None,
    none: str | None = None,
    metavar: str | None = None,
    group: str = "tuner",
) -> Any:
    """A dataclass field with its help, constraints and CLI group in ``metadata``.

    ``minimum``: integers ``>= minimum``; ``positive``: finite numbers ``> 0``;
    ``open_interval=(a, b)``: numbers in ``(a, b)``; ``none``: what ``None`` means (shown in help);
    ``group``: the ``--help`` section (``tuner``, ``meta``, ``data``, ``output``).
    """
    metadata = {"help": help, "group": group}
    for key, value in (("choices", tuple(choices) if choices is not None else None), ("minimum", minimum),
                       ("open_interval", open_interval), ("none", none), ("metavar", metavar)):
        if value is not None:
            metadata[key] = value
    if positive:
        metadata["positive"] = True
    return dataclasses.field(default=default, metadata=metadata)


# ---------------------------------------------------------------------- the two configs
@dataclass(frozen=True, kw_only=True)
class TuneConfig:
    """Settings of a tuning run, validated once at construction (paper §5.3).

    ``T = inner_steps`` inner steps of SGD with momentum per meta step, ``K = truncate``
    (TBPTT's truncation, the RBP solvers' iterations), ``M = hyper_batches`` minibatches the
    RBP hypergradient is averaged over, ``N = meta_steps`` Adam steps on the unconstrained
    hyperparameters :math:`(\\log\\alpha, \\operatorname{logit}\\beta)`.
    """

    method: str = _field("neumann", "hypergradient method", choices=TUNER_METHODS, group="meta")
    inner_steps: int = _field(100, "T, inner SGD steps per meta step", minimum=1)
    truncate: int = _field(10, "K: TBPTT's truncation and the RBP solvers' iterations (Neumann: terms); "
                           "ignored by bptt", minimum=1)
    meta_steps: int = _field(50, "N, meta steps", minimum=1, group="meta")
    hyper_batches: int = _field(4, "M, minibatches the RBP hypergradient is averaged over", minimum=1)
    segments: int = _field(1, "S, piecewise-constant values of every hyperparameter over the T inner steps "
                           "(a schedule; 1: constant); S > 1 needs an unrolled or forward hypergradient "
                           "(bptt, tbptt or forward)", minimum=1)
    meta_lr: float = _field(0.05, "Adam's learning rate on the unconstrained hyperparameters", positive=True,
                            group="meta")
    per: str = _field("tensor", "hyperparameter granularity", choices=GRANULARITIES)
    batch_size: int = _field(100, "inner minibatch size", minimum=1)
    seed: int = _field(0, "seed of the data split, model init and minibatch order", minimum=0)
    init_lr: float = _field(math.exp(-1), "initial learning rate alpha (paper: exp(-1))", positive=True)
    init_momentum: float = _field(0.5, "initial momentum beta (paper: 0.5)", open_interval=(0, 1))
    meta_loss: str = _field("val", "meta loss: validation loss of w_T, or the paper code's training loss on "
                            "the whole training set", choices=("val", "train"))
    fixed_point_batch: str = _field(
        "minibatch", "RBP step map on M fresh minibatches, or one step on the full training set (the paper "
        "code's setting)", choices=("minibatch", "full"))
    # Same hypergradients for neumann and rbp, whose iterations act on each block separately, and
    # for cg, which takes per-block step sizes (fixed_point_grad(blocks=True)); Neumann's
    # stop_on_growth stops each block's series on its own. gmres keeps the loop. Faster at large K;
    # the loop's memory growth is about a quarter (MNIST MLP, M = 4: ~3.5 against ~13 MiB).
    batch_hyper: bool = _field(True, "solve the M hyper-batches as one stacked block-diagonal system (vmap) "
                               "instead of one after another; ignored under torch.distributed")
    clip: float | None = _field(None, "maximum hypergradient norm; larger ones are rescaled", positive=True,
                                none="off", group="meta")
    normalize: bool = _field(False, "divide the hypergradient by its norm (normalised meta steps)", group="meta")
    lr_schedule: str = _field("constant", "decay of the meta lr", choices=("constant", "cosine"), group="meta")
    stop_on_growth: bool = _field(True, "Neumann: stop the series when a term grows (safeguard)")
    explode_threshold: float = _field(1e6, "a hypergradient norm above this counts as exploding", positive=True,
                                      group="meta")
    blowup_ratio: float | None = _field(
        2.0, "a validation loss above this times the first meta step's counts as a blow-up of the inner "
        "training", positive=True, none="off", group="meta")
    on_divergence: str = _field(
        "backoff", "divergence policy: backoff (restore the best hyperparameters, halve the meta lr), skip "
        "(the update), clip (an exploding hypergradient to --clip or 1; skip a non-finite one), fallback "
        "(rbp -> neumann for that step, else skip) or stop", choices=DIVERGENCE_POLICIES, group="meta")
    strategy: str = _field(
        "auto", "the meta loop: gradient (Adam on the hypergradient of --method, the paper's), sign "
        "(sign steps with per-hyperparameter step sizes, BPTT or RBP by --max-memory, selection on unseen "
        "batch orders), hybrid (TPE, then sign steps from its best trials), online (one training of "
        "--inner-steps steps, never restarted, with a meta step every --online-period steps) or auto (the "
        "measured default)",
        choices=STRATEGY_NAMES, group="meta")
    budget: int | None = _field(
        None, "inner trainings of T steps the whole run spends: meta steps, search trials and selection "
        "runs all count", minimum=1, none="meta_steps", group="meta")
    max_memory: float | None = _field(
        None, "GiB that BPTT's unrolled graph may take in the sign/hybrid/auto strategies; above it they "
        "use RBP (--method if it is an RBP method, else neumann)", positive=True,
        none="min(2, a share of the free memory)", group="meta")
    global_trials: int | None = _field(
        None, "hybrid: TPE trials of the global phase", minimum=1, none="0.3 x budget", group="meta")
    online_period: int = _field(
        20, "online: P, inner steps between two meta steps of the one run (--inner-steps must be a multiple)",
        minimum=1, group="meta")

    def __post_init__(self) -> None:
        _validate(self)
        if self.method not in TUNER_METHODS:
            raise ConfigError(
                f"method={self.method!r} is not supported by the Tuner yet (it runs {', '.join(TUNER_METHODS)}); "
                f"compute a {self.method} hypergradient with hypergrad.gradient(..., method={self.method!r})"
            )
        if self.strategy == "online":
            check_online(self)
        if self.segments > self.inner_steps:
            raise ConfigError(f"segments ({self.segments}) must not exceed inner_steps ({self.inner_steps}): "
                              "every segment needs at least one inner step")
        if self.segments > 1 and self.strategy == "gradient" and get_method(self.method).family == "implicit":
            raise ConfigError(
                f"segments={self.segments} (a schedule) needs method bptt, tbptt or forward with the gradient "
                f"strategy; {self.method} differentiates at the last state only and sees no segment but the last"
            )
        if self.method == "tbptt" and self.truncate > self.inner_steps:
            raise ConfigError(
                f"truncate ({self.truncate}) must not exceed inner_steps ({self.inner_steps}) for tbptt"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_online(config: TuneConfig) -> None:
    """The settings the ``"online"`` strategy needs: ``inner_steps = S * online_period``, no ``budget``."""
    t, p = config.inner_steps, config.online_period
    if p > t:
        raise ConfigError(f"online_period ({p}) must not exceed inner_steps ({t}), the length of the one online run")
    if t % p:
        raise ConfigError(f"inner_steps ({t}) must be a multiple of online_period ({p}) for the online strategy "
                          f"(one hyperparameter segment per period), e.g. inner_steps={t - t % p or p}")
    if config.segments != 1:
        raise ConfigError(f"segments={config.segments} is not used by the online strategy: its schedule is its "
                          "trajectory, one segment per online_period; leave segments at 1")
    if config.budget is not None:
        raise ConfigError(f"budget={config.budget} is not used by the online strategy: it runs ONE training of "
                          "inner_steps steps; set inner_steps (and online_period) instead")


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Everything a ``tune`` run needs besides the tuner's own settings."""

    dataset: str = _field("digits", "data set (digits is embedded)", choices=DATASETS, group="data")
    data_root: str | None = _field(None, "folder with the MNIST IDX files", metavar="DIR", group="data")
    hidden: tuple[int, ...] = _field((50, 50, 50), "hidden layer sizes of the tanh MLP", minimum=1,
                                     metavar="50,50,50", group="data")
    n_train: int | None = _field(None, "MNIST training images", minimum=1, none="10000", group="data")
    device: str | None = _field(None, "where to tune: cpu, cuda or cuda:N (model, data, hyperparameters, Adam "
                                "state and solves all live there)", none="cpu; each rank's GPU under torchrun "
                                "with NCCL", metavar="DEVICE", group="data")
    logdir: str | None = _field(None, "TensorBoard logs and checkpoints", metavar="DIR", group="output")
    out: str | None = _field(None, "results JSON", none="DIR/results.json", metavar="FILE", group="output")

    def __post_init__(self) -> None:
        _validate(self)
        if self.device is not None:
            try:
                torch.device(self.device)
            except (RuntimeError, ValueError):
                raise ConfigError(f"device={self.device!r} is not a torch device; expected cpu, cuda or cuda:N"
                                  ) from None


# ---------------------------------------------------------------------- what a field accepts
@dataclass(frozen=True)
class Option:
    """One field of a config class: its value type (from the annotation) and its metadata."""

    name: str
    kind: type  # int, float, bool, str or tuple (a tuple of ints)
    nullable: bool
    default: Any
    metadata: Mapping[str, Any]

    @property
    def choices(self) -> tuple[str, ...] | None:
        return self.metadata.get("choices")

    @property
    def help(self) -> str:
        return self.metadata["help"]

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def default_text(self) -> str | None:
        """The default as ``--help`` shows it (``None``: what ``metadata["none"]`` says, if anything)."""
        if self.default is None:
            return self.metadata.get("none")
        if self.kind is tuple:
            return ",".join(map(str, self.default))
        if self.kind is float:
            return f"{self.default:.4g}"
        return str(self.default)


@functools.cache
def options(cls: type) -> tuple[Option, ...]:
    """The :class:`Option` of every field of ``cls`` (:class:`TuneConfig` or :class:`RunConfig`), in order."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        nullable = type(None) in args
        (base,) = [a for a in args if a is not type(None)]
        kind = typing.get_origin(base) or base
        if kind not in (int, float, bool, str, tuple):
            raise TypeError(f"{cls.__name__}.{f.name}: unsupported field type {hint!r}")
        out.append(Option(f.name, kind, nullable, f.default, f.metadata))
    return tuple(out)


def _validate(config: TuneConfig | RunConfig) -> None:
    """Check every field of ``config`` against its type and metadata; raise :class:`ConfigError`."""
    for opt in options(type(config)):
        name, value, md = opt.name, getattr(config, opt.name), opt.metadata
        if value is None and opt.nullable:
            continue
        if opt.choices is not None:
            if value not in opt.choices:
                raise ConfigError(f"{name}={value!r} is not allowed; expected one of {', '.join(opt.choices)}")
        elif opt.kind is bool:
            if not isinstance(value, bool):
                raise ConfigError(f"{name} must be True or False, got {value!r}")
        elif opt.kind is int:
            low = md.get("minimum", -math.inf)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
        elif opt.kind is float:
            number = not isinstance(value, bool) and isinstance(value, (int, float))
            if md.get("positive") and not (number and math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a positive finite number, got {value!r}")
            if "open_interval" in md:
                lo, hi = md["open_interval"]
                if not (number and lo < value < hi):
                    raise ConfigError(f"{name} must lie in ({lo}, {hi}), got {value!r}")
            if not number:
                raise ConfigError(f"{name} must be a number, got {value!r}")
        elif opt.kind is tuple:
            low = md.get("minimum", -math.inf)
            if not isinstance(value, (tuple, list)) or not value or any(
                isinstance(v, bool) or not isinstance(v, int) or v < low for v in value
            ):
                raise ConfigError(f"{name} must be a non-empty list of integers >= {low}, got {value!r}")
        # free strings (paths) are not checked here: a pathlib.Path is fine too


def tune_config(values: Mapping[str, Any], *, caller: str = "tune()") -> TuneConfig:
    """A :class:`TuneConfig` from keyword values; unknown names raise ``TypeError`` listing the allowed ones."""
    allowed = [opt.name for opt in options(TuneConfig)]
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise TypeError(f"unknown {caller} argument(s): {', '.join(unknown)}; allowed: {', '.join(allowed)}")
    return TuneConfig(**values)


# ---------------------------------------------------------------------- config files
def _coerce(opt: Option, value: Any) -> Any:
    """Type-check one config-file value (no silent conversions beyond int -> float)."""
    key, choices = opt.name, opt.choices
    if value is None:
        if opt.nullable:
            return None
        allowed = f"; expected one of {', '.join(choices)}" if choices else ""
        raise ConfigError(f"config key {key!r} must not be null{allowed}")
    if choices is not None and not isinstance(value, str):
        raise ConfigError(f"config key {key!r} must be one of {', '.join(choices)}, got {value!r}")
    if opt.kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key {key!r} must be true or false, got {value!r}")
        return value
    if opt.kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key {key!r} must be an integer, got {value!r}")
        return value
    if opt.kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"config key {key!r} must be a finite number, got {value!r}")
        return float(value)
    if opt.kind is tuple:
        if isinstance(value, str):
            return parse_int_list(value, key)
        if isinstance(value, list):
            return tuple(value)
        example = ",".join(map(str, opt.default))
        raise ConfigError(f"config key {key!r} must be a list of integers or {example!r}, got {value!r}")
    if not isinstance(value, str):
        raise ConfigError(f"config key {key!r} must be a string, got {value!r}")
    return value


def parse_int_list(text: str, name: str = "hidden") -> tuple[int, ...]:
    """``"50,50,50"`` -> ``(50, 50, 50)``; integers >= 1."""
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"{name} must be comma-separated integers such as 50,50,50, got {text!r}") from None
    if not sizes or any(s < 1 for s in sizes):
        raise ConfigError(f"{name} must be comma-separated integers >= 1, got {text!r}")
    return sizes


def parse_hidden(text: str) -> tuple[int, ...]:
    return parse_int_list(text, "hidden")


def _all_options() -> dict[str, Option]:
    return {opt.name: opt for cls in (TuneConfig, RunConfig) for opt in options(cls)}


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML (``.toml``) or YAML (``.yaml``/``.yml``) file into validated key/values."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc}") from None
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            data = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            raise ConfigError(f"config file {str(path)!r} must end in .toml, .yaml or .yml")
    except ConfigError:
        raise
    except Exception as exc:  # tomllib.TOMLDecodeError, yaml.YAMLError
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"cannot parse config file {str(path)!r}: {first}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a table of key = value pairs")
    return validate_keys(data, source=str(path))


def validate_keys(data: Mapping[str, Any], source: str = "config") -> dict[str, Any]:
    """Normalise keys (``-`` -> ``_``) and type-check values; unknown keys raise :class:`ConfigError`."""
    known = _all_options()
    out = {}
    for key, value in data.items():
        norm = str(key).replace("-", "_")
        if norm not in known:
            raise ConfigError(f"unknown key {key!r} in {source}; allowed keys: {', '.join(sorted(known))}")
        out[norm] = _coerce(known[norm], value)
    return out


def build_configs(values: Mapping[str, Any]) -> tuple[TuneConfig, RunConfig]:
    """Split validated key/values into a :class:`TuneConfig` and a :class:`RunConfig`."""
    tune_keys = {opt.name for opt in options(TuneConfig)}
    run_keys = {opt.name for opt in options(RunConfig)}
    tune_kw = {k: v for k, v in values.items() if k in tune_keys}
    run_kw = {k: v for k, v in values.items() if k in run_keys}
    try:
        return TuneConfig(**tune_kw), RunConfig(**run_kw)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


# ---------------------------------------------------------------------- command-line flags
def int_flag(minimum: float) -> Callable[[str], int]:
    """An argparse ``type=``: an integer ``>= minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def float_flag(*, positive: bool = False, open_interval: tuple[float, float] | None = None) -> Callable[[str], float]:
    """An argparse ``type=``: a finite number, ``> 0`` if ``positive``, inside ``open_interval`` if given."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if positive and not (math.isfinite(value) and value > 0):
            raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
        if open_interval is not None and not open_interval[0] < value < open_interval[1]:
            raise argparse.ArgumentTypeError(f"must lie in ({open_interval[0]}, {open_interval[1]}), got {text}")
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        return value

    return parse


def _or_none(parse: Callable[[str], Any], words: tuple[str, ...]) -> Callable[[str], Any]:
    def parse_or_none(text: str) -> Any:
        return None if text.lower() in words else parse(text)

    return parse_or_none


def flag_type(opt: Option) -> Callable[[str], Any] | None:
    """The argparse ``type=`` of a field's flag (``None``: strings)."""
    md = opt.metadata
    parse: Callable[[str], Any]
    if opt.kind is int:
        parse = int_flag(md.get("minimum", -math.inf))
    elif opt.kind is float:
        parse = float_flag(positive=bool(md.get("positive")), open_interval=md.get("open_interval"))
    else:  # strings; a list of integers is parsed by flag_values, to report as a usage error (exit 2)
        return None
    if opt.nullable:
        parse = _or_none(parse, ("none", "off") if md.get("none") == "off" else ("none",))
    return parse


def add_config_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    *,
    groups: Iterable[str] | None = None,
    exclude: Iterable[str] = (),
    help: Mapping[str, str] | None = None,
) -> None:
    """Add one flag per field of ``cls`` (``--inner-steps`` for ``inner_steps``), generated from its metadata.

    Every flag defaults to ``None`` ("not given"), so that config-file values are only overridden
    by flags on the command line; ``--help`` shows the dataclass default. Booleans get
    ``--x`` / ``--no-x``. ``groups`` selects fields by their ``group`` metadata, ``exclude`` by
    name, and ``help`` replaces the help text of some fields (a command's own wording).
    """
    wanted = set(groups) if groups is not None else None
    skip = set(exclude)
    for opt in options(cls):
        if opt.name in skip or (wanted is not None and opt.metadata["group"] not in wanted):
            continue
        text = (help or {}).get(opt.name, opt.help)
        shown = opt.default_text()
        if shown is not None:
            also = f"; none: {opt.metadata['none']}" if opt.default is not None and "none" in opt.metadata else ""
            text = f"{text} (default: {shown}{also})"
        kwargs: dict[str, Any] = {"default": None, "help": text.replace("%", "%%")}
        if opt.kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = flag_type(opt)
            if opt.choices is not None:
                kwargs["choices"] = opt.choices
            if "metavar" in opt.metadata:
                kwargs["metavar"] = opt.metadata["metavar"]
        parser.add_argument(opt.flag, **kwargs)


def flag_values(args: argparse.Namespace) -> dict[str, Any]:
    """The config fields given as flags (those not ``None``) in a parsed namespace."""
    out = {}
    for name, opt in _all_options().items():
        value = getattr(args, name, None)
        if value is not None:
            out[name] = parse_int_list(value, name) if opt.kind is tuple and isinstance(value, str) else value
    return out


def _document(cls: type) -> None:
    """Append the fields' help and defaults (from the metadata) to ``cls.__doc__``."""
    lines = ["", "    Attributes:"]
    for opt in options(cls):
        shown = opt.default_text()
        choices = f" One of {', '.join(opt.choices)}." if opt.choices else ""
        default = f" Default: {shown}." if shown is not None else ""
        lines.append(f"        {opt.name}: {opt.help}.{choices}{default}")
    cls.__doc__ = (cls.__doc__ or "").rstrip() + "\n" + "\n".join(lines) + "\n"


_document(TuneConfig)
_document(RunConfig)
