"""The train-step throughput benchmark, through both parallel wrappers."""

import pytest

from benchmarks import train_throughput

TINY = ["--height", "32", "--width", "48", "--batch", "8", "--features", "4", "--depth", "2",
        "--steps", "1", "--warmup", "0"]


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["shard_map", "pmap"])
def test_main_runs_the_donating_step(parallel):
    record = train_throughput.main([*TINY, "--parallel", parallel])
    assert record["parallel"] == parallel and record["steps"] == 1
    assert {"images_per_s", "step_s_min", "step_s_median"} <= set(record)
    assert ("mfu" in record) == (parallel == "shard_map")  # Cost analysis: jitted step only.
