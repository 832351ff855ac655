"""The train-step profile benchmark: categories from a real jax.profiler trace."""

import json

import pytest

from benchmarks import profile_step

TINY = ["--height", "32", "--width", "48", "--batch", "8", "--features", "4", "--depth", "2"]


def test_category_strips_the_instance_number():
    assert profile_step.category("transpose_copy_fusion.12") == "transpose_copy_fusion"
    assert profile_step.category("ynn_fusion") == "ynn_fusion"
    assert profile_step.category("convolution.3") == "convolution"
    assert profile_step.category("ThunkExecutor::Execute") == "ThunkExecutor::Execute"


@pytest.mark.slow
def test_main_reports_fusions_of_the_traced_steps(capsys):
    record = profile_step.main([*TINY, "--steps", "1", "--top", "5"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == record
    categories = record["thread_ms_by_category"]
    assert "wall_ms_per_step" in record
    assert any(name.endswith("fusion") for name in categories), categories
    assert len(record["thread_ms_by_operation"]) == 5
