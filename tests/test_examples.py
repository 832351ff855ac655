"""The worked extensions in examples/: each checked against its definition, and trained on
synthetic data through the config string its config uses."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from examples import cutmix, focal_tversky
from nerve_jax import config_util, losses, train
from nerve_jax.submit import inference


@pytest.mark.parametrize("name", ["focal_tversky", "gn_resunet", "cutmix"])
def test_the_example_configs_pass_the_check(name):
    config = config_util.load_config_file(f"configs/example_{name}.py")
    config_util.check(config, devices=8, processes=1)


def test_focal_tversky_is_soft_dice_at_half_half_and_gamma_one():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(3, 8, 6, 1)), jnp.float32)
    masks = (rng.random((3, 8, 6, 1)) > 0.6).astype(np.float32)
    masks[1] = 0.0  # A frame without a nerve.
    got = focal_tversky.focal_tversky({"logits": logits}, {"mask": masks}, alpha=0.5, beta=0.5,
                                      gamma=1.0, smooth=3.0)
    np.testing.assert_allclose(got, losses.soft_dice_loss(logits, masks, 3.0), rtol=1e-5)


def test_focal_tversky_equals_its_definition():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 8, 6, 1)).astype(np.float32)
    masks = (rng.random((2, 8, 6, 1)) > 0.5).astype(np.float32)
    p = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    tp, fn, fp = ((p * masks).sum((1, 2, 3)), ((1 - p) * masks).sum((1, 2, 3)),
                  (p * (1 - masks)).sum((1, 2, 3)))
    want = (1 - (tp + 2.0) / (tp + 0.7 * fn + 0.3 * fp + 2.0)) ** 0.75
    got = focal_tversky.focal_tversky({"logits": logits}, {"mask": masks}, alpha=0.7, beta=0.3,
                                      gamma=0.75, smooth=2.0)
    np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.mutation
def test_cutmix_pastes_image_and_mask_from_the_same_partner():
    rng = np.random.default_rng(0)
    batch = {"image": jnp.asarray(rng.random((6, 16, 24, 1)), jnp.float32),
             "mask": jnp.asarray(rng.random((6, 16, 24, 1)) > 0.5, jnp.float32)}
    key = jax.random.key(3)
    out = jax.jit(lambda b, k: cutmix.cutmix(b, k, probability=1.0))(batch, key)
    partner_key, _, box_key = jax.random.split(key, 3)
    partners = np.asarray(jax.random.permutation(partner_key, 6))
    boxes = np.asarray(cutmix.box_masks(box_key, 6, 16, 24, 0.2, 0.5))
    image, mask = np.asarray(batch["image"]), np.asarray(batch["mask"])
    np.testing.assert_array_equal(out["image"], np.where(boxes, image[partners], image))
    np.testing.assert_array_equal(out["mask"], np.where(boxes, mask[partners], mask))
    areas = boxes.sum(axis=(1, 2, 3))
    assert np.all(areas >= round(0.2 * 16) * round(0.2 * 24))
    assert np.all(areas <= round(0.5 * 16) * round(0.5 * 24))
    unchanged = cutmix.cutmix(batch, key, probability=0.0)
    np.testing.assert_array_equal(unchanged["image"], batch["image"])


EXAMPLES = {
    "focal_tversky": {"loss": "examples.focal_tversky:focal_tversky",
                      "loss_args": {"alpha": 0.7, "beta": 0.3, "gamma": 0.75, "smooth": 1.0}},
    "gn_resunet": {"model": {"name": "examples.gn_resunet:GroupNormResUNet", "depth": 2,
                             "base_features": 4, "upsample": "pixel_shuffle",
                             "presence_head": False, "dtype": "float32", "groups": 4}},
    "cutmix": {"batch_transform": "examples.cutmix:cutmix",
               "batch_transform_args": {"probability": 0.5}},
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(EXAMPLES))
def test_each_example_trains_evaluates_and_predicts(name, test_config, tiny_kaggle_dir, tmp_path):
    config = test_config()
    for field, value in EXAMPLES[name].items():
        config[field] = value
    config.kaggle_dir, config.tfds_data_dir = tiny_kaggle_dir, str(tmp_path / "tfds")
    config.num_train_steps = 3
    workdir = str(tmp_path / "work")
    result = train.train_and_evaluate(config, workdir)
    records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert all(np.isfinite(r["train_loss"]) for r in records if "train_loss" in r)
    assert (result.state.batch_stats == {}) is (name == "gn_resunet")
    evaluation = inference.evaluate(workdir)  # Restored from its checkpoint.
    assert 0.0 <= evaluation["val_dice"] <= 1.0
    masks = inference.Segmenter.from_workdirs(workdir)(np.zeros((2, 420, 580), np.uint8))
    assert masks.shape == (2, 420, 580) and masks.dtype == bool
