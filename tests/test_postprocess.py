"""Host-side post-processing on hand-made masks: components, holes, ellipses, presence."""

import dataclasses
import json

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy import ndimage
from skimage import draw, measure

from nerve_jax import metrics, postprocess, step
from nerve_jax.errors import UserError

SHAPE = (420, 580)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(metrics.dice_per_image(a[None], b[None])[0])


def _blobs(*boxes) -> np.ndarray:
    mask = np.zeros(SHAPE, bool)
    for top, bottom, left, right in boxes:
        mask[top:bottom, left:right] = True
    return mask


def test_keep_largest_component():
    mask = _blobs((10, 20, 10, 20), (100, 150, 200, 260), (300, 305, 500, 505))
    np.testing.assert_array_equal(postprocess.keep_largest_component(mask),
                                  _blobs((100, 150, 200, 260)))
    assert not postprocess.keep_largest_component(np.zeros(SHAPE, bool)).any()


def test_components_are_8_connected():
    mask = _blobs((50, 53, 50, 53))
    mask[5, 5] = mask[6, 6] = True  # Diagonal neighbours: one component of 2 pixels.
    np.testing.assert_array_equal(postprocess.drop_small_components(mask, 2), mask)
    np.testing.assert_array_equal(postprocess.drop_small_components(mask, 3),
                                  _blobs((50, 53, 50, 53)))


def test_drop_small_components_keeps_those_at_the_minimum():
    mask = _blobs((10, 20, 10, 20), (100, 110, 200, 210), (300, 305, 500, 505))  # 100, 100, 25
    np.testing.assert_array_equal(postprocess.drop_small_components(mask, 100),
                                  _blobs((10, 20, 10, 20), (100, 110, 200, 210)))
    np.testing.assert_array_equal(postprocess.drop_small_components(mask, 0), mask)


def test_fill_holes_fills_enclosed_background_only():
    ring = _blobs((100, 140, 200, 260))
    ring[110:130, 210:250] = False
    filled = postprocess.fill_holes(ring)
    np.testing.assert_array_equal(filled, _blobs((100, 140, 200, 260)))
    # A "hole" open to the frame's edge is not a hole.
    cup = _blobs((0, 40, 0, 60))
    cup[0:30, 10:50] = False
    np.testing.assert_array_equal(postprocess.fill_holes(cup), cup)


def test_fill_holes_equals_filling_the_whole_frame():
    rng = np.random.default_rng(0)
    for _ in range(5):
        mask = ndimage.gaussian_filter(rng.random(SHAPE), 4) > 0.515
        mask[:, :200] = False  # Leave part of the frame empty, so the window matters.
        np.testing.assert_array_equal(postprocess.fill_holes(mask),
                                      ndimage.binary_fill_holes(mask))


def test_ellipse_fit_recovers_a_drawn_ellipse():
    truth = np.zeros(SHAPE, bool)
    truth[draw.ellipse(160, 360, 66, 34, shape=SHAPE, rotation=0.6)] = True
    jagged = truth.copy()
    jagged[::7, ::5] = False  # Speckle and a bite out of the edge.
    jagged[150:170, 300:330] = False
    fitted = postprocess.fit_ellipses(jagged)
    assert _dice(fitted, truth) > 0.95
    assert _dice(postprocess.fit_ellipses(truth), truth) > 0.98


def test_ellipses_match_regionprops():
    rng = np.random.default_rng(1)
    mask = ndimage.gaussian_filter(rng.random((150, 200)), 3) > 0.52
    ours = postprocess.component_ellipses(mask)
    regions = measure.regionprops(measure.label(mask, connectivity=2))
    assert len(ours) == len(regions) > 10
    for ellipse, region in zip(ours, regions, strict=True):
        np.testing.assert_allclose([ellipse.row, ellipse.col], region.centroid, atol=1e-9)
        np.testing.assert_allclose(
            [ellipse.row_radius, ellipse.col_radius],
            [max(region.axis_major_length / 2, 0.5), max(region.axis_minor_length / 2, 0.5)],
            atol=1e-9)
        if region.axis_major_length > region.axis_minor_length + 1e-6:
            assert abs(np.sin(ellipse.rotation - region.orientation)) < 1e-9


def test_presence_threshold_empties_the_frame():
    probs = np.zeros(SHAPE, np.float32)
    probs[100:150, 200:260] = 0.9
    params = postprocess.Settings(presence_threshold=0.6)
    emptied = postprocess.apply(probs, 0.59, params)
    assert emptied.dtype == bool and emptied.shape == SHAPE and not emptied.any()
    assert postprocess.apply(probs, 0.6, params).sum() == 50 * 60


