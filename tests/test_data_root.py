"""Where the library looks for data: ``--data-root``, else ``$HYPERGRAD_DATA/<name>``, else a clear error."""

from __future__ import annotations

import pytest

from hypergrad.cli import EXIT_USAGE, main
from hypergrad.config import RunConfig
from hypergrad.data import DataError, default_data_root
from hypergrad.workloads import load_split


def test_the_environment_variable_names_the_root(monkeypatch, tmp_path):
    monkeypatch.setenv("HYPERGRAD_DATA", str(tmp_path))
    assert default_data_root("mnist") == tmp_path / "mnist"
    assert default_data_root("planetoid") == tmp_path / "planetoid"


@pytest.mark.parametrize("value", [None, ""], ids=["unset", "empty"])
def test_without_a_root_the_error_says_what_to_pass(monkeypatch, value):
    if value is None:
        monkeypatch.delenv("HYPERGRAD_DATA", raising=False)
    else:
        monkeypatch.setenv("HYPERGRAD_DATA", value)
    with pytest.raises(DataError, match=r"no data root for 'planetoid': pass --data-root DIR .* or set HYPERGRAD_DATA"):
        default_data_root("planetoid")


def test_cli_without_a_data_root_is_one_error_line(monkeypatch, capsys):
    monkeypatch.delenv("HYPERGRAD_DATA", raising=False)
    code = main(["tune", "--dataset", "mnist", "--inner-steps", "5", "--meta-steps", "1", "--no-progress"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == EXIT_USAGE
    assert len(lines) == 1 and lines[0].startswith("hypergrad: error: no data root for 'mnist'"), lines
    assert "--data-root" in lines[0] and "HYPERGRAD_DATA" in lines[0]


def test_an_explicit_root_wins_over_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("HYPERGRAD_DATA", str(tmp_path / "elsewhere"))
    with pytest.raises(DataError, match=r"MNIST data root '.*given' is not a directory"):
        load_split(RunConfig(dataset="mnist", data_root=str(tmp_path / "given")), 0)


def test_the_embedded_digits_need_no_root(monkeypatch):
    monkeypatch.delenv("HYPERGRAD_DATA", raising=False)
    split = load_split(RunConfig(dataset="digits"), 0)
    assert split.num_classes == 10 and split.num_features == 64
