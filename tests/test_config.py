"""One config (issue 12, point 1): TuneConfig/RunConfig declare each setting once; the validation,
the config-file coercion, the CLI flags and ``hypergrad.tune``'s keywords are generated from them."""

from __future__ import annotations

import argparse
import dataclasses
import math
import re

import pytest
import torch
import torch.nn.functional as F

import hypergrad
from hypergrad import tuner
from hypergrad.cli import build_parser
from hypergrad.config import (
    ConfigError,
    RunConfig,
    TuneConfig,
    add_config_flags,
    build_configs,
    flag_values,
    load_config_file,
    method_names,
    options,
    tune_config,
)

FIELDS = [(cls, opt) for cls in (TuneConfig, RunConfig) for opt in options(cls)]
IDS = [opt.name for _, opt in FIELDS]


def _sub(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return action.choices[name]


def test_tuner_reexports_the_one_config_class():
    assert tuner.TuneConfig is TuneConfig is hypergrad.TuneConfig


def test_configs_are_keyword_only_and_frozen():
    with pytest.raises(TypeError):
        TuneConfig("rbp")  # type: ignore[misc]
    with pytest.raises(TypeError):
        RunConfig("digits")  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        TuneConfig().method = "rbp"  # type: ignore[misc]


@pytest.mark.parametrize(("cls", "opt"), FIELDS, ids=IDS)
def test_every_field_has_help_a_valid_default_and_documentation(cls, opt):
    assert opt.help and not opt.help.endswith(".")  # the generated texts add the full stop
    if opt.choices is not None:
        assert opt.default in opt.choices
    assert f"{opt.name}: {opt.help}." in cls.__doc__  # the docstring is generated from the metadata


def test_method_choices_come_from_the_method_table():
    (opt,) = [o for o in options(TuneConfig) if o.name == "method"]
    # every family of the table: unrolled, implicit and forward mode
    assert opt.choices == tuple(method_names("unrolled") + method_names("implicit") + method_names("forward"))
    assert opt.choices[-1] == "forward"
    with pytest.raises(ConfigError, match=r"method='sgd' is not allowed; expected one of bptt, tbptt, rbp, cg"):
        TuneConfig(method="sgd")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"inner_steps": 0}, r"inner_steps must be an integer >= 1, got 0"),
        ({"seed": -1}, r"seed must be an integer >= 0, got -1"),
        ({"hyper_batches": True}, r"hyper_batches must be an integer >= 1, got True"),
        ({"meta_lr": math.nan}, r"meta_lr must be a positive finite number, got nan"),
        ({"clip": 0.0}, r"clip must be a positive finite number, got 0.0"),
        ({"init_momentum": 1.0}, r"init_momentum must lie in \(0, 1\), got 1.0"),
        ({"normalize": 1}, r"normalize must be True or False, got 1"),
        ({"per": "neuron"}, r"per='neuron' is not allowed; expected one of tensor, layer, global, element"),
        ({"method": "tbptt", "inner_steps": 5, "truncate": 6}, r"truncate \(6\) must not exceed inner_steps"),
    ],
)
def test_tune_config_validation_names_the_field_and_what_is_allowed(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TuneConfig(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dataset": "cifar10"}, r"dataset='cifar10' is not allowed; expected one of digits, mnist"),
        ({"hidden": (50, 0)}, r"hidden must be a non-empty list of integers >= 1"),
        ({"hidden": ()}, r"hidden must be a non-empty list of integers >= 1"),
        ({"n_train": 0}, r"n_train must be an integer >= 1, got 0"),
    ],
)
def test_run_config_validation(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig(**kwargs)


def test_nullable_fields_accept_none():
    assert TuneConfig(clip=None, blowup_ratio=None).blowup_ratio is None
    assert RunConfig(n_train=None, data_root=None).n_train is None


def test_tune_rejects_unknown_keywords_naming_the_allowed_ones():
    with pytest.raises(TypeError, match=r"unknown tune\(\) argument\(s\): methd, tbptt_k; allowed: method, "):
        tune_config({"methd": "rbp", "tbptt_k": 3})
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    with pytest.raises(TypeError, match=r"unknown tune\(\) argument\(s\): methd"):
        hypergrad.tune(torch.nn.Linear(3, 2), F.cross_entropy, (x, y), (x, y), methd="rbp")
    assert tune_config({"method": "rbp", "meta_steps": 3}) == TuneConfig(method="rbp", meta_steps=3)


def _non_default(opt):
    """A valid value different from the field's default."""
    if opt.choices is not None:
        return next(c for c in opt.choices if c != opt.default)
    if opt.kind is bool:
        return not opt.default
    if opt.kind is int:
        return (opt.default or 1) + 3
    if opt.kind is float:
        return 0.75 if opt.name == "init_momentum" else (opt.default or 1.0) * 3
    if opt.kind is tuple:
        return (7, 5)
    return f"/tmp/{opt.name}"


def test_a_config_file_with_every_field_round_trips(tmp_path):
    """No hand-kept key table: every field of both classes is a config-file key with its type checked."""
    values = {opt.name: _non_default(opt) for _, opt in FIELDS}
    values["method"], values["inner_steps"], values["truncate"] = "tbptt", 20, 5
    values["device"] = "cuda:1"  # a free string that must parse as a torch device

    def toml(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, tuple):
            return "[" + ", ".join(map(str, v)) + "]"
        return f'"{v}"' if isinstance(v, str) else repr(v)

    path = tmp_path / "all.toml"
    path.write_text("".join(f"{k} = {toml(v)}\n" for k, v in values.items()))
    cfg, run = build_configs(load_config_file(path))
    assert cfg == TuneConfig(**{o.name: values[o.name] for o in options(TuneConfig)})
    assert run == RunConfig(**{o.name: values[o.name] for o in options(RunConfig)})


def test_every_field_is_a_tune_flag_with_its_default_in_the_help():
    tune = _sub(build_parser(), "tune")
    flags = {s: a for a in tune._actions for s in a.option_strings}
    text = tune.format_help()
    for _, opt in FIELDS:
        action = flags[opt.flag]
        assert action.default is None  # a flag not given never overrides the config file
        if opt.choices is not None:
            assert tuple(action.choices) == opt.choices
        shown = opt.default_text()
        if shown is not None:
            assert f"(default: {shown}" in " ".join(action.help.split())
    assert "--no-batch-hyper" in text and "--no-stop-on-growth" in text and "--no-normalize" in text


def test_flags_parse_to_config_values():
    parser = argparse.ArgumentParser()
    add_config_flags(parser, TuneConfig)
    add_config_flags(parser, RunConfig)
    args = parser.parse_args(["--no-batch-hyper", "--normalize", "--blowup-ratio", "none", "--clip", "off",
                              "--init-momentum", "0.9", "--hidden", "8,4", "--method", "cg"])
    assert flag_values(args) == {"batch_hyper": False, "normalize": True, "init_momentum": 0.9,
                                 "hidden": (8, 4), "method": "cg"}  # None ("none"/"off") means not given
    cfg, run = build_configs(flag_values(parser.parse_args([])))
    assert cfg == TuneConfig() and run == RunConfig()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--init-momentum", "1"], r"must lie in \(0, 1\), got 1"),
        (["--explode-threshold", "-1"], r"must be a positive finite number, got -1"),
        (["--truncate", "x"], r"expected an integer, got 'x'"),
    ],
)
def test_bad_flag_values_are_argparse_errors(argv, message, capsys):
    parser = argparse.ArgumentParser()
    add_config_flags(parser, TuneConfig)
    with pytest.raises(SystemExit):
        parser.parse_args(argv)
    assert re.search(message, capsys.readouterr().err)


def test_compare_and_check_grad_share_the_tuner_flags():
    parser = build_parser()
    compare = {s for a in _sub(parser, "compare")._actions for s in a.option_strings}
    check = {s for a in _sub(parser, "check-grad")._actions for s in a.option_strings}
    tuner_flags = {o.flag for o in options(TuneConfig) if o.metadata["group"] == "tuner"}
    data_flags = {o.flag for o in options(RunConfig) if o.metadata["group"] == "data"}
    assert tuner_flags | data_flags <= compare & check
    assert {"--meta-lr", "--on-divergence", "--clip"} <= compare  # the tuner's meta settings
    assert "--method" not in compare and "--meta-steps" not in compare  # compare sets them per method
