"""The meta-step benchmark: --quick output schema, the probe's measurement, the ratio table (never speed)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from benchmarks import _probe
from benchmarks.bench_meta_step import cpu_table, merge_rounds, ratio_table, round_ratios

ROW_KEYS = {"method": str, "inner_steps": int, "wall_s": float, "hypergrad_s": (float, type(None)),
            "peak_mib": float, "total_peak_mib": float, "baseline_mib": float, "reps": int,
            "wall_s_all": list, "num_hyperparameters": int}


def _check_row(row: dict) -> None:
    for key, typ in ROW_KEYS.items():
        assert key in row, key
        assert isinstance(row[key], typ), (key, row[key])
    assert "truncate" in row
    assert len(row["wall_s_all"]) == row["reps"]
    assert row["wall_s"] > 0 and math.isfinite(row["wall_s"])
    # The kernel updates VmHWM from per-thread RSS counters lazily: allow it to trail VmRSS by < 1 MiB.
    assert row["total_peak_mib"] >= row["baseline_mib"] - 1.0 and row["baseline_mib"] > 0
    assert row["peak_mib"] == pytest.approx(row["total_peak_mib"] - row["baseline_mib"])


def test_quick_benchmark_writes_rows_with_the_schema(tmp_path, repo_root):
    out = tmp_path / "bench.json"
    res = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_meta_step", "--quick", "--dataset", "digits",
         "--methods", "bptt,neumann,sgd", "--out", str(out)],
        cwd=repo_root, capture_output=True, text=True, timeout=300, check=False,
    )
    assert res.returncode == 0, res.stderr
    data = json.loads(out.read_text())
    assert data["inner_steps"] == 20 and data["truncate"] == [5, 10] and data["reps"] == 2
    rows = data["rows"]
    # BPTT and SGD once, Neumann-RBP once per K.
    assert [(r["method"], r["truncate"]) for r in rows] == [("bptt", None), ("neumann", 5), ("neumann", 10),
                                                           ("sgd", None)]
    for row in rows:
        _check_row(row)
        assert row["inner_steps"] == 20 and row["dataset"] == "digits"
    assert rows[-1]["hypergrad_s"] is None  # plain SGD has no hypergradient phase
    for row in rows[:-1]:  # the hypergradient phase is part of the meta step
        assert 0 < row["hypergrad_s"] <= row["wall_s"] * 1.5
    assert "| Neumann-RBP | 10 |" in data["markdown"] and "×3.02" in data["markdown"]
    for row in rows:  # CPU seconds beside the wall time, one per timed step
        assert len(row["cpu_s_all"]) == row["reps"] and row["cpu_s"] > 0
    assert "| Neumann-RBP | 10 |" in data["markdown_cpu"]


def test_unknown_method_is_a_usage_error(repo_root):
    res = subprocess.run([sys.executable, "-m", "benchmarks.bench_meta_step", "--methods", "nope"],
                         cwd=repo_root, capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 2 and "unknown method" in res.stderr


def test_probe_measures_in_process():
    row = _probe.measure({"method": "tbptt", "inner_steps": 12, "truncate": 4, "batch_size": 32, "per": "layer",
                          "hyper_batches": 2, "dataset": "digits", "reps": 3})
    _check_row(row)
    assert row["truncate"] == 4 and row["per"] == "layer" and row["batch_size"] == 32
    assert row["num_hyperparameters"] == 2 * 4  # 4 Linear layers, a (lr, momentum) pair each


def test_ratio_table_divides_bptt_by_each_method():
    def row(method, k, wall, growth, total, hyper=None):
        return {"method": method, "truncate": k, "wall_s": wall, "hypergrad_s": hyper, "peak_mib": growth,
                "total_peak_mib": total}

    rows = [row("bptt", None, 9.0, 1000.0, 1400.0, 8.0), row("neumann", 10, 3.0, 5.0, 350.0, 0.2),
            row("sgd", None, 2.0, 1.0, 340.0)]
    table = ratio_table(rows).splitlines()
    neumann = [c.strip() for c in table[3].split("|")[1:-1]]
    # method, K, wall, hypergradient, growth, total, time ratio, paper time, growth ratio, total ratio,
    # paper memory, method / SGD
    assert neumann == ["Neumann-RBP", "10", "3.000", "0.200", "5.0", "350.0", "3.00", "×3.02", "200.00", "4.00",
                       "×4.35", "1.50"]
    sgd = [c.strip() for c in table[4].split("|")[1:-1]]
    assert sgd[3] == "–" and sgd[7] == "–" and sgd[-1] == "1.00"
    gpu = dict(rows[1], gpu_peak_mib=2.5, gpu_total_peak_mib=7.0)  # a GPU row reports the device's memory
    bptt_gpu = dict(rows[0], gpu_peak_mib=500.0, gpu_total_peak_mib=700.0)
    cells = [c.strip() for c in ratio_table([bptt_gpu, gpu]).splitlines()[3].split("|")[1:-1]]
    assert cells[4:6] == ["2.5", "7.0"] and cells[8:10] == ["200.00", "100.00"]



def test_cpu_table_divides_cpu_seconds():
    rows = [{"method": "bptt", "truncate": None, "cpu_s": 6.0}, {"method": "neumann", "truncate": 10, "cpu_s": 2.0},
            {"method": "sgd", "truncate": None, "cpu_s": 1.6}, {"method": "neumann", "truncate": 7}]
    lines = cpu_table(rows).splitlines()
    assert len(lines) == 2 + 3  # the row without cpu_s is left out
    assert [c.strip() for c in lines[3].split("|")[1:-1]] == ["Neumann-RBP", "10", "2.000", "3.00", "×3.02", "1.25"]
    assert [c.strip() for c in lines[2].split("|")[1:-1]][3:] == ["1.00", "–", "3.75"]


def test_phases_add_up_to_the_meta_step():
    from benchmarks.profile_meta_step import PHASES, phases
    from hypergrad.config import RunConfig
    from hypergrad.tuner import TuneConfig, Tuner
    from hypergrad.workloads import build_problem

    cfg = TuneConfig(method="neumann", inner_steps=15, truncate=3, meta_steps=10**6)
    problem, _ = build_problem(RunConfig(dataset="digits"), cfg)
    tuner = Tuner(problem, cfg)
    data = phases(tuner, 2)
    assert len(data["rows"]) == 2 and len(tuner.history) == 2 and data["sgd_cpu_s"] > 0
    for row in data["rows"]:
        assert all(row[k] > 0 for k in PHASES[:4])  # every phase ran and was timed
        assert sum(row[k] for k in PHASES) == pytest.approx(row["meta step"])
    assert "train" not in vars(problem) and "_solve" not in vars(tuner.objective)  # the timers are removed
    assert "| hypergradient solve |" in data["markdown"] and data["wall_ratio_median"] > 0


def test_rounds_merge_to_medians_and_ratios_within_rounds():
    def rows(scale, n10):
        return [{"method": "sgd", "truncate": None, "wall_s": 1.0 * scale, "cpu_s": 1.0, "hypergrad_s": None,
                 "peak_mib": 1.0, "total_peak_mib": 2.0, "baseline_mib": 1.0},
                {"method": "neumann", "truncate": 10, "wall_s": n10 * scale, "cpu_s": n10, "hypergrad_s": 0.1,
                 "peak_mib": 3.0, "total_peak_mib": 4.0, "baseline_mib": 1.0},
                {"method": "bptt", "truncate": None, "wall_s": 3.0 * scale, "cpu_s": 3.0, "hypergrad_s": 2.0,
                 "peak_mib": 9.0, "total_peak_mib": 10.0, "baseline_mib": 1.0}]

    rounds = [rows(1.0, 1.0), rows(2.0, 1.5), rows(4.0, 1.2)]  # the load doubles, then doubles again
    merged = merge_rounds(rounds)
    assert merged[1]["wall_s"] == 3.0 and merged[1]["wall_s_rounds"] == [1.0, 3.0, 4.8] and merged[1]["rounds"] == 3
    assert merge_rounds(rounds[:1]) is rounds[0]
    summary = round_ratios(rounds)
    # within each round the load cancels: BPTT / Neumann = 3 / n10, whatever the scale
    assert summary["ratios"]["BPTT ÷ Neumann-RBP K=10, wall_s"] == pytest.approx([3.0, 2.0, 2.5])
    assert summary["medians"]["Neumann-RBP K=10 ÷ SGD, cpu_s"] == pytest.approx(1.2)
    assert "| BPTT ÷ Neumann-RBP K=10, wall | 2.50 | 2.00 | 3.00 | ×3.02 |" in summary["markdown"]


def test_interleaved_ratios_are_taken_within_rounds():
    from benchmarks.bench_interleaved import measure

    data = measure([3], rounds=2, inner_steps=12, dataset="digits", data_root=None)
    times, ratios = data["times"], data["ratios"]
    assert set(times) == {"sgd", "neumann K=3", "bptt"} and all(len(t["wall_s"]) == 2 for t in times.values())
    want = [b / n for b, n in zip(times["bptt"]["cpu_s"], times["neumann K=3"]["cpu_s"])]
    assert ratios["BPTT ÷ Neumann-RBP K=3"]["cpu"] == pytest.approx(want)
    assert data["medians"]["Neumann-RBP K=3 ÷ SGD"]["wall"] > 0 and "| BPTT ÷ SGD |" in data["markdown"]
