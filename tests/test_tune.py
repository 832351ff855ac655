"""Tuning post-processing on held-out predictions; hflip TTA; fold ensembles; train -> tune ->
predict end to end on tiny synthetic data."""

import functools
import json
import os
import shutil

import jax
import numpy as np
import pytest
from scipy import ndimage
from skimage import draw

from nerve_jax import cli, evaluation, metrics, postprocess, step
from nerve_jax.data import kaggle, pipeline
from nerve_jax.errors import UserError
from nerve_jax.submit import inference, tune
from tests import references

SHAPE = (120, 160)
# Areas scaled to SHAPE's frames; every value of every field is scored.
SMALL_GRID = tune.Grid(thresholds=(0.3, 0.5, 0.6), min_component_areas=(0, 20, 100),
                       min_mask_areas=(0, 50, 300), presence_thresholds=(0.2, 0.5, 0.8))


def _disc_frames(count: int, radius_at_threshold: float, rng) -> tuple:
    """Frames whose nerve is a disc that the pixel threshold 0.6 recovers exactly (the
    probability falls off linearly from the centre and crosses 0.6 on the disc's edge), and
    empty frames with a confident false positive but a low presence probability."""
    rows, cols = np.indices(SHAPE)
    probs, presence, truths = [], [], []
    for i in range(count):
        center = rng.uniform(40, 80), rng.uniform(50, 110)
        radius = np.floor(rng.uniform(12, 20)) + 0.5  # No pixel centre on the edge.
        distance = np.hypot(rows - center[0], cols - center[1])
        if i % 2:
            probs.append(np.clip(0.6 + (radius - distance) / radius_at_threshold, 0, 1))
            truths.append(distance < radius)
            presence.append(0.9)
        else:
            probs.append(np.where(distance < 8, 0.9, 0.0))
            truths.append(np.zeros(SHAPE, bool))
            presence.append(0.3)
    return (np.asarray(probs, np.float32), np.asarray(presence, np.float32),
            np.asarray(truths))


def test_tune_finds_the_threshold_that_recovers_the_masks():
    probs, presence, truths = _disc_frames(12, 40.0, np.random.default_rng(0))
    defaults = postprocess.Settings()
    grid = tune.Grid(min_component_areas=(0, 100), min_mask_areas=(0, 300)).including(defaults)
    table = tune.score_frames(probs, presence, truths, grid)
    chosen = grid.settings(tune.best_index(table, grid, defaults))
    # Every presence threshold in (0.3, 0.9] empties the false positives; 0.5 is the default.
    assert chosen == postprocess.Settings(threshold=0.6)
    assert table.mean(grid.index(chosen)) == 1.0
    assert table.mean(grid.index(defaults)) < 0.99
    assert table.empty_sum / table.frames == 0.5


def test_a_probability_equal_to_the_threshold_is_not_nerve():
    probs = np.zeros((1, *SHAPE), np.float32)
    probs[:, 40:60, 50:90] = 0.5  # Exactly at the threshold: no nerve at 0.5, 800 px at 0.3.
    truths = np.zeros((1, *SHAPE), bool)
    grid = tune.Grid(thresholds=(0.3, 0.5), min_component_areas=(0,), min_mask_areas=(0,),
                     presence_thresholds=(0.5,))
    table = tune.score_frames(probs, np.ones(1), truths, grid)
    assert table.mean(grid.index(postprocess.Settings(threshold=0.3))) == 0.0
    assert table.mean(grid.index(postprocess.Settings(threshold=0.5))) == 1.0


def _noisy_frames(count: int, seed: int) -> tuple:
    """Blobby probability maps with holes and stray components; ellipse or empty truths."""
    rng = np.random.default_rng(seed)
    probs = ndimage.gaussian_filter(rng.random((count, *SHAPE)), (0, 2.5, 2.5))
    probs = np.clip((probs - 0.5) * 12 + 0.5, 0, 1).astype(np.float32)
    truths = np.zeros((count, *SHAPE), bool)
    for i in range(0, count, 2):
        truths[i][draw.ellipse(60, 80, 25, 14, shape=SHAPE, rotation=rng.uniform(-1, 1))] = True
        nerve = ndimage.gaussian_filter(truths[i].astype(np.float32), 2)
        probs[i] = np.maximum(probs[i], 0.8 * nerve)
    return probs, rng.random(count).astype(np.float32), truths


