"""Input pipelines: the subject split, resizing, and the padded evaluation and test batches."""

import numpy as np
import pytest
import tensorflow as tf

from nerve_jax.data import pipeline
from nerve_jax.errors import UserError

SUBJECTS = [3, 1, 4, 15, 9, 2, 6, 5, 10, 7, 12]


@pytest.mark.parametrize("num_folds", [2, 3, 5])
def test_folds_partition_the_subjects(num_folds):
    splits = [pipeline.split_subjects(SUBJECTS, num_folds, k, seed=0) for k in range(num_folds)]
    vals = [val for _, val in splits]
    assert sorted(s for val in vals for s in val) == sorted(SUBJECTS)  # Each once.
    sizes = sorted(len(v) for v in vals)
    assert sizes[-1] - sizes[0] <= 1 and sum(sizes) == len(SUBJECTS)
    for train, val in splits:
        assert train == sorted(set(SUBJECTS) - set(val)) and val == sorted(val)


def test_the_seed_decides_the_split():
    first = pipeline.split_subjects(SUBJECTS + SUBJECTS, 3, 1, seed=0)  # Repeats count once.
    assert first == pipeline.split_subjects(SUBJECTS, 3, 1, seed=0)
    others = {tuple(pipeline.split_subjects(SUBJECTS, 3, 1, seed=s)[1]) for s in range(1, 6)}
    assert len(others | {tuple(first[1])}) > 1


@pytest.mark.parametrize("num_folds,fold", [(1, 0), (12, 0), (3, 3), (3, -1)])
def test_bad_folds_are_refused(num_folds, fold):
    with pytest.raises(UserError, match="config.num_folds|config.fold"):
        pipeline.split_subjects(SUBJECTS, num_folds, fold, seed=0)


def test_smallest_and_largest_fold_counts_are_accepted():
    assert len(pipeline.split_subjects(SUBJECTS, 2, 1, seed=0)[1]) in (5, 6)
    train, val = pipeline.split_subjects(SUBJECTS, len(SUBJECTS), 0, seed=0)
    assert len(val) == 1 and len(train) == len(SUBJECTS) - 1


def test_resize_averages_what_it_shrinks():
    """One white column in four, shrunk 4x: an antialiased resize gives a quarter grey; point
    sampling (plain bilinear) would land between two black columns and give black."""
    image = np.zeros((16, 64, 1), np.uint8)
    image[:, ::4] = 255
    small = pipeline.resize_image(tf.constant(image), (4, 16)).numpy()
    assert small.shape == (4, 16, 1) and small.dtype == np.float32
    np.testing.assert_allclose(small[:, 2:-2], 0.25, atol=0.02)


def test_resize_mask_keeps_pixels_at_least_half_covered():
    mask = np.zeros((8, 12, 1), np.uint8)
    mask[0:2, 0:1] = 1  # Half of the first 2x2 cell: kept.
    mask[2:3, 4:5] = 1  # A quarter of a cell: dropped.
    mask[4:8, 6:12] = 1  # Whole cells.
    small = pipeline.resize_mask(tf.constant(mask), (4, 6)).numpy()
    want = mask[..., 0].reshape(4, 2, 6, 2).mean(axis=(1, 3)) >= 0.5
    assert small.dtype == np.float32 and set(np.unique(small)) <= {0.0, 1.0}
    np.testing.assert_array_equal(small[..., 0], want.astype(np.float32))
    assert small[0, 0, 0] == 1 and small[1, 2, 0] == 0
