"""benchmarks/device_check.py, the prepared script for a lent GPU, runs end to end in its smoke
mode on the CPU, so that it works when a GPU comes."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_device_check_smoke_runs_every_stage(tmp_path):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    result = subprocess.run([sys.executable, "benchmarks/device_check.py", "--smoke", "--out",
                             str(tmp_path)], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with open(tmp_path / "device_check.json") as f:
        report = json.load(f)
    assert {row["dtype"] for row in report["train"]} == {"float32", "bfloat16"}
    assert all(row["images_per_s"] > 0 and row["tflops_per_s"] > 0 for row in report["train"])
    assert all(row["xla_total_gib"] > row["xla_temp_gib"] > 0 for row in report["train"])
    assert report["train"][0]["aot"] == {"skipped": "no aot target for 2 x cpu"}
    assert report["inference"]["images_per_s"] > 0
    assert [row["prefetch"] for row in report["input"]] == [False, True]
    assert 0 < report["input"][0]["host_input_share"] < 1
    assert 0 <= report["quickstart"]["val_dice"] <= 1
    assert report["kaggle"]["folds_trained"] == 1 and report["kaggle"]["projected_1_fold_s"] > 0