@pytest.mark.slow
def test_score_table_equals_applying_each_params():
    probs, presence, truths = _noisy_frames(8, seed=1)
    table = tune.score_frames(probs, presence, truths, SMALL_GRID)
    assert table.dice_sum.shape == (3, 3, 2, 2, 2, 3, 3) and table.frames == 8
    for index in np.ndindex(table.dice_sum.shape):
        params = SMALL_GRID.settings(index)
        masks = postprocess.apply_batch(probs, presence, params)
        expected = np.asarray(metrics.dice_per_image(masks, truths), np.float64).mean()
        assert table.mean(index) == pytest.approx(expected, abs=1e-6), params


def test_tuned_params_never_score_below_the_defaults():
    probs, presence, truths = _noisy_frames(10, seed=2)
    defaults = postprocess.Settings(threshold=0.37, min_mask_area=77, presence_threshold=0.33)
    grid = SMALL_GRID.including(defaults)
    assert 0.37 in grid.thresholds and 77 in grid.min_mask_areas
    table = tune.score_frames(probs, presence, truths, grid)
    chosen = tune.best_index(table, grid, defaults)
    assert table.mean(chosen) >= table.mean(grid.index(defaults))
    assert table.mean(chosen) == pytest.approx(table.dice_sum.max() / table.frames)


def test_ties_keep_the_defaults():
    truths = np.zeros((3, *SHAPE), bool)
    probs = np.zeros((3, *SHAPE), np.float32)  # Nothing predicted, nothing there: all 1.
    defaults = postprocess.Settings(threshold=0.5, min_mask_area=50, presence_threshold=0.8)
    table = tune.score_frames(probs, np.ones(3), truths, SMALL_GRID)
    assert SMALL_GRID.settings(tune.best_index(table, SMALL_GRID, defaults)) == defaults


def test_leave_one_fold_out():
    first = tune.score_frames(*_noisy_frames(6, seed=3), SMALL_GRID)
    defaults = postprocess.Settings()
    same = tune.leave_one_fold_out([first, first], SMALL_GRID, defaults)
    # Tuned on an identical fold, scored on it: the in-sample score.
    assert same["tuned_dice"] == pytest.approx(first.dice_sum.max() / first.frames)
    assert same["config_dice"] == pytest.approx(first.mean(SMALL_GRID.index(defaults)))
    second = tune.score_frames(*_noisy_frames(4, seed=4), SMALL_GRID)
    cross = tune.leave_one_fold_out([first, second], SMALL_GRID, defaults)
    assert [f["frames"] for f in cross["per_fold"]] == [6, 4]


def test_leave_one_fold_out_scores_each_fold_with_the_others_choice():
    """Hand-made tables over 2 thresholds: fold A prefers 0.3, folds B and C prefer 0.6."""
    grid = tune.Grid(thresholds=(0.3, 0.6), min_component_areas=(0,), min_mask_areas=(0,),
                     presence_thresholds=(0.5,))
    defaults = postprocess.Settings(threshold=0.3)

    def table(dice_at_03, dice_at_06, frames):
        sums = np.zeros((2, 1, 2, 2, 2, 1, 1))
        sums[:] = 0.1 * frames  # Every refinement scores worse than none.
        sums[0, 0, 0, 0, 0, 0, 0] = dice_at_03 * frames
        sums[1, 0, 0, 0, 0, 0, 0] = dice_at_06 * frames
        return tune.ScoreTable(sums, 0.0, frames)

    folds = [table(0.9, 0.5, 10), table(0.4, 0.6, 10), table(0.5, 0.8, 20)]
    result = tune.leave_one_fold_out(folds, grid, defaults)
    # A: B + C sum to (0.4*10 + 0.5*20, 0.6*10 + 0.8*20) = (14, 22) -> 0.6 -> A scores 0.5.
    # B: A + C give (19, 21) -> 0.6 -> 0.6.  C: A + B give (13, 11) -> 0.3 -> 0.5.
    assert [f["tuned_dice"] for f in result["per_fold"]] == pytest.approx([0.5, 0.6, 0.5])
    assert [f["settings"]["threshold"] for f in result["per_fold"]] == [0.6, 0.6, 0.3]
    assert [f["config_dice"] for f in result["per_fold"]] == pytest.approx([0.9, 0.4, 0.5])
    assert result["tuned_dice"] == pytest.approx((0.5 * 10 + 0.6 * 10 + 0.5 * 20) / 40)
    assert result["config_dice"] == pytest.approx((0.9 * 10 + 0.4 * 10 + 0.5 * 20) / 40)


