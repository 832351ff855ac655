"""The pieces of benchmarks/quality.py that decide its table: scoring, changes, the rows."""

import numpy as np
import pytest

from benchmarks import quality
from nerve_jax.data import kaggle
from nerve_jax.submit import rle


def _mask(top, left, size=20):
    mask = np.zeros((kaggle.HEIGHT, kaggle.WIDTH), bool)
    mask[top:top + size, left:left + size] = True
    return mask


def test_submission_is_scored_per_image_with_the_kaggle_rule(tmp_path):
    truth = {1: rle.encode(_mask(10, 10)), 2: "", 3: "", 4: rle.encode(_mask(50, 50))}
    path = tmp_path / "sub.csv"
    # 1: exact; 2: empty vs empty = 1; 3: false positive = 0; 4: half the rows overlap.
    path.write_text("img,pixels\n"
                    f"1,{truth[1]}\n2,\n3,{rle.encode(_mask(0, 0))}\n"
                    f"4,{rle.encode(_mask(60, 50))}\n")
    np.testing.assert_allclose(quality.score_submission(str(path), truth), [1, 1, 0, 0.5])


def test_paired_change_is_the_mean_difference_with_its_interval():
    change, half = quality.paired_change([1.0, 0.5, 0.0, 1.0], [0.0, 0.5, 0.0, 1.0])
    assert change == pytest.approx(0.25)
    assert half == pytest.approx(1.96 * np.std([1, 0, 0, 0], ddof=1) / 2)


def test_each_piece_adds_one_thing_to_the_system_it_builds_on():
    system = quality.System()
    keys = {system.key()}
    for piece in quality.PIECES:
        added = piece.add(system)
        assert added != system and added.key() not in keys
        keys.add(added.key())
        system = added
    assert system == quality.System(
        overrides=("--config.model.presence_head=true", "--config.augment.enabled=true",
                   "--config.augment.flip=0.0", "--config.clean=drop"),
        tuned=True, tta="hflip", folds=2)
