import chex
import jax.numpy as jnp
import numpy as np

from nerve_jax import metrics, step


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
    masks = np.asarray(step.masks_from_probabilities(probs, 0.5, min_area=10))
    assert masks[0].sum() == 0 and masks[1].sum() == 25


def test_full_resolution_upsampling_shape():
    logits = jnp.zeros((2, 32, 48, 1))
    assert step.full_resolution_probabilities(logits).shape == (2, 420, 580)


class MetricsUnderJitAndWithout(chex.TestCase):
    """The Kaggle Dice and the registered metrics, traced and eager, against NumPy."""

    def _frames(self):
        rng = np.random.default_rng(0)
        pred = rng.random((4, 20, 30)) > 0.6
        truth = rng.random((4, 20, 30)) > 0.7
        pred[1], truth[1] = False, False  # Both empty: 1.
        pred[2] = False  # A missed nerve: 0.
        return pred, truth

    @chex.variants(with_jit=True, without_jit=True)
    def test_dice_iou_and_presence_accuracy(self):
        pred, truth = self._frames()
        inter = (pred & truth).sum((1, 2))
        total, union = pred.sum((1, 2)) + truth.sum((1, 2)), (pred | truth).sum((1, 2))
        dice = np.where(total == 0, 1.0, 2 * inter / np.maximum(total, 1))
        iou = np.where(union == 0, 1.0, inter / np.maximum(union, 1))
        presence = (pred.any((1, 2)) == truth.any((1, 2))).astype(float)
        np.testing.assert_allclose(self.variant(metrics.dice_per_image)(pred, truth), dice,
                                   rtol=1e-6)
        predictions, batch = {"masks": pred}, {"mask_full": truth}
        np.testing.assert_allclose(self.variant(metrics.iou)(predictions, batch), iou, rtol=1e-6)
        np.testing.assert_array_equal(
            self.variant(metrics.presence_accuracy)(predictions, batch), presence)
        assert dice[1] == 1.0 and dice[2] == 0.0 and presence[2] == 0.0