@pytest.mark.slow
def test_hflip_tta_averages_the_image_and_its_mirror(test_config):
    config = test_config()
    config.model.presence_head = True
    state = jax.jit(lambda rng: step.create_train_state(config, rng))(jax.random.key(3))
    images = np.random.default_rng(0).random((2, *config.image_size, 1)).astype(np.float32)
    predict_step = jax.jit(step.predict_step)
    plain = predict_step(state, {"image": images})
    mirrored = predict_step(state, {"image": images[:, :, ::-1]})
    expected_probs = (np.asarray(plain["probs"]) + np.asarray(mirrored["probs"])[:, :, ::-1]) / 2
    expected_presence = (np.asarray(plain["presence"]) + np.asarray(mirrored["presence"])) / 2
    tta = jax.jit(step.predict_step, static_argnames="tta")
    out = tta(state, {"image": images}, tta="hflip")
    np.testing.assert_allclose(out["probs"], expected_probs, atol=2e-6)
    np.testing.assert_allclose(out["presence"], expected_presence, atol=1e-6)
    assert np.abs(expected_probs - np.asarray(plain["probs"])).max() > 1e-4  # Not symmetric.
    none = tta(state, {"image": images}, tta="none")
    np.testing.assert_allclose(none["probs"], plain["probs"], atol=1e-6)


def _train(workdir, fold, kaggle_dir, tfds_dir, *extra):
    assert cli.main(["train", "--config", "configs/test.py", "--workdir", workdir,
                     f"--config.kaggle_dir={kaggle_dir}", f"--config.tfds_data_dir={tfds_dir}",
                     "--config.num_train_steps=2", f"--config.fold={fold}", *extra]) == 0


@pytest.fixture(scope="module")
def two_folds(tiny_kaggle_dir, tmp_path_factory) -> list[str]:
    """Workdirs of folds 0 (hflip TTA) and 1 (presence head) of a 2-fold run, as train left
    them. Tests that write into a workdir work on a copy."""
    root = tmp_path_factory.mktemp("folds")
    folds = [str(root / f"fold{i}") for i in range(2)]
    _train(folds[0], 0, tiny_kaggle_dir, str(root / "tfds"), "--config.tta=hflip")
    _train(folds[1], 1, tiny_kaggle_dir, str(root / "tfds"), "--config.model.presence_head=true")
    return folds


def _copies(workdirs, tmp_path) -> list[str]:
    return [shutil.copytree(w, str(tmp_path / os.path.basename(w))) for w in workdirs]


