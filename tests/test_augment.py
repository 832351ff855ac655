"""Augmentation: deterministic per seed, resumable, mask moves with the image and stays binary."""

import itertools

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from nerve_jax import train
from nerve_jax.data import augment, pipeline, tfds_builder
from nerve_jax.errors import UserError

SUBJECTS = [1, 2, 3, 4]
ALL_OFF = {"shift": 0.0, "rotation": 0.0, "zoom": (1.0, 1.0), "flip": 0.0, "brightness": 0.0,
           "contrast": (1.0, 1.0), "gamma": (1.0, 1.0)}
STRONG_GEOMETRY = {"shift": 0.1, "rotation": 20.0, "zoom": (0.8, 1.2), "flip": 0.5}
ONE_AT_A_TIME = {"shift": 0.1, "rotation": 10.0, "zoom": (0.8, 1.2), "flip": 1.0,
                 "brightness": 0.1, "contrast": (0.5, 0.8), "gamma": (1.5, 2.0)}


@pytest.fixture(scope="module")
def config(test_config):
    return test_config()


@pytest.fixture(scope="module")
def data_config(config, tiny_kaggle_dir, tmp_path_factory):
    config = config.copy_and_resolve_references()
    config.kaggle_dir = tiny_kaggle_dir
    config.tfds_data_dir = str(tmp_path_factory.mktemp("tfds"))
    return config


@pytest.fixture(scope="module")
def builder(data_config, tmp_path_factory):
    return tfds_builder.prepare_for(data_config, str(tmp_path_factory.mktemp("work")))


def _augment_config(config, *overrides: dict, **fields) -> ml_collections.ConfigDict:
    """config.augment, enabled, with `overrides` then `fields` applied in order."""
    augment_config = config.augment.copy_and_resolve_references()
    augment_config.enabled = True
    for update in (*overrides, fields):
        augment_config.update(update)
    return augment_config


def _batches(builder, config, augment_config=None, seed=0, start_step=0, count=4) -> list[dict]:
    batches = pipeline.train_batches(builder, SUBJECTS, config.image_size, config.batch_size,
                                     seed, start_step, augment_config=augment_config)
    return list(itertools.islice(batches, count))


def _assert_same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])


def _differ(a: list[dict], b: list[dict], key: str = "image") -> bool:
    return any(not np.array_equal(x[key], y[key]) for x, y in zip(a, b, strict=True))


@pytest.mark.slow
@pytest.mark.mutation
def test_same_seed_gives_identical_batches(builder, config):
    augment_config = _augment_config(config)
    first, second = (_batches(builder, config, augment_config) for _ in range(2))
    _assert_same(first, second)


def test_different_seed_gives_different_augmentation(config):
    batch = _square_batch(config.image_size)
    settings = augment.from_config(_augment_config(config))
    first, second = (augment.augment_batch(batch, augment.batch_seed(seed, 0), settings)
                     for seed in (0, 1))
    assert not np.array_equal(first["image"], second["image"])
    next_step = augment.augment_batch(batch, augment.batch_seed(0, 1), settings)
    assert not np.array_equal(first["image"], next_step["image"])


@pytest.mark.slow
@pytest.mark.mutation
def test_resumed_stream_equals_the_uninterrupted_one(builder, config):
    augment_config = _augment_config(config)
    # 24 frames in batches of 8: steps 3-5 are the second epoch, reshuffled and re-augmented.
    straight = _batches(builder, config, augment_config, count=6)
    resumed = _batches(builder, config, augment_config, start_step=3, count=3)
    _assert_same(straight[3:], resumed)
    assert _differ(straight[:3], straight[3:])


def test_every_epoch_sees_new_augmentations(builder, config):
    """A frame's brightness offset in the first epoch differs from its offset in the second."""
    augment_config = _augment_config(config, ALL_OFF, brightness=0.2)
    plain = _batches(builder, config, count=6)
    augmented = _batches(builder, config, augment_config, count=6)

    def offsets(epoch: range) -> dict[bytes, float]:
        """{frame (its un-augmented pixels): mean brightness offset}."""
        return {p.tobytes(): float(np.mean(a - p))
                for step in epoch
                for p, a in zip(plain[step]["image"], augmented[step]["image"], strict=True)}

    first, second = offsets(range(3)), offsets(range(3, 6))
    assert first.keys() == second.keys() and len(first) == 24
    assert all(abs(first[frame] - second[frame]) > 1e-4 for frame in first)


def test_disabled_leaves_the_pipeline_bit_identical(builder, config):
    disabled = _augment_config(config)
    disabled.enabled = False
    _assert_same(_batches(builder, config, disabled), _batches(builder, config))


