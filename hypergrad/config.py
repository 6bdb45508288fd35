"""Run configuration: one typed, validated object that CLI flags and config files both produce.

A config file (TOML or YAML, parsed with the safe loaders ``tomllib`` / ``yaml.safe_load``)
holds the same keys as the ``tune`` flags, with underscores: ``method``, ``inner_steps``,
``truncate``, ``meta_steps``, ``hyper_batches``, ``meta_lr``, ``per``, ``batch_size``,
``seed``, ``dataset``, ``data_root``, ``hidden``, ... Flags given on the command line override it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib

from hypergrad.tuner import TuneConfig

__all__ = ["DATASETS", "ConfigError", "RunConfig", "load_config_file"]

DATASETS = ("digits", "mnist")


class ConfigError(ValueError):
    """An invalid configuration: unknown key, wrong type, or value out of range."""


@dataclass(frozen=True)
class RunConfig:
    """Everything a ``tune`` run needs besides the tuner's own settings."""

    dataset: str = "digits"
    data_root: str | None = None
    hidden: tuple[int, ...] = (50, 50, 50)
    n_train: int | None = None
    logdir: str | None = None
    out: str | None = None

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ConfigError(f"dataset={self.dataset!r} is not allowed; expected one of {', '.join(DATASETS)}")
        if not self.hidden or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in self.hidden):
            raise ConfigError(f"hidden must be a non-empty list of integers >= 1, got {self.hidden!r}")
        if self.n_train is not None and (
            isinstance(self.n_train, bool) or not isinstance(self.n_train, int) or self.n_train < 1
        ):
            raise ConfigError(f"n_train must be an integer >= 1, got {self.n_train!r}")


TUNE_KEYS = {f.name: f for f in dataclasses.fields(TuneConfig)}
RUN_KEYS = {f.name: f for f in dataclasses.fields(RunConfig)}
ALL_KEYS = sorted(set(TUNE_KEYS) | set(RUN_KEYS))

_FLOAT_KEYS = {"meta_lr", "init_lr", "init_momentum", "clip", "explode_threshold", "blowup_ratio"}
_INT_KEYS = {"inner_steps", "truncate", "meta_steps", "hyper_batches", "batch_size", "seed", "n_train"}
_BOOL_KEYS = {"normalize", "stop_on_growth", "batch_hyper"}
_NULLABLE = {"clip", "blowup_ratio", "data_root", "n_train", "logdir", "out"}


def _choices() -> dict[str, tuple[str, ...]]:
    from hypergrad.hyperparams import GRANULARITIES
    from hypergrad.tuner import DIVERGENCE_POLICIES, TUNE_METHODS

    return {
        "method": TUNE_METHODS, "per": GRANULARITIES, "on_divergence": DIVERGENCE_POLICIES,
        "meta_loss": ("val", "train"), "fixed_point_batch": ("minibatch", "full"),
        "lr_schedule": ("constant", "cosine"), "dataset": DATASETS,
    }


def _coerce(key: str, value: Any) -> Any:
    """Type-check one config value (no silent conversions beyond int -> float)."""
    choices = _choices().get(key)
    if value is None:
        if key in _NULLABLE:
            return None
        allowed = f"; expected one of {', '.join(choices)}" if choices else ""
        raise ConfigError(f"config key {key!r} must not be null{allowed}")
    if choices is not None and not isinstance(value, str):
        raise ConfigError(f"config key {key!r} must be one of {', '.join(choices)}, got {value!r}")
    if key in _BOOL_KEYS:
        if not isinstance(value, bool):
            raise ConfigError(f"config key {key!r} must be true or false, got {value!r}")
        return value
    if key in _INT_KEYS:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key {key!r} must be an integer, got {value!r}")
        return value
    if key in _FLOAT_KEYS:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"config key {key!r} must be a finite number, got {value!r}")
        return float(value)
    if key == "hidden":
        if isinstance(value, str):
            return parse_hidden(value)
        if isinstance(value, list):
            return tuple(value)
        raise ConfigError(f"config key 'hidden' must be a list of integers or '50,50,50', got {value!r}")
    if not isinstance(value, str):
        raise ConfigError(f"config key {key!r} must be a string, got {value!r}")
    return value


def parse_hidden(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"hidden must be comma-separated integers such as 50,50,50, got {text!r}") from None
    if not sizes or any(s < 1 for s in sizes):
        raise ConfigError(f"hidden must be comma-separated integers >= 1, got {text!r}")
    return sizes


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


def validate_keys(data: dict[str, Any], source: str = "config") -> dict[str, Any]:
    out = {}
    for key, value in data.items():
        norm = str(key).replace("-", "_")
        if norm not in TUNE_KEYS and norm not in RUN_KEYS:
            raise ConfigError(f"unknown key {key!r} in {source}; allowed keys: {', '.join(ALL_KEYS)}")
        out[norm] = _coerce(norm, value)
    return out


def build_configs(values: dict[str, Any]) -> tuple[TuneConfig, RunConfig]:
    """Split validated key/values into a :class:`TuneConfig` and a :class:`RunConfig`."""
    tune_kw = {k: v for k, v in values.items() if k in TUNE_KEYS}
    run_kw = {k: v for k, v in values.items() if k in RUN_KEYS}
    try:
        return TuneConfig(**tune_kw), RunConfig(**run_kw)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
