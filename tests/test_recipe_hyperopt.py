"""The §5.3 recipe: grid parsing, one tiny grid on digits in both settings, resume, the summary and plots."""

from __future__ import annotations

import json
import math

import pytest

from recipes.hyperopt_mnist import plot as hplot
from recipes.hyperopt_mnist import run as hrun

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:matplotlib")


def test_recipe_file_is_the_papers_setting():
    recipe = hrun.load_recipe()
    assert recipe["dataset"] == "mnist" and recipe["n_train"] == 10_000 and recipe["hidden"] == [50, 50, 50]
    assert recipe["methods"] == ["bptt", "tbptt", "rbp", "cg", "neumann"] and len(recipe["seeds"]) >= 3
    paper_grid = {(100, 50), (500, 50), (1000, 50), (1500, 50), (100, 100), (500, 100), (1500, 100)}
    assert {(g["inner_steps"], g["truncate"]) for g in recipe["grid"]} == paper_grid  # the paper's seven points
    assert recipe["settings"]["paper"] == {"meta_loss": "train", "fixed_point_batch": "full", "batch_size": 200}
    assert recipe["settings"]["default"]["meta_loss"] == "val"


def test_parse_grid_and_bad_input(tmp_path):
    assert hrun.parse_grid("100x50, 1500x100") == [(100, 50), (1500, 100)]
    for bad in ("100", "50x100", "ax3", "0x0"):
        with pytest.raises(ValueError, match="TxK"):
            hrun.parse_grid(bad)
    cfg = tmp_path / "bad.toml"
    cfg.write_text('dataset = "mnist"\nmethods = ["bptt", "magic"]\nseeds = [0]\ngrid = []\n[settings.default]\n')
    with pytest.raises(ValueError, match="unknown method 'magic'"):
        hrun.load_recipe(cfg)


def test_jobs_order_and_meta_steps_per_setting():
    recipe = hrun.load_recipe()
    jobs = hrun.jobs_from(recipe, ["paper", "default"], [(100, 50)], ["bptt", "neumann"], [0, 1], None)
    assert [(j.setting, j.seed, j.method) for j in jobs[:4]] == [
        ("paper", 0, "bptt"), ("paper", 0, "neumann"), ("paper", 1, "bptt"), ("paper", 1, "neumann")]
    point = next(g for g in recipe["grid"] if (g["inner_steps"], g["truncate"]) == (100, 50))
    assert {j.meta_steps for j in jobs if j.setting == "paper"} == {point["meta_steps"]["paper"]}
    assert {j.meta_steps for j in hrun.jobs_from(recipe, ["paper"], None, ["bptt"], [0], 2)} == {2}


