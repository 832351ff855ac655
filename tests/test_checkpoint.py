"""Orbax checkpoints: which steps are kept, which is the best, and restores across devices."""

import os

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from nerve_jax import checkpoint, parallel


def _state(value: float) -> dict:
    return {"w": np.full((4, 3), value, np.float32), "step": np.int32(value)}


def _save_all(workdir, dices, keep_latest):
    mngr = checkpoint.manager(str(workdir), keep_latest)
    for step, dice in enumerate(dices, start=1):
        checkpoint.save(mngr, step, _state(step), dice)
    mngr.wait_until_finished()
    return mngr


def test_keeps_the_latest_steps_and_the_best_dice(tmp_path):
    mngr = _save_all(tmp_path, [0.3, 0.7, 0.5, 0.6, 0.4], keep_latest=2)
    assert mngr.best_step() == 2  # The highest Dice, not the latest step.
    assert sorted(mngr.all_steps()) == [2, 4, 5]
    reader = checkpoint.manager(str(tmp_path), read_only=True)
    assert reader.best_step() == 2 and reader.latest_step() == 5


def test_only_one_best_is_kept_besides_the_latest(tmp_path):
    mngr = _save_all(tmp_path, [0.6, 0.7, 0.5, 0.3, 0.4], keep_latest=2)
    assert sorted(mngr.all_steps()) == [2, 4, 5]  # Step 1, the second best, is gone.
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4", "5"]


def test_a_lower_dice_never_replaces_the_best(tmp_path):
    mngr = _save_all(tmp_path, [0.9, 0.1, 0.2, 0.3], keep_latest=1)
    assert mngr.best_step() == 1
    assert sorted(mngr.all_steps()) == [1, 4]


def test_restore_gives_back_the_saved_values(tmp_path):
    mngr = _save_all(tmp_path, [0.2, 0.8, 0.1], keep_latest=3)
    abstract = jax.eval_shape(lambda: _state(0.0))
    restored = checkpoint.restore(mngr, 2, abstract)
    np.testing.assert_array_equal(restored["w"], np.full((4, 3), 2.0, np.float32))
    assert int(restored["step"]) == 2


@pytest.mark.parametrize("written_on,read_on", [(1, 8), (8, 1)])
def test_restore_onto_another_device_count(tmp_path, written_on, read_on):
    def replicated(devices):
        return NamedSharding(parallel.make_mesh(jax.devices()[:devices]), P())

    state = jax.device_put(_state(3.0), replicated(written_on))
    mngr = checkpoint.manager(str(tmp_path))
    checkpoint.save(mngr, 7, state, 0.5)
    mngr.wait_until_finished()
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated(read_on)), state)
    restored = checkpoint.restore(mngr, 7, target)
    assert len(restored["w"].sharding.device_set) == read_on
    np.testing.assert_array_equal(restored["w"], np.full((4, 3), 3.0, np.float32))


def test_read_only_manager_creates_nothing(tmp_path):
    workdir = tmp_path / "new"
    checkpoint.manager(str(workdir), read_only=True)
    assert not os.path.exists(workdir / "checkpoints")
