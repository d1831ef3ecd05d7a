"""The benchmarks run (tiny sizes, CPU) so they cannot rot; their figures are not asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_real_size_benchmark_runs_in_tiny_mode(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "real_size.py"), "--tiny", "--repeats", "1",
         "--variants", "bf16,fp8", "--settings", "64x96x17", "--window-seconds", "2", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "real_size_tiny.json").read_text())
    steps = [row for row in report["rows"] if "step" in row]
    assert [(r["variant"], r["setting"]) for r in steps] == [("bf16", "64x96x17"), ("fp8", "64x96x17")]
    assert all(r["step_tflop"] > 0 and r["step"] > 0 for r in steps)
    assert any("compute_per_video_s" in row for row in report["rows"])
    assert "| bf16 | 64x96x17 |" in (tmp_path / "real_size_tiny.md").read_text()