@pytest.mark.slow
def test_train_tune_predict_with_two_folds(two_folds, tiny_kaggle_dir, tmp_path, capsys):
    folds = _copies(two_folds, tmp_path)
    heldout = evaluation.load_heldout(folds[0])
    assert heldout.logits.dtype == np.float16 and heldout.logits.shape[1:] == (32, 48)
    assert heldout.tta == "hflip" and len(heldout.names) == 12  # 2 subjects x 6 frames.
    assert set(heldout.val_subjects).isdisjoint(evaluation.load_heldout(folds[1]).val_subjects)

    assert cli.main(["tune", "--workdir", folds[0], "--workdir", folds[1], "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "24 held-out frames" in out and "leave-one-fold-out" in out
    saved = [json.load(open(os.path.join(f, postprocess.POSTPROCESS_FILE))) for f in folds]
    assert saved[0]["settings"] == saved[1]["settings"]
    scores = saved[0]["heldout_dice"]
    assert scores["frames"] == 24 and scores["tuned_in_sample"] >= scores["config"]

    test_dir = os.path.join(tiny_kaggle_dir, "test")
    ensemble = str(tmp_path / "ensemble.csv")
    assert cli.main(["predict", "--workdir", folds[0], "--workdir", folds[1],
                     "--out", ensemble, "--test-dir", test_dir]) == 0
    out = capsys.readouterr().out
    assert "ensemble of 2 models" in out and f"{folds[0]}/postprocess.json" in out
    assert out.strip().endswith("valid")
    lines = open(ensemble).read().splitlines()
    assert lines[0] == "img,pixels" and len(lines) == 5

    assert cli.main(["evaluate", "--workdir", folds[1]]) == 0
    out = capsys.readouterr().out
    assert "postprocess.json" in out and "tuned on these frames" in out


@pytest.mark.slow
def test_ensemble_averages_the_probabilities_of_its_models(two_folds, tiny_kaggle_dir,
                                                            tmp_path):
    folds = _copies(two_folds, tmp_path)
    test_dir = os.path.join(tiny_kaggle_dir, "test")
    images = kaggle.scan_test(test_dir)
    probs, presence = [], []
    for workdir in folds:  # Each model alone, on the same batches predict reads.
        config, state, _ = evaluation.restore_best(workdir)
        fn = jax.jit(functools.partial(step.predict_step,
                                       tta=evaluation.resolve_tta(config)))
        state = jax.device_get(state)
        outs = [fn(state, {"image": b["image"]}) for b in
                pipeline.test_batches(images, config.image_size, config.eval_batch_size)]
        probs.append(np.concatenate([o["probs"] for o in outs])[:len(images)])
        presence.append(np.concatenate([o["presence"] for o in outs])[:len(images)])
    mean_probs = (probs[0] + probs[1]) / 2
    mean_presence = (presence[0] + presence[1]) / 2  # Fold 0 has no presence head: 1.
    threshold = float(np.median(mean_probs))  # Half of the pixels: the models disagree on many.
    presence_threshold = float(np.median(mean_presence))  # Empties half of the images.
    params = postprocess.Settings(threshold=threshold, presence_threshold=presence_threshold)
    for workdir in folds:
        postprocess.save(workdir, params, {})
    out = str(tmp_path / "ensemble.csv")
    inference.predict(folds, out, test_dir)

    got = references.submission_masks(out)
    assert sorted(got) == [im.id for im in images]
    kept = mean_presence >= presence_threshold
    assert 0 < kept.sum() < len(images)
    for i, image in enumerate(images):
        if not kept[i]:
            assert not got[image.id].any(), image.id
            continue
        want = mean_probs[i] > threshold
        near = np.abs(mean_probs[i] - threshold) < 1e-5  # Float order of the mean may differ.
        assert np.array_equal(got[image.id][~near], want[~near]), image.id
        for model_probs in probs:  # Not what either model alone gives.
            assert np.count_nonzero((model_probs[i] > threshold) != want) > 100


@pytest.mark.slow
def test_tune_refuses_bad_input(two_folds, tmp_path, capsys):
    workdir = two_folds[0]
    with pytest.raises(UserError, match="same subjects"):
        tune.tune([workdir, workdir], write=False)
    [copy] = _copies([workdir], tmp_path)
    os.remove(os.path.join(copy, evaluation.HELDOUT_FILE))
    capsys.readouterr()
    assert cli.main(["tune", "--workdir", copy]) == 2
    assert f"{copy}/{evaluation.HELDOUT_FILE}: no held-out predictions" in capsys.readouterr().err
    with open(os.path.join(copy, evaluation.HELDOUT_FILE), "w") as f:
        f.write("not an npz")
    with pytest.raises(UserError, match="unreadable held-out predictions"):
        tune.tune([copy], write=False)
    grid = tune.Grid(thresholds=(0.3, 0.5), min_component_areas=(0, 100), min_mask_areas=(0,),
                     presence_thresholds=(0.5,))
    result = tune.tune([workdir], grid, write=False)
    assert result["leave_one_fold_out_dice"] is None and result["files"] == []
    in_two_processes = tune.tune([workdir], grid, write=False, workers=2, chunk=2)
    assert in_two_processes["heldout_dice"] == result["heldout_dice"]
    assert not os.path.exists(os.path.join(workdir, postprocess.POSTPROCESS_FILE))


def test_a_choice_at_the_end_of_a_searched_range_is_flagged():
    grid = tune.Grid(thresholds=(0.3, 0.5, 0.7), min_component_areas=(0, 100),
                     min_mask_areas=(0, 500), presence_thresholds=(0.2, 0.5))
    assert grid.at_edge(postprocess.Settings(threshold=0.5, presence_threshold=0.5)) == [
        "presence_threshold"]
    assert grid.at_edge(postprocess.Settings(threshold=0.7, min_mask_area=500,
                                           presence_threshold=0.2)) == [
        "threshold", "min_mask_area", "presence_threshold"]
    # A minimum area of 0 is no edge: nothing smaller can be searched.
    assert grid.at_edge(postprocess.Settings(threshold=0.5, min_component_area=0,
                                           presence_threshold=0.2)) == ["presence_threshold"]
