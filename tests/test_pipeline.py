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


@pytest.mark.parametrize("num_frames,global_batch", [(24, 4), (26, 4), (7, 7)])
def test_each_lane_epoch_shows_every_frame_once(num_frames, global_batch):
    sampler = pipeline.LaneSampler(num_frames, global_batch, seed=3)
    lane_sizes = sorted(len(lane) for lane in sampler.lanes)
    assert lane_sizes[-1] - lane_sizes[0] <= 1 and sum(lane_sizes) == num_frames
    steps = lane_sizes[0]  # Steps in which no lane has wrapped round.
    seen = np.concatenate([sampler.frames(k, range(global_batch)) for k in range(steps)])
    assert len(set(seen.tolist())) == len(seen) == steps * global_batch
    if num_frames % global_batch == 0:
        assert sorted(seen.tolist()) == list(range(num_frames))


def test_lanes_reshuffle_each_epoch_and_depend_on_the_seed_only():
    sampler = pipeline.LaneSampler(40, 4, seed=0)
    first_epoch = [sampler.frames(k, range(4)) for k in range(10)]
    second_epoch = [sampler.frames(k, range(4)) for k in range(10, 20)]
    assert not all(np.array_equal(a, b) for a, b in zip(first_epoch, second_epoch, strict=True))
    again = pipeline.LaneSampler(40, 4, seed=0)
    # Asked out of order (a resumed run): the same frames.
    assert np.array_equal(again.frames(13, range(4)), second_epoch[3])
    assert np.array_equal(again.frames(2, range(2, 4)), first_epoch[2][2:])
    other = pipeline.LaneSampler(40, 4, seed=1)
    assert not all(np.array_equal(other.frames(k, range(4)), first_epoch[k]) for k in range(10))


def test_a_batch_larger_than_the_frames_is_refused():
    with pytest.raises(UserError, match="batch_size=8 is larger than the 5 training frames"):
        pipeline.LaneSampler(5, 8, seed=0)


@pytest.fixture(scope="module")
def tiny_builder(tiny_kaggle_dir, tmp_path_factory):
    from nerve_jax.data import tfds_builder

    return tfds_builder.prepare(tiny_kaggle_dir, str(tmp_path_factory.mktemp("tfds")),
                                progress=False)


def _train_batches(builder, monkeypatch, process: int, processes: int, start_step=0, count=3,
                   augment_config=None):
    import itertools

    import jax

    monkeypatch.setattr(jax, "process_index", lambda: process)
    monkeypatch.setattr(jax, "process_count", lambda: processes)
    batches = pipeline.train_batches(builder, [1, 2, 3], (32, 48), 4, seed=5,
                                     start_step=start_step, augment_config=augment_config)
    return list(itertools.islice(batches, count))


@pytest.mark.slow
@pytest.mark.mutation
@pytest.mark.parametrize("augmented", [False, True])
def test_processes_feed_their_slots_of_the_same_global_batches(tiny_builder, monkeypatch,
                                                               augmented):
    """1 process, or 2 (or 4) each taking its part: the same global batches, so a run on any
    number of hosts reproduces a run on one, and resumes on another topology."""
    augment_config = {"enabled": True, "shift": 0.1, "rotation": 10.0, "zoom": (0.9, 1.1),
                      "flip": 0.5, "brightness": 0.1, "contrast": (0.8, 1.2),
                      "gamma": (0.8, 1.2), "fill_mode": "reflect"} if augmented else None
    whole = _train_batches(tiny_builder, monkeypatch, 0, 1, augment_config=augment_config)
    for processes in (2, 4):
        parts = [_train_batches(tiny_builder, monkeypatch, i, processes,
                                augment_config=augment_config) for i in range(processes)]
        for step, batch in enumerate(whole):
            for key in ("image", "mask"):
                joined = np.concatenate([part[step][key] for part in parts])
                np.testing.assert_array_equal(joined, batch[key])
    resumed = _train_batches(tiny_builder, monkeypatch, 0, 1, start_step=1, count=2,
                             augment_config=augment_config)
    for a, b in zip(resumed, whole[1:], strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])


def test_training_batches_hold_the_resized_frames_and_their_masks(tiny_builder, monkeypatch):
    frames = {}
    for ex in pipeline.subject_frames(tiny_builder, [1, 2, 3]).as_numpy_iterator():
        image = pipeline.resize_image(ex["image"], (32, 48)).numpy()
        mask = pipeline.resize_mask(ex["mask"], (32, 48)).numpy()
        frames[image.tobytes()] = mask
    batches = _train_batches(tiny_builder, monkeypatch, 0, 1, count=4)
    for batch in batches:
        for image, mask in zip(batch["image"], batch["mask"], strict=True):
            np.testing.assert_array_equal(mask, frames[image.tobytes()])
    shown = {b["image"][i].tobytes() for b in batches for i in range(4)}
    assert len(shown) == 16  # 18 frames in 4 lanes (of 5, 5, 4, 4): 4 steps, no repeat.
