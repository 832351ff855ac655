"""The objectives against NumPy references written from their definitions (float64)."""

import functools

import chex
import numpy as np
import pytest

from nerve_jax import losses

SHAPE = (3, 6, 5, 1)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, SHAPE).astype(np.float32)
    masks = np.zeros(SHAPE, np.float32)
    masks[0, 1:4, 1:3] = 1.0  # A nerve of 6 pixels.
    masks[2, :, :2] = 1.0  # 12 pixels; frame 1 is empty.
    return logits, masks


def _soft_dice_reference(logits, masks, smooth):
    """1 - (|p·t| + s) / ((|p| + |t|) / 2 + s) per frame."""
    p = _sigmoid(logits.astype(np.float64)).reshape(len(logits), -1)
    t = masks.astype(np.float64).reshape(len(masks), -1)
    return 1.0 - ((p * t).sum(1) + smooth) / ((p.sum(1) + t.sum(1)) / 2 + smooth)


def _bce_reference(logits, targets):
    """-(t log σ(x) + (1 - t) log(1 - σ(x))), elementwise."""
    p = _sigmoid(logits.astype(np.float64))
    return -(targets * np.log(p) + (1 - targets) * np.log(1 - p))


def test_batch_dice_is_minus_the_keras_starters_dice_of_the_whole_batch():
    logits, masks = _inputs()
    p, t = _sigmoid(logits.astype(np.float64)).ravel(), masks.astype(np.float64).ravel()
    want = -(2 * (p * t).sum() + 1.0) / (p.sum() + t.sum() + 1.0)
    got = np.asarray(losses.batch_dice({"logits": logits}, {"mask": masks}, dice_smooth=1.0))
    np.testing.assert_allclose(got, np.full(len(logits), want), rtol=1e-5)


@pytest.mark.parametrize("smooth", [1.0, 500.0])
def test_soft_dice_equals_its_definition(smooth):
    logits, masks = _inputs()
    got = losses.soft_dice_loss(logits, masks, smooth)
    assert got.shape == (3,)
    np.testing.assert_allclose(got, _soft_dice_reference(logits, masks, smooth), rtol=1e-5)


def test_soft_dice_of_a_perfect_confident_prediction_is_near_zero():
    _, masks = _inputs()
    logits = np.where(masks > 0, 30.0, -30.0).astype(np.float32)
    got = np.asarray(losses.soft_dice_loss(logits, masks, 1.0))
    # The empty frame: 1 - s / (P/2 + s) with P = 30 pixels of sigmoid(-30) ~ 0.
    np.testing.assert_allclose(got, [0.0, 0.0, 0.0], atol=1e-6)


def test_pixel_bce_is_the_mean_over_pixels():
    logits, masks = _inputs(1)
    got = losses.pixel_bce_loss(logits, masks)
    want = _bce_reference(logits, masks).reshape(3, -1).mean(1)
    assert got.shape == (3,)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_presence_bce_targets_whether_the_frame_has_a_nerve():
    _, masks = _inputs()
    presence_logits = np.array([1.5, 0.7, -2.0], np.float32)
    got = losses.presence_bce_loss(presence_logits, masks)
    want = _bce_reference(presence_logits, np.array([1.0, 0.0, 1.0]))
    np.testing.assert_allclose(got, want, rtol=1e-5)


def _loss_config(**fields):
    import ml_collections

    return ml_collections.ConfigDict({"loss": "soft_dice+bce", "loss_args": {},
                                      "dice_smooth": 2.0, "presence_weight": 0.0,
                                      "pixel_bce_weight": 0.0, **fields})


def test_the_configured_loss_weights_each_term():
    logits, masks = _inputs(2)
    presence_logits = np.array([0.3, -1.0, 2.0], np.float32)
    dice = _soft_dice_reference(logits, masks, 2.0)
    pixel = _bce_reference(logits, masks).reshape(3, -1).mean(1)
    presence = _bce_reference(presence_logits, np.array([1.0, 0.0, 1.0]))
    batch = {"mask": masks}
    with_head = {"logits": logits, "presence": presence_logits}
    loss = losses.from_config(_loss_config(presence_weight=0.25, pixel_bce_weight=3.0))
    np.testing.assert_allclose(loss(with_head, batch), dice + 0.25 * presence + 3.0 * pixel,
                               rtol=1e-5)
    only_dice = losses.from_config(_loss_config())
    np.testing.assert_allclose(only_dice(with_head, batch), dice, rtol=1e-5)
    no_head = losses.from_config(_loss_config(presence_weight=0.25))
    np.testing.assert_allclose(no_head({"logits": logits}, batch), dice, rtol=1e-5)
    pure_dice = losses.from_config(_loss_config(loss="soft_dice", pixel_bce_weight=3.0))
    np.testing.assert_allclose(pure_dice({"logits": logits}, batch), dice, rtol=1e-5)


class LossesUnderJitAndWithout(chex.TestCase):
    """The registered losses and the configured loss, traced and eager, against the references."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_soft_dice_bce(self):
        logits, masks = _inputs(3)
        fn = self.variant(functools.partial(losses.soft_dice_bce, dice_smooth=2.0,
                                            pixel_bce_weight=0.5))
        want = (_soft_dice_reference(logits, masks, 2.0)
                + 0.5 * _bce_reference(logits, masks).reshape(3, -1).mean(1))
        np.testing.assert_allclose(fn({"logits": logits}, {"mask": masks}), want, rtol=1e-5)

    @chex.variants(with_jit=True, without_jit=True)
    def test_configured_loss_with_presence(self):
        logits, masks = _inputs(4)
        presence_logits = np.array([0.5, 1.5, -0.5], np.float32)
        fn = self.variant(losses.from_config(_loss_config(loss="soft_dice",
                                                          presence_weight=2.0)))
        got = fn({"logits": logits, "presence": presence_logits}, {"mask": masks})
        want = (_soft_dice_reference(logits, masks, 2.0)
                + 2.0 * _bce_reference(presence_logits, np.array([1.0, 0.0, 1.0])))
        np.testing.assert_allclose(got, want, rtol=1e-5)
