"""Early stopping on validation Dice, decided from the checkpoint manager's best step."""

import json
import os

import numpy as np
import pytest

from nerve_jax import checkpoint, train


def test_patience_counts_evaluations_since_the_best():
    best = train.BestSoFar(float("-inf"), -1).update(10, 0.6).update(20, 0.6)
    assert best == train.BestSoFar(0.6, 10)  # A tie is not an improvement.
    assert not train.patience_exhausted(30, best, patience=0, eval_every_steps=10)
    assert not train.patience_exhausted(20, best, patience=2, eval_every_steps=10)
    assert train.patience_exhausted(30, best, patience=2, eval_every_steps=10)
    assert not train.patience_exhausted(10, best, patience=1, eval_every_steps=10)
    assert train.patience_exhausted(20, best, patience=1, eval_every_steps=10)  # the smallest
    assert not train.patience_exhausted(30, train.BestSoFar(float("-inf"), -1), 2, 10)


def test_a_restart_remembers_the_best_dice_and_its_step(tmp_path):
    assert train.best_so_far(checkpoint.manager(str(tmp_path))) == train.BestSoFar(
        float("-inf"), -1)
    mngr = checkpoint.manager(str(tmp_path), keep_latest=1)
    for step, dice in [(2, 0.4), (4, 0.7), (6, 0.5)]:
        checkpoint.save(mngr, step, {"w": np.zeros(2, np.float32)}, dice)
    mngr.wait_until_finished()
    assert train.best_so_far(checkpoint.manager(str(tmp_path))) == train.BestSoFar(0.7, 4)


@pytest.mark.slow
@pytest.mark.mutation  # The only test of the protocol's run that reaches train._early_stop.
def test_training_stops_when_validation_dice_stalls(test_config, tiny_kaggle_dir, tmp_path,
                                                    capsys):
    config = test_config()
    config.kaggle_dir = tiny_kaggle_dir
    config.tfds_data_dir = str(tmp_path / "tfds")
    # Validation Dice never changes (no frame is ever predicted to hold a nerve, whatever the
    # BatchNorm statistics do): the first evaluation stays best.
    config.learning_rate = 0.0
    config.threshold = 1.0
    config.num_train_steps = 12
    config.eval_every_steps = 2
    config.early_stopping_patience = 2
    workdir = str(tmp_path / "work")
    train.train_and_evaluate(config, workdir)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    evaluations = [r for r in records if "val_dice" in r]
    assert [r["step"] for r in evaluations] == [2, 4, 6]
    assert records[-1] == {"step": 6, "early_stopped": 1.0}
    with open(os.path.join(workdir, train.EARLY_STOP_FILE)) as f:  # what a restart reads
        stopped = json.load(f)
    assert stopped == {"step": 6, "best_step": 2,
                       "best_dice": pytest.approx(evaluations[0]["val_dice"]),
                       "patience": 2, "total_steps": 12}
    assert "early stopping at step 6: no better validation Dice than" in capsys.readouterr().out