def test_apply_composes_the_steps():
    probs = np.zeros(SHAPE, np.float32)
    probs[100:160, 200:280] = 0.8  # The nerve, with a hole ...
    probs[120:130, 230:240] = 0.1
    probs[300:310, 100:110] = 0.7  # ... and a small false positive.
    params = postprocess.Settings(threshold=0.5, largest_component_only=True, fill_holes=True)
    np.testing.assert_array_equal(postprocess.apply(probs, 1.0, params),
                                  _blobs((100, 160, 200, 280)))
    small = postprocess.Settings(threshold=0.5, min_component_area=101)
    assert postprocess.apply(probs, 1.0, small).sum() == 60 * 80 - 100
    too_small = postprocess.Settings(threshold=0.5, min_mask_area=60 * 80 + 1)  # 4800 in all.
    assert not postprocess.apply(probs, 1.0, too_small).any()
    ellipse = postprocess.Settings(largest_component_only=True, fill_holes=True, ellipse_fit=True)
    fitted = postprocess.apply(probs, 1.0, ellipse)
    assert _dice(fitted, _blobs((100, 160, 200, 280))) > 0.85 and not fitted[300:310].any()


def test_config_params_match_the_training_time_masks():
    rng = np.random.default_rng(2)
    probs = ndimage.gaussian_filter(rng.random((6, *SHAPE)), (0, 5, 5)).astype(np.float32) * 2 - 0.5
    presence = np.array([0.1, 0.9, 0.5, 0.7, 0.3, 1.0], np.float32)
    config = ml_collections.ConfigDict({**dataclasses.asdict(postprocess.Settings()),
                                        "threshold": 0.45, "min_mask_area": 1500})
    params = postprocess.Settings.from_config(config)
    assert params == postprocess.Settings(threshold=0.45, min_mask_area=1500)
    expected = step.masks_from_probabilities(jnp.asarray(probs), 0.45, 1500,
                                                    jnp.asarray(presence), 0.5)
    np.testing.assert_array_equal(postprocess.apply_batch(probs, presence, params), expected)


def test_mean_probability_logit():
    logits = jnp.array([[-30.0, 0.0, 2.0, 40.0], [-10.0, 1.0, -2.0, 35.0]])
    mean = np.asarray(step.mean_probability_logit(logits))
    probs = 1 / (1 + np.exp(-np.asarray(logits, np.float64)))
    np.testing.assert_allclose(1 / (1 + np.exp(-mean)), probs.mean(0), rtol=1e-6)
    np.testing.assert_allclose(mean[:3], np.log(probs.mean(0) / (1 - probs.mean(0)))[:3],
                               rtol=1e-5, atol=1e-6)
    assert np.isfinite(mean).all()


def test_params_file_round_trip_and_errors(tmp_path):
    params = postprocess.Settings(0.55, 500, True, False, True, 2000, 0.4)
    postprocess.save(str(tmp_path), params, {"note": "x"})
    assert postprocess.load(str(tmp_path)) == (params, {"note": "x"})
    assert postprocess.load(str(tmp_path / "nothing")) is None
    path = tmp_path / postprocess.POSTPROCESS_FILE
    assert json.loads(path.read_text())["settings"] == params.__dict__
    path.write_text(json.dumps({"params": params.__dict__, "note": "y"}))  # Earlier versions.
    assert postprocess.load(str(tmp_path)) == (params, {"note": "y"})
    path.write_text("{not json")
    with pytest.raises(UserError, match=str(path)):
        postprocess.load(str(tmp_path))
    path.write_text(json.dumps({"params": {"threshold": 0.5}}))
    with pytest.raises(UserError, match="exactly the fields"):
        postprocess.load(str(tmp_path))
    bad = {**params.__dict__, "fill_holes": "yes"}
    path.write_text(json.dumps({"params": bad}))
    with pytest.raises(UserError, match="fill_holes"):
        postprocess.load(str(tmp_path))
    for name, value in [("threshold", "0.5"), ("min_mask_area", None), ("ellipse_fit", 1)]:
        path.write_text(json.dumps({"params": {**params.__dict__, name: value}}))
        with pytest.raises(UserError, match=f"{name}={value!r} should be a"):
            postprocess.load(str(tmp_path))


def _bilinear_half_pixel(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling with pixel centres at (i + 0.5) * scale, edges clamped (NumPy)."""
    def weights(n_in, n_out):
        x = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        low = np.minimum(np.floor(x).astype(int), n_in - 2)
        frac = x - low
        matrix = np.zeros((n_out, n_in))
        matrix[np.arange(n_out), low] = 1 - frac
        matrix[np.arange(n_out), low + 1] = frac
        return matrix

    return weights(image.shape[0], shape[0]) @ image @ weights(image.shape[1], shape[1]).T


def test_full_resolution_probabilities_are_the_bilinear_upsampling_of_the_sigmoid():
    logits = np.random.default_rng(3).normal(0, 3, (2, 12, 20, 1)).astype(np.float32)
    got = np.asarray(step.full_resolution_probabilities(jnp.asarray(logits)))
    assert got.shape == (2, 420, 580) and got.dtype == np.float32
    for frame, out in zip(logits[..., 0].astype(np.float64), got, strict=True):
        want = _bilinear_half_pixel(1 / (1 + np.exp(-frame)), (420, 580))
        np.testing.assert_allclose(out, want, atol=2e-6)