def test_enabled_with_every_transform_off_is_the_identity(config):
    batch = _square_batch(config.image_size)
    settings = augment.from_config(_augment_config(config, ALL_OFF))
    out = augment.augment_batch(batch, augment.batch_seed(0, 0), settings)
    for key in batch:
        np.testing.assert_array_equal(out[key], batch[key])


def _square_batch(size, batch: int = 8, seed: int = 0) -> dict:
    """Noise around 0.2 with a 0.8 square (the mask) at a different place in each image."""
    rng = np.random.default_rng(seed)
    height, width = size
    image = 0.2 + 0.02 * rng.standard_normal((batch, height, width, 1))
    mask = np.zeros((batch, height, width, 1), np.float32)
    for i in range(batch):
        top = rng.integers(height // 4, height // 2)
        left = rng.integers(width // 4, width // 2)
        mask[i, top:top + height // 3, left:left + width // 3] = 1.0
    image = np.where(mask > 0, 0.8, image).astype(np.float32)
    return {"image": tf.constant(image), "mask": tf.constant(mask)}


def test_mask_stays_binary_and_moves_with_the_image(config):
    batch = _square_batch(config.image_size, batch=16)
    settings = augment.from_config(_augment_config(config, ALL_OFF, STRONG_GEOMETRY))
    out = augment.augment_batch(batch, augment.batch_seed(3, 7), settings)
    image, mask = out["image"].numpy(), out["mask"].numpy()
    assert set(np.unique(mask)) <= {0.0, 1.0}
    assert mask.dtype == np.float32 and image.shape == mask.shape == batch["image"].shape
    bright = image > 0.5
    inter = np.logical_and(bright, mask > 0).sum(axis=(1, 2, 3))
    union = np.logical_or(bright, mask > 0).sum(axis=(1, 2, 3))
    assert np.all(inter / union > 0.9), inter / union
    moved = np.any(mask != batch["mask"].numpy(), axis=(1, 2, 3))
    assert moved.mean() > 0.9


def test_flip_mirrors_image_and_mask_exactly(config):
    batch = _square_batch(config.image_size)
    settings = augment.from_config(_augment_config(config, ALL_OFF, flip=1.0))
    out = augment.augment_batch(batch, augment.batch_seed(0, 0), settings)
    for key in ("image", "mask"):
        np.testing.assert_array_equal(out[key], batch[key].numpy()[:, :, ::-1])


@pytest.mark.parametrize("field", sorted(ONE_AT_A_TIME))
def test_each_transform_acts_alone(config, field):
    batch = _square_batch(config.image_size)
    settings = augment.from_config(
        _augment_config(config, ALL_OFF, {field: ONE_AT_A_TIME[field]}))
    out = augment.augment_batch(batch, augment.batch_seed(0, 0), settings)
    image, mask = out["image"].numpy(), out["mask"].numpy()
    assert np.all(np.any(image != batch["image"].numpy(), axis=(1, 2, 3)))
    assert image.min() >= 0.0 and image.max() <= 1.0
    geometric = field in STRONG_GEOMETRY
    assert np.any(mask != batch["mask"].numpy()) == geometric


@pytest.mark.parametrize("field,value", [
    ("zoom", (1.2, 0.9)),
    ("zoom", (0.0, 1.1)),
    ("zoom", 1.1),
    ("flip", 1.5),
    ("flip", -0.1),
    ("shift", 0.7),
    ("rotation", -5.0),
    ("brightness", "0.1"),
    ("contrast", (1.1, 0.9)),
    ("gamma", (0.0, 1.0)),
    ("fill_mode", "mirror"),
    ("enabled", 1),
])
def test_bad_values_are_named(builder, config, field, value):
    augment_config = _augment_config(config)
    with augment_config.unlocked(), augment_config.ignore_type():
        augment_config[field] = value
    with pytest.raises(augment.AugmentConfigError, match=f"config.augment.{field}="):
        pipeline.train_batches(builder, SUBJECTS, config.image_size, config.batch_size, 0,
                               augment_config=augment_config)


def test_bad_values_raise_even_when_disabled_and_unknown_fields_are_named(config):
    augment_config = _augment_config(config, flip=2.0)
    augment_config.enabled = False
    with pytest.raises(UserError, match="config.augment.flip="):
        augment.from_config(augment_config)
    with augment_config.unlocked():
        augment_config.rotate = 5.0
    with pytest.raises(UserError, match="rotate"):
        augment.from_config(augment_config)


@pytest.mark.slow
def test_training_runs_with_augmentation(data_config, builder, tmp_path):
    config = data_config.copy_and_resolve_references()
    config.augment.enabled = True
    config.num_train_steps = 2
    result = train.train_and_evaluate(config, str(tmp_path / "work"))
    assert int(result.state.step) == 2