def test_tiny_grid_on_digits_runs_resumes_and_plots(tmp_path):
    out = tmp_path / "runs"
    argv = ["--dataset", "digits", "--grid", "12x4", "--methods", "bptt,tbptt,neumann", "--seeds", "0,1",
            "--meta-steps", "2", "--out", str(out), "--no-progress"]
    assert hrun.main(argv) == 0
    files = sorted(out.glob("*/T12_K4/*.json"))
    assert len(files) == 2 * 3 * 2  # settings x methods x seeds
    runs = {f: json.loads(f.read_text()) for f in files}
    for run in runs.values():
        assert len(run["history"]) == 2 and run["num_hyperparameters"] == 16
        assert math.isfinite(run["final_meta_loss"]) and math.isfinite(run["final_train_loss"])
        if run["job"]["setting"] == "paper":  # the meta loss is the training loss there
            assert run["config"]["meta_loss"] == "train" and run["config"]["fixed_point_batch"] == "full"
            assert run["final_meta_loss"] == pytest.approx(run["final_train_loss"])
    # The same seed gives every method the same first inner run, hence the same first meta loss.
    for setting in ("paper", "default"):
        for seed in (0, 1):
            first = {r["job"]["method"]: r["history"][0]["meta_loss"] for r in runs.values()
                     if r["job"]["setting"] == setting and r["job"]["seed"] == seed}
            assert len(first) == 3 and max(first.values()) - min(first.values()) < 1e-6
    # BPTT through all T=12 steps differs from TBPTT(4): the second meta loss differs.
    b = next(r for r in runs.values() if r["job"]["method"] == "bptt" and r["job"]["setting"] == "default")
    t = next(r for r in runs.values() if r["job"]["method"] == "tbptt" and r["job"]["setting"] == "default"
             and r["job"]["seed"] == b["job"]["seed"])
    assert b["history"][1]["meta_loss"] != t["history"][1]["meta_loss"]
    # Resume: finished runs are skipped and left untouched.
    stamps = {f: f.stat().st_mtime_ns for f in files}
    assert hrun.main(argv) == 0
    assert {f: f.stat().st_mtime_ns for f in files} == stamps
    # Summary, table and figures.
    rows = hplot.summarize(hplot.load_runs(out))
    assert len(rows) == 2 * 3 and all(r["seeds"] == [0, 1] for r in rows)
    assert "| default | 12 | 4 | Neumann-RBP | 2 | 2 |" in hplot.markdown(rows)
    figdir = tmp_path / "fig"
    (out / "checkgrad_default_T12_K4.json").write_text(json.dumps({"rows": [
        {"method": "bptt", "cosine_vs_bptt": 1.0, "rel_error_vs_bptt": 0.0, "norm": 1.0, "seconds": 0.1},
        {"method": "neumann", "cosine_vs_bptt": 0.5, "rel_error_vs_bptt": 0.9, "norm": 1.0, "seconds": 0.1}]}))
    assert hrun.main(["--plot-only", str(out), "--figdir", str(figdir), "--summary", str(tmp_path / "s.json")]) == 0
    assert (figdir / "hyperopt_default.png").stat().st_size > 0 and (figdir / "hyperopt_paper.png").exists()
    assert (figdir / "hyperopt_cosine.png").exists()
    summary = json.loads((tmp_path / "s.json").read_text())
    assert [r["cosine_vs_bptt"] for r in summary["check_grad"]] == [1.0, 0.5]


def test_quick_runs_every_method_of_the_recipe_once(tmp_path, capsys):
    out = tmp_path / "quick"
    assert hrun.main(["--quick", "--out", str(out), "--no-progress"]) == 0
    files = sorted(out.glob("*/T12_K4/*.json"))
    assert {f.name for f in files} == {f"{m}_seed0.json" for m in ("bptt", "tbptt", "rbp", "cg", "neumann")}
    assert {f.parent.parent.name for f in files} == {"paper", "default"}
    for f in files:
        run = json.loads(f.read_text())
        assert run["dataset"] == "digits" and len(run["history"]) == 2
    assert "Neumann-RBP  seed 0: meta loss" in capsys.readouterr().out
    # --plot-only with no path reads --out; the table names methods by their labels.
    assert hrun.main(["--plot-only", "--out", str(out)]) == 0
    assert "| paper | 12 | 4 | CG-RBP | 1 | 2 |" in capsys.readouterr().out


def test_cli_rejects_bad_flags(tmp_path, capsys):
    for argv in (["--methods", "cg_rbp"], ["--seeds", "3-1"], ["--out-dir", str(tmp_path)],
                 ["--plot-only", str(tmp_path / "nothing")]):
        with pytest.raises(SystemExit) as exc:
            hrun.main(argv)
        assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "choose from bptt, tbptt, rbp, cg, neumann, gmres" in err and "no runs under" in err


def test_parse_checkgrad_stdout_reads_each_table():
    block = ("hypergradients at the initial hyperparameters (mnist, T={t}, K=50, M=4, seed 0); reference: BPTT\n"
             "method     cosine    rel.err       norm  seconds\n"
             "bptt       1.0000     0.0000     0.0121    11.07\n"
             "neumann    {c}     1.0484   0.004617     4.24\n")
    text = "noise\n" + block.format(t=1000, c="0.0608") + "hypergrad: error: x\n" + block.format(t=100, c="-0.5000")
    rows = hplot.parse_checkgrad_stdout(text, ["default", "paper"])
    assert [(r["setting"], r["inner_steps"], r["method"], r["cosine_vs_bptt"]) for r in rows] == [
        ("default", 1000, "bptt", 1.0), ("default", 1000, "neumann", 0.0608),
        ("paper", 100, "bptt", 1.0), ("paper", 100, "neumann", -0.5)]
    with pytest.raises(ValueError, match="2 check-grad tables but 1 settings"):
        hplot.parse_checkgrad_stdout(text, ["default"])
