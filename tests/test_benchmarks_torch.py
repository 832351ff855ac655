"""Smoke tests of the PyTorch reference benchmark (skipped without the `bench` extra)."""

import math

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from benchmarks import torch_reference  # noqa: E402  (pytest puts the repo root on sys.path)
from nerve_jax import losses, step  # noqa: E402

TINY = ["--height", "32", "--width", "48", "--batch", "2", "--features", "4", "--depth", "2",
        "--warmup", "0", "--threads", "1"]  # 1 thread: tiny ops stall on a busy shared CPU.
KEYS = ("framework", "torch", "images_per_s", "step_s_median", "step_s_min", "compile_s",
        "peak_rss_mb", "gflop_per_image", "gflop_per_image_analytic", "mfu", "height", "width",
        "batch", "features", "depth", "upsample", "steps", "channels_last")


def test_main_reports_json_and_loss_decreases(capsys):
    threads = torch.get_num_threads()
    try:
        record = torch_reference.main([*TINY, "--steps", "3"])
    finally:
        torch.set_num_threads(threads)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("{") and '"framework": "torch"' in last
    for key in KEYS:
        assert key in record, key
    assert record["framework"] == "torch" and record["steps"] == 3
    assert math.isfinite(record["loss_first"]) and math.isfinite(record["loss_last"])
    assert record["loss_last"] < record["loss_first"]
    # FlopCounterMode counts the same convolutions, minus the first layer's unneeded input grad.
    assert record["gflop_per_image"] == pytest.approx(record["gflop_per_image_analytic"],
                                                      rel=0.02)


@pytest.mark.parametrize("upsample", ["pixel_shuffle", "transpose"])
def test_param_count_matches_flax(test_config, upsample):
    config = test_config()
    config.model.upsample = upsample
    # Shapes only (no XLA compilation): BatchNorm statistics live in state.batch_stats.
    state = jax.eval_shape(lambda: step.create_train_state(config, jax.random.key(0)))
    flax_params = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
    model = torch_reference.UNet(config.model.depth, config.model.base_features, upsample)
    assert torch_reference.num_params(model) == flax_params


def test_loss_matches_optax():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 8, 12, 1)).astype(np.float32)
    masks = (rng.random((3, 8, 12, 1)) > 0.6).astype(np.float32)
    expected = np.asarray(losses.soft_dice_loss(logits, masks))
    got = torch_reference.soft_dice_loss(torch.from_numpy(logits).permute(0, 3, 1, 2),
                                         torch.from_numpy(masks).permute(0, 3, 1, 2))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)
