"""Presence head: model output, BCE terms of the loss, and masks emptied by presence."""


import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nerve_jax import evaluation, losses, parallel, postprocess, step
from nerve_jax.models import unet


@pytest.mark.slow
def test_head_gives_one_logit_per_image():
    x = jnp.zeros((3, 16, 24, 1))
    with_head = unet.UNet(depth=2, base_features=4, presence_head=True)
    outputs, _ = with_head.init_with_output(jax.random.key(0), x)
    assert outputs["logits"].shape == (3, 16, 24, 1) and outputs["presence"].shape == (3,)
    assert outputs["presence"].dtype == jnp.float32
    outputs, _ = unet.UNet(depth=2, base_features=4).init_with_output(jax.random.key(0), x)
    assert "presence" not in outputs


def test_presence_bce_uses_whether_the_mask_has_any_pixel():
    masks = np.zeros((2, 4, 4, 1), np.float32)
    masks[0, 1, 1] = 1.0
    logits = jnp.array([2.0, 3.0])
    expected = optax.sigmoid_binary_cross_entropy(logits, jnp.array([1.0, 0.0]))
    np.testing.assert_allclose(losses.presence_bce_loss(logits, masks), expected, rtol=1e-6)


def test_the_presence_term_joins_when_the_model_has_the_head():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(2, 4, 4, 1)), jnp.float32)
    masks = (rng.random((2, 4, 4, 1)) > 0.5).astype(np.float32)
    presence = jnp.array([0.3, -1.0])
    base = losses.soft_dice_bce({"logits": logits}, {"mask": masks}, dice_smooth=1.0,
                                pixel_bce_weight=2.0)
    total = losses.with_presence(base, {"logits": logits, "presence": presence},
                                 {"mask": masks}, 0.5)
    expected = (losses.soft_dice_loss(logits, masks, 1.0)
                + 2.0 * losses.pixel_bce_loss(logits, masks)
                + 0.5 * losses.presence_bce_loss(presence, masks))
    np.testing.assert_allclose(total, expected, rtol=1e-6)
    no_head = losses.with_presence(base, {"logits": logits}, {"mask": masks}, 0.5)
    np.testing.assert_allclose(no_head, base, rtol=1e-6)


def test_low_presence_empties_the_mask():
    probs = jnp.full((2, 6, 6), 0.9)
    masks = step.masks_from_probabilities(probs, 0.5, 0, jnp.array([0.2, 0.8]), 0.5)
    assert not masks[0].any() and masks[1].all()


@pytest.mark.slow
def test_train_step_learns_presence(test_config):
    config = test_config()
    config.model.presence_head = True
    config.presence_weight = 1.0
    state = step.create_train_state(config, jax.random.key(0))
    h, w = config.image_size
    images = np.zeros((8, h, w, 1), np.float32)
    masks = np.zeros((8, h, w, 1), np.float32)
    images[:4, 8:16, 8:20] = 1.0  # A bright blob exactly where the nerve is, in half the frames.
    masks[:4, 8:16, 8:20] = 1.0
    batch = {"image": images, "mask": masks}
    mesh = parallel.make_mesh()
    state = parallel.replicate(state, mesh)
    train_fn = parallel.parallelize(step.per_device_train_step(config), "shard_map", mesh,
                                    out_batched=(False, False), donate_state=True)
    for _ in range(30):
        state, _ = train_fn(state, batch)
    presence = jax.jit(step.predict_step)(jax.device_get(state), {"image": images})["presence"]
    assert np.all(presence[:4] > 0.5) and np.all(presence[4:] < 0.5), presence


@pytest.mark.slow
@pytest.mark.mutation
def test_the_evaluator_empties_the_masks_of_frames_without_presence(test_config):
    """Every pixel above the threshold, but a presence probability of ~0: the validation Dice
    counts empty masks, 1 on each empty frame and 0 on the frame with a nerve."""
    config = test_config()
    config.model.presence_head = True
    state = step.create_train_state(config, jax.random.key(0))
    head = state.params["PresenceHead_0"]["Dense_0"]
    head["bias"] = head["bias"] - 50.0
    mesh = parallel.make_mesh(jax.devices()[:4])
    state = parallel.replicate(state, mesh)
    h, w = config.image_size
    mask_full = np.zeros((4, 420, 580), bool)
    mask_full[0, 100:150, 300:380] = True
    batch = {"image": np.random.default_rng(0).random((4, h, w, 1), dtype=np.float32),
             "mask_full": mask_full, "valid": np.array([True, True, True, False]),
             "subject": np.ones(4, np.int32), "frame": np.arange(4, dtype=np.int32)}

    def run(presence_threshold):
        settings = postprocess.Settings(threshold=0.0, presence_threshold=presence_threshold)
        return evaluation.Evaluator(config, mesh, settings, "test").run(state, [batch]).scores

    scores = run(0.5)
    assert scores["val_frames"] == 3
    assert scores["val_dice"] == pytest.approx(2 / 3)  # Two empty frames right, one missed.
    assert scores["val_empty_dice"] == pytest.approx(2 / 3)
    full_masks = run(0.0)
    want = 2 * mask_full[0].sum() / (mask_full[0].sum() + 420 * 580)  # Whole-frame masks.
    assert full_masks["val_dice"] == pytest.approx(want / 3, rel=1e-5)
