"""Contradictory near-duplicates: the pure functions, detection quality on synthetic twins, and
config.clean ("keep", "drop", "relabel") in the training pipeline."""

import json
import logging
import os

import numpy as np
import pytest

from nerve_jax.data import duplicates, pipeline, synthetic
from nerve_jax.data.duplicates import Pair
from nerve_jax.data.kaggle import HEIGHT, WIDTH, read_tiff

# --- Pure functions ----------------------------------------------------------------------------


def _frame(rng: np.random.Generator, period: float) -> np.ndarray:
    """[420, 580] uint8: a smooth pattern (rows and cols of `period` px) plus speckle-like noise."""
    rows, cols = np.mgrid[:HEIGHT, :WIDTH]
    pattern = 120 + 60 * np.sin(rows / period) * np.cos(cols / (1.3 * period))
    return np.clip(pattern + rng.normal(0, 20, pattern.shape), 0, 255).astype(np.uint8)


def test_frame_signature_shape_and_brightness_contrast_invariance():
    rng = np.random.default_rng(0)
    image = _frame(rng, 30.0)
    signature = duplicates.frame_signature(image)
    assert signature.dtype == np.float32 and signature.ndim == 1 and abs(signature.mean()) < 1e-5
    dimmer = np.round(image * 0.8 + 30).astype(np.uint8)
    np.testing.assert_allclose(duplicates.frame_signature(dimmer), signature, atol=0.02)
    other = _frame(rng, 45.0)
    assert np.abs(duplicates.frame_signature(other) - signature).max() > 0.5


def test_frame_signature_is_in_units_of_the_speckle_level():
    # Halves at 100 and 140 grey under noise of standard deviation 10: cells hold -2 and +2.
    image = np.where(np.arange(WIDTH) < WIDTH // 2, 100.0, 140.0)[None, :].repeat(HEIGHT, 0)
    image += np.random.default_rng(2).normal(0.0, 10.0, image.shape)
    signature = duplicates.frame_signature(np.round(image).astype(np.uint8))
    np.testing.assert_allclose(np.abs(signature), 2.0, atol=0.15)


def test_pairwise_distances_are_root_mean_square_differences():
    s = np.random.default_rng(1).normal(size=(5, 7)).astype(np.float32)
    brute = np.sqrt(((s[:, None] - s[None, :]) ** 2).mean(-1))
    np.testing.assert_allclose(duplicates.pairwise_distances(s), brute, atol=1e-5)


def _signatures(*offsets: float) -> np.ndarray:
    """[n, 4] signatures whose pairwise distances are the differences of `offsets`."""
    return np.array(offsets, np.float32)[:, None] * np.ones((1, 4), np.float32)


def test_pairs_are_contradictory_within_a_subject_and_sorted_by_distance():
    names = ["1_1", "1_2", "1_3", "1_4", "2_1", "2_2"]
    subjects = [1, 1, 1, 1, 2, 2]
    has_nerve = [True, False, False, True, False, False]
    # 1_1 and 1_4 both have a nerve (not a pair); 2_1 sits on 1_1 but in another subject;
    # 2_2 sits on 2_1 but both are empty.
    signatures = _signatures(0.0, 0.05, 1.0, 0.02, 0.0, 0.0)
    pairs = duplicates.find_contradictory_pairs(names, subjects, has_nerve, signatures, 0.1)
    assert pairs == [Pair(1, "1_4", "1_2", pytest.approx(0.03)),
                     Pair(1, "1_1", "1_2", pytest.approx(0.05))]


def test_threshold_is_inclusive_and_respected():
    names, subjects, has_nerve = ["5_1", "5_2", "5_3"], [5, 5, 5], [True, False, False]
    signatures = _signatures(0.0, 0.25, 0.5)
    find = duplicates.find_contradictory_pairs
    assert find(names, subjects, has_nerve, signatures, 0.2) == []
    assert [p.without_nerve for p in find(names, subjects, has_nerve, signatures, 0.25)] == ["5_2"]
    assert [p.without_nerve for p in find(names, subjects, has_nerve, signatures, 0.6)] == [
        "5_2", "5_3"]


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="one entry per frame"):
        duplicates.find_contradictory_pairs(["1_1"], [1, 1], [True], _signatures(0.0))


def test_closest_nerve_twin_per_empty_frame():
    pairs = [Pair(1, "1_1", "1_2", 0.1), Pair(1, "1_3", "1_2", 0.05), Pair(1, "1_3", "1_4", 0.2)]
    assert duplicates.closest_nerve_twins(pairs) == {"1_2": pairs[1], "1_4": pairs[2]}


# --- Detection quality on the synthetic generator's twins --------------------------------------


def _signatures_of(kaggle_dir: str, num_subjects: int, frames: int):
    names = [f"{s}_{f}" for s in range(1, num_subjects + 1) for f in range(1, frames + 1)]
    train = os.path.join(kaggle_dir, "train")
    has_nerve = [read_tiff(os.path.join(train, n + "_mask.tif")).any() for n in names]
    signatures = np.stack([duplicates.frame_signature(read_tiff(os.path.join(train, n + ".tif")))
                           for n in names])
    return names, [int(n.split("_")[0]) for n in names], has_nerve, signatures


def _truth_pairs(kaggle_dir: str) -> set[tuple[str, str]]:
    with open(os.path.join(kaggle_dir, synthetic.TRUTH_FILE)) as f:
        return {tuple(p) for p in json.load(f)["contradictory_pairs"]}


