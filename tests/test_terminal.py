"""What the terminal shows: the progress bars' counts and last ``best``, and one number format per column."""

from __future__ import annotations

import dataclasses
import re

import optuna

from hypergrad import TuneConfig, Tuner
from hypergrad.callbacks import ProgressBar
from hypergrad.cli import column_format, main
from hypergrad.compare import compare
from tests.test_baselines import tiny_problem
from tests.test_compare import problems

optuna.logging.set_verbosity(optuna.logging.WARNING)

CFG = TuneConfig(inner_steps=6, truncate=3, hyper_batches=2, batch_size=16)


def _frames(err: str) -> list[str]:
    """tqdm's successive renderings (it redraws with carriage returns)."""
    return [f for f in re.split(r"[\r\n]+", err) if f.strip()]


def test_tune_bar_ends_at_the_summarys_best(capsys):
    tuner = Tuner(tiny_problem(), dataclasses.replace(CFG, meta_steps=4), callbacks=[ProgressBar(disable=False)])
    result = tuner.run()
    frames = _frames(capsys.readouterr().err)
    bests = [m.group(1) for f in frames if (m := re.search(r"best=([0-9.]+|nan)", f))]
    assert bests, frames
    assert bests[-1] == f"{result.evaluation['best']['val_loss']:.4f}"
    assert "final evaluation" in frames[-1]
    assert re.search(r"\b4/4\b", frames[-1])


def test_tune_bar_counts_the_budget_of_a_strategy(capsys):
    cfg = dataclasses.replace(CFG, meta_steps=50, budget=8)
    tuner = Tuner(tiny_problem(), cfg, callbacks=[ProgressBar(disable=False)], strategy="sign")
    tuner.run()
    frames = _frames(capsys.readouterr().err)
    assert re.search(r"\b8/8\b", frames[-1]), frames[-1]
    assert not any("/50" in f for f in frames)


def test_compare_bar_counts_whole_inner_trainings(capsys):
    compare(problems, CFG, ["neumann", "random"], 3, [0], progress=True)
    frames = _frames(capsys.readouterr().err)
    counts = [m.group(0) for f in frames if (m := re.search(r"\d+(\.\d+)?/\d+(\.\d+)?", f))]
    assert counts, frames
    assert all(re.fullmatch(r"\d+/6", c) for c in counts), counts
    assert counts[-1] == "6/6"


def test_column_format_is_one_format_for_the_whole_column():
    assert column_format([0.54666, 1.2043, 12.5]) == ".4f"
    assert column_format([0.5, 2e-5]) == ".3e"
    assert column_format([0.0, 0.001]) == ".4f"
    assert f"{0.54666:{column_format([0.54666, 1.2043])}}" == "0.5467"


def test_tune_prints_every_lr_with_the_same_decimals(tmp_path, capsys):
    argv = ["tune", "--inner-steps", "10", "--truncate", "4", "--meta-steps", "2", "--batch-size", "50",
            "--hidden", "16", "--no-progress", "--out", str(tmp_path / "r.json")]
    assert main(argv) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if " lr=" in ln]
    assert len(lines) == 4
    lrs = [re.search(r"lr=(\S+)", ln).group(1) for ln in lines]
    shapes = {re.sub(r"\d", "9", x.split(".", 1)[1]) for x in lrs}
    assert len(shapes) == 1, lrs
    assert len({ln.index("lr=") for ln in lines}) == 1  # the column is aligned
    moms = [re.search(r"momentum=(\S+)", ln).group(1) for ln in lines]
    assert all(re.fullmatch(r"\d\.\d{4}", m) for m in moms), moms
