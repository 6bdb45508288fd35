"""The CLI: tune and check-grad end to end, and clear errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from hypergrad.cli import EXIT_USAGE, main

SMALL = ["--inner-steps", "20", "--truncate", "4", "--meta-steps", "3", "--batch-size", "50", "--hidden", "16"]


def test_tune_writes_results_and_prints_param_groups(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["tune", *SMALL, "--logdir", str(out), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "validation loss:" in printed and "torch.optim.SGD param groups" in printed
    res = json.loads((out / "results.json").read_text())
    for key in ("config", "meta_loss", "train_loss", "seconds", "hyperparameters", "param_groups",
                "hypergrad_norm", "history", "evaluation"):
        assert key in res, key
    assert res["config"]["method"] == "neumann"
    assert len(res["meta_loss"]) == 3 and len(res["seconds"]) == 3
    assert set(res["hyperparameters"]) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert all("solver" in r and "residual" in r["solver"] for r in res["history"])
    assert (out / "checkpoint.pt").is_file()


def test_config_file_and_flag_override(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text('method = "tbptt"\ninner_steps = 20\ntruncate = 5\nmeta_steps = 2\nhidden = [8]\nbatch_size = 50\n')
    out = tmp_path / "r.json"
    assert main(["tune", "--config", str(cfg), "--meta-steps", "3", "--out", str(out), "--no-progress"]) == 0
    res = json.loads(out.read_text())
    assert res["config"]["method"] == "tbptt" and res["config"]["meta_steps"] == 3
    assert res["run"]["hidden"] == [8]


def test_check_grad_reports_cosines_against_bptt(tmp_path, capsys):
    out = tmp_path / "cg.json"
    code = main(["check-grad", "--inner-steps", "15", "--truncate", "15", "--hidden", "8",
                 "--methods", "bptt,tbptt,neumann", "--out", str(out)])
    assert code == 0
    rows = {r["method"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["bptt"]["cosine_vs_bptt"] == pytest.approx(1.0)
    # TBPTT through all T steps is BPTT.
    assert rows["tbptt"]["rel_error_vs_bptt"] < 1e-5
    assert -1.0 <= rows["neumann"]["cosine_vs_bptt"] <= 1.0
    assert "cosine" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["tune", "--method", "sgd"], "invalid choice: 'sgd'"),
        (["tune", "--dataset", "cifar"], "invalid choice: 'cifar'"),
        (["tune", "--method", "tbptt", "--inner-steps", "5", "--truncate", "6"], "must not exceed inner_steps"),
        (["tune", "--inner-steps", "0"], "must be >= 1"),
        (["tune", "--batch-size", "-3"], "must be >= 1"),
        (["tune", "--meta-lr", "0"], "positive finite"),
        (["tune", "--hidden", "50,x"], "hidden must be comma-separated integers"),
        (["tune", "--dataset", "mnist", "--data-root", "/nonexistent/mnist"], "not a directory"),
        (["tune", "--config", "/nonexistent/c.toml"], "cannot read config file"),
        (["check-grad", "--methods", "bptt,magic"], "unknown method 'magic'"),
    ],
)
def test_bad_input_gives_one_line_and_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        code = main(argv)
        raise SystemExit(code)
    assert exc.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_existing_checkpoint_is_not_silently_overwritten(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["tune", *SMALL, "--logdir", str(run), "--no-progress"]) == 0
    assert main(["tune", *SMALL, "--logdir", str(run), "--no-progress"]) == EXIT_USAGE
    assert "--resume" in capsys.readouterr().err


def test_module_entry_point_and_help_lists_exit_codes():
    proc = subprocess.run([sys.executable, "-m", "hypergrad", "tune", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0
    assert "Exit codes:" in proc.stdout and "130" in proc.stdout


def test_check_grad_json_is_strict_even_without_a_spectral_radius(tmp_path, capsys):
    """CG-RBP reports no spectral-radius estimate (nan): the JSON holds null, never NaN."""
    out = tmp_path / "cg.json"
    assert main(["check-grad", "--inner-steps", "10", "--truncate", "3", "--hidden", "8",
                 "--methods", "bptt,cg", "--out", str(out)]) == 0
    text = out.read_text()
    assert "NaN" not in text
    rows = {r["method"]: r for r in json.loads(text)["rows"]}
    assert rows["cg"]["solver"]["spectral_radius"] is None
