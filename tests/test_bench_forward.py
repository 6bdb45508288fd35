"""The forward-mode benchmark: --quick schema, one in-process measurement, the grid, the page (never speed)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from benchmarks import bench_forward as bench

ROW_KEYS = {"method": str, "label": str, "per": str, "num_hyperparameters": int, "inner_steps": int,
            "batch_size": int, "wall_s": float, "cpu_s": float, "ms_per_step": float, "peak_mib": float,
            "total_peak_mib": float, "baseline_mib": float, "grad_norm": float, "meta_loss": float, "threads": int,
            "loadavg": float}


def _check_row(row: dict) -> None:
    for key, typ in ROW_KEYS.items():
        assert isinstance(row.get(key), typ), (key, row.get(key))
    assert row["wall_s"] > 0 and math.isfinite(row["wall_s"]) and row["cpu_s"] > 0
    assert row["grad_norm"] > 0 and math.isfinite(row["grad_norm"])
    assert (row["truncate"] is None) == (row["method"] != "neumann")
    # VmHWM may trail VmRSS by < 1 MiB (the kernel updates it lazily)
    assert row["total_peak_mib"] >= row["baseline_mib"] - 1.0 and row["baseline_mib"] > 0
    assert row["peak_mib"] == pytest.approx(row["total_peak_mib"] - row["baseline_mib"])
    assert row["num_hyperparameters"] == bench.PERS[row["per"]]


def test_quick_benchmark_writes_rows_and_the_page(tmp_path, repo_root):
    out = tmp_path / "forward.json"
    res = subprocess.run([sys.executable, "-m", "benchmarks.bench_forward", "--quick", "--out", str(out)],
                         cwd=repo_root, capture_output=True, text=True, timeout=600, check=False)
    assert res.returncode == 0, res.stderr
    data = json.loads(out.read_text())
    assert data["inner_steps"] == [5, 20] and data["per"] == ["global"] and data["skipped"] == []
    assert [(r["method"], r["inner_steps"]) for r in data["rows"]] == [
        (m, t) for t in (5, 20) for m in ("forward", "bptt", "neumann")]
    for row in data["rows"]:
        _check_row(row)
    page = (tmp_path / "forward.md").read_text()
    assert page == data["markdown"]
    for part in ("**Question.**", "**Setup.**", "**Command.** `python -m benchmarks.bench_forward --quick`",
                 "| Hyperparameters | T | Forward-mode CPU s |", "| 2 (global) | 20 |", "**Conclusion.**"):
        assert part in page, part


def test_one_measurement_in_process():
    row = bench.measure({"method": "forward", "per": "layer", "inner_steps": 4, "batch_size": 32, "truncate": 10})
    _check_row(row)
    assert row["num_hyperparameters"] == 8 and row["truncate"] is None


def test_the_grid_leaves_out_the_capped_cells():
    args = bench.parse_args(["--steps", "100,1000,10000", "--per", "global,layer", "--bptt-max-steps", "1000",
                             "--forward-max-steps", "layer=1000"])
    runs, skipped = bench.grid(args)
    assert len(runs) + len(skipped) == 2 * 3 * 3
    assert {(s["method"], s["per"], s["inner_steps"]) for s in skipped} == {
        ("bptt", "global", 10000), ("bptt", "layer", 10000), ("forward", "layer", 10000)}
    assert all(r["truncate"] == 10 and r["batch_size"] == 100 for r in runs)
    with pytest.raises(SystemExit):
        bench.parse_args(["--methods", "forward,magic"])


def _row(method, per, steps, wall, growth):
    return {"method": method, "per": per, "inner_steps": steps, "wall_s": 2 * wall, "cpu_s": wall,
            "peak_mib": growth, "ms_per_step": 1e3 * wall / steps}


@pytest.mark.parametrize(("last", "flat"), [(5.5, True), (60.0, False)])
def test_the_conclusion_follows_the_numbers(last: float, flat: bool):
    rows = [_row("forward", "tensor", 100, 2.0, 5.0), _row("forward", "tensor", 10000, 200.0, last),
            _row("bptt", "tensor", 100, 0.5, 40.0), _row("neumann", "tensor", 100, 0.1, 0.2),
            _row("neumann", "tensor", 10000, 5.0, 0.3)]
    data = {"rows": rows, "per": ["tensor"], "inner_steps": [100, 10000], "methods": list(bench.METHODS),
            "truncate": 10, "batch_size": 100, "command": bench.COMMAND, "skipped": [],
            "machine": {"cpu_count": 2, "loadavg_at_start": [1.0, 1.0, 1.0]}}
    text = bench.conclusion(data)
    assert ("does not depend on T" in text) == flat and ("changes with T" in text) == (not flat)
    assert "410 KiB per step" in text and "fastest in every row" in text and "takes 4.0× BPTT's time" in text
    assert "| 16 (tensor) | 10,000 | 200.00 |" in bench.markdown(data)