@pytest.mark.slow
def test_default_threshold_finds_the_injected_twins(tmp_path):
    out = str(tmp_path / "data")
    synthetic.generate(out, num_subjects=6, frames_per_subject=30, num_test=0, seed=11,
                       contradictory_rate=0.3, workers=2)
    truth = _truth_pairs(out)
    twins = {twin for _, twin in truth}
    assert len(truth) >= 10
    pairs = duplicates.find_contradictory_pairs(*_signatures_of(out, 6, 30))
    # A twin may also pair with a neighbour of its source at the same probe position: a true
    # contradiction too, so precision counts the empty-mask frames, recall the truth's pairs.
    flagged = {p.without_nerve for p in pairs}
    found = {(p.with_nerve, p.without_nerve) for p in pairs}
    assert len(flagged & twins) / max(len(flagged), 1) >= 0.9  # precision
    assert len(found & truth) / len(truth) >= 0.9  # recall


# --- config.clean in the training pipeline -----------------------------------------------------

SUBJECTS, FRAMES, SIZE = 2, 10, (32, 48)


@pytest.fixture(scope="module")
def twin_builder(tmp_path_factory):
    """(builder, kaggle_dir) of 2 subjects x 10 frames where every nerve frame may get a twin."""
    from nerve_jax.data import tfds_builder

    root = tmp_path_factory.mktemp("twins")
    kaggle_dir = str(root / "data")
    synthetic.generate(kaggle_dir, num_subjects=SUBJECTS, frames_per_subject=FRAMES, num_test=1,
                       seed=3, contradictory_rate=1.0)
    return tfds_builder.prepare(kaggle_dir, str(root / "tfds")), kaggle_dir


def _resized_frames(kaggle_dir: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{name: (image, mask)} of every training frame, resized as the pipeline does."""
    from nerve_jax.data import pipeline

    frames = {}
    for s in range(1, SUBJECTS + 1):
        for f in range(1, FRAMES + 1):
            path = os.path.join(kaggle_dir, "train", f"{s}_{f}")
            image = read_tiff(path + ".tif")[..., None]
            mask = (read_tiff(path + "_mask.tif") > 0).astype(np.uint8)[..., None]
            frames[f"{s}_{f}"] = (pipeline.resize_image(image, SIZE).numpy(),
                                  pipeline.resize_mask(mask, SIZE).numpy())
    return frames


def _one_epoch(builder, num_frames: int, **clean) -> dict:
    """The first batch of a batch size equal to the epoch: every frame exactly once."""
    from nerve_jax.data import pipeline

    return next(pipeline.train_batches(builder, list(range(1, SUBJECTS + 1)), SIZE, num_frames,
                                       seed=0, **clean))


def _names_of(batch: dict, frames: dict) -> list[str]:
    """The frame each batch image is, by exact match of the resized image."""
    names = list(frames)
    stacked = np.stack([frames[n][0] for n in names])
    matched = []
    for image in batch["image"]:
        error = np.abs(stacked - image).max(axis=(1, 2, 3))
        assert error.min() < 1e-5
        matched.append(names[int(error.argmin())])
    return matched


@pytest.fixture(scope="module")
def detected(twin_builder):
    builder, kaggle_dir = twin_builder
    pairs = pipeline.contradictory_pairs_in_split(builder, list(range(1, SUBJECTS + 1)))
    # The detector flags exactly the generator's twins here, so this also checks it end to end.
    assert {p.without_nerve for p in pairs} == {twin for _, twin in _truth_pairs(kaggle_dir)}
    assert pairs
    return duplicates.closest_nerve_twins(pairs)


def test_keep_is_the_unchanged_pipeline(twin_builder):
    builder, kaggle_dir = twin_builder
    frames = _resized_frames(kaggle_dir)
    kept = _one_epoch(builder, len(frames), clean="keep")
    default = _one_epoch(builder, len(frames))
    np.testing.assert_array_equal(kept["image"], default["image"])
    np.testing.assert_array_equal(kept["mask"], default["mask"])
    names = _names_of(kept, frames)
    assert sorted(names) == sorted(frames)
    for name, mask in zip(names, kept["mask"], strict=True):
        np.testing.assert_array_equal(mask, frames[name][1])


def test_drop_removes_exactly_the_empty_members(twin_builder, detected, caplog):
    builder, kaggle_dir = twin_builder
    frames = _resized_frames(kaggle_dir)
    with caplog.at_level(logging.INFO, logger="absl"):
        batch = _one_epoch(builder, len(frames) - len(detected), clean="drop")
    assert f"dropped {len(detected)} of the training frames" in caplog.text
    assert sorted(_names_of(batch, frames)) == sorted(set(frames) - set(detected))


@pytest.mark.slow
@pytest.mark.mutation
def test_relabel_gives_the_empty_members_their_twins_mask(twin_builder, detected):
    builder, kaggle_dir = twin_builder
    frames = _resized_frames(kaggle_dir)
    batch = _one_epoch(builder, len(frames), clean="relabel")
    names = _names_of(batch, frames)
    assert sorted(names) == sorted(frames)
    for name, mask in zip(names, batch["mask"], strict=True):
        source = detected[name].with_nerve if name in detected else name
        np.testing.assert_array_equal(mask, frames[source][1])
        if name in detected:
            assert mask.any()


def test_invalid_clean_names_the_value_and_the_choices(twin_builder, test_config, tmp_path):
    from nerve_jax import train

    with pytest.raises(ValueError, match=r"config.clean='tidy'.*'keep', 'drop', 'relabel'"):
        _one_epoch(twin_builder[0], 4, clean="tidy")
    config = test_config()
    config.clean = "Drop"
    with pytest.raises(ValueError, match=r"config.clean='Drop'"):
        train.train_and_evaluate(config, str(tmp_path / "work"))
