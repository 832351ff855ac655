import jax.numpy as jnp
import numpy as np

from nerve_jax import metrics
from nerve_jax.submit import postprocess


def _masks(*pairs):
    return jnp.asarray(np.array(pairs, bool))


def test_kaggle_dice_edge_cases():
    empty = np.zeros((4, 5), bool)
    some = empty.copy()
    some[1:3, 1:4] = True  # 6 pixels
    half = empty.copy()
    half[1:3, 1:2] = True  # 2 pixels, inside `some`
    pred = _masks(empty, some, empty, some, half)
    truth = _masks(empty, empty, some, some, some)
    dice = np.asarray(metrics.dice_per_image(pred, truth))
    np.testing.assert_allclose(dice, [1.0, 0.0, 0.0, 1.0, 2 * 2 / (2 + 6)])


def test_empty_baseline():
    truth = np.zeros((3, 4, 5), bool)
    truth[1, 2, 2] = True
    np.testing.assert_array_equal(metrics.empty_baseline_per_image(truth), [1, 0, 1])


def test_small_masks_are_emptied():
    probs = np.zeros((2, 10, 10), np.float32)
    probs[0, :2, :2] = 0.9  # area 4
    probs[1, :5, :5] = 0.9  # area 25
    masks = np.asarray(postprocess.masks_from_probabilities(probs, 0.5, min_area=10))
    assert masks[0].sum() == 0 and masks[1].sum() == 25


def test_full_resolution_upsampling_shape():
    logits = jnp.zeros((2, 32, 48, 1))
    assert postprocess.full_resolution_probabilities(logits).shape == (2, 420, 580)
