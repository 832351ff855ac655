"""evaluate, predict and tune on a workdir whose model works at 420x580, against a NumPy reference.

At full resolution no resize stands between the model and the metric, so the test computes the
model's probabilities itself (the Flax module, applied to the TIFFs it reads with Pillow), and
then every Kaggle Dice and every submission mask in NumPy.
"""

import dataclasses
import glob
import json
import os
import shutil

import jax
import numpy as np
import pytest
from PIL import Image

import nerve_jax
from nerve_jax import checkpoint, cli, config_util, evaluation, postprocess, step
from nerve_jax.data import pipeline, tfds_builder
from nerve_jax.errors import UserError
from nerve_jax.submit import inference, tune
from tests import references


def _read(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def _dice(pred: np.ndarray, truth: np.ndarray) -> float:
    total = pred.sum() + truth.sum()
    return 1.0 if total == 0 else 2.0 * np.logical_and(pred, truth).sum() / total


class Reference:
    """The model's probabilities [420, 580] float64 for one uint8 image, computed here."""

    def __init__(self, state):
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        self.apply = jax.jit(lambda x: state.apply_fn(variables, x, train=False)["logits"])

    def probs(self, image: np.ndarray) -> np.ndarray:
        logits = self.apply(image[None, :, :, None].astype(np.float32) / 255.0)
        return 1.0 / (1.0 + np.exp(-np.asarray(logits, np.float64)[0, :, :, 0]))


@pytest.fixture(scope="module")
def full_size_workdir(tiny_kaggle_dir, tmp_path_factory, test_config):
    """An untrained 2-level UNet at 420x580 saved as the workdir's only (best) checkpoint."""
    root = tmp_path_factory.mktemp("full_size")
    workdir = str(root / "work")
    config = test_config()
    config.image_size = (420, 580)
    config.kaggle_dir = tiny_kaggle_dir
    config.tfds_data_dir = str(root / "tfds")
    config.model.presence_head = False
    config.num_folds = 4  # One validation subject: 6 frames.
    os.makedirs(workdir)
    config_util.save(config, workdir)
    state = step.create_train_state(config, jax.random.key(7))
    # A bias that puts the probabilities around the thresholds below, not all at 0.5.
    state.params["Conv_0"]["bias"] = state.params["Conv_0"]["bias"] - 0.05
    mngr = checkpoint.manager(workdir)
    checkpoint.save(mngr, 1, state, 0.5)
    mngr.wait_until_finished()
    return workdir, config, Reference(state)


def _validation_frames(config):
    builder = tfds_builder.prepare_for(config, "unused")
    subjects = pipeline.split_subjects(list(pipeline.frames_per_subject(builder)),
                                       config.num_folds, config.fold, config.split_seed)[1]
    paths = sorted(p for p in glob.glob(os.path.join(config.kaggle_dir, "train", "*.tif"))
                   if not p.endswith("_mask.tif")
                   and int(os.path.basename(p).split("_")[0]) in subjects)
    assert paths
    return paths


@pytest.fixture(scope="module")
def reference_scores(full_size_workdir):
    """Per frame: (probabilities, truth) of the validation subjects."""
    _, config, reference = full_size_workdir
    frames = []
    for path in _validation_frames(config):
        truth = _read(path[:-4] + "_mask.tif") > 0
        frames.append((reference.probs(_read(path)), truth))
    return frames


def _mean_dice(frames, threshold):
    return float(np.mean([_dice(probs > threshold, truth) for probs, truth in frames]))


@pytest.fixture(scope="module")
def evaluated(full_size_workdir) -> dict:
    """evaluate's result; it also writes the held-out predictions that tune reads."""
    return inference.evaluate(full_size_workdir[0])


@pytest.mark.slow
@pytest.mark.mutation
def test_evaluate_scores_the_kaggle_dice_of_the_validation_frames(full_size_workdir, evaluated,
                                                                  reference_scores):
    workdir, config, _ = full_size_workdir
    result = evaluated
    saved = json.load(open(os.path.join(workdir, inference.EVAL_FILE)))
    assert saved["val_dice"] == pytest.approx(result["val_dice"])
    # No postprocess.json: the config's post-processing is the one scored.
    assert saved["val_dice_config_postprocess"] == saved["val_dice"]
    assert saved["postprocess_tuned_on_these_frames"] is False
    assert result["val_frames"] == len(reference_scores)
    assert result["val_dice"] == pytest.approx(_mean_dice(reference_scores, 0.5), abs=1e-4)
    empty = np.mean([not truth.any() for _, truth in reference_scores])
    assert result["val_empty_dice"] == pytest.approx(empty)
    assert 0 < _mean_dice(reference_scores, 0.5) < 1  # Masks are neither all right nor empty.


@pytest.mark.slow
@pytest.mark.mutation
def test_tune_chooses_the_threshold_with_the_best_dice(full_size_workdir, evaluated,
                                                       reference_scores):
    workdir, _, _ = full_size_workdir
    probs = np.concatenate([p.ravel() for p, _ in reference_scores])
    thresholds = tuple(float(np.round(np.quantile(probs, q), 4)) for q in (0.3, 0.7, 0.95))
    grid = tune.Grid(thresholds=thresholds, min_component_areas=(0,), min_mask_areas=(0,),
                     presence_thresholds=(0.5,))
    result = tune.tune([workdir], grid, write=False)
    scores = {t: _mean_dice(reference_scores, t) for t in (*thresholds, 0.5)}
    best = max(thresholds, key=scores.get)
    assert len(set(np.round(list(scores.values()), 4))) > 2  # The thresholds matter.
    assert result["settings"].threshold in (best, 0.5) and scores[result["settings"].threshold] \
        == pytest.approx(max(scores.values()), abs=1e-4)
    assert result["heldout_dice"]["tuned_in_sample"] == pytest.approx(max(scores.values()),
                                                                     abs=1e-3)
    assert result["heldout_dice"]["config"] == pytest.approx(scores[0.5], abs=1e-3)
    assert result["heldout_dice"]["frames"] == len(reference_scores)
    empty = np.mean([not truth.any() for _, truth in reference_scores])
    assert result["heldout_dice"]["all_empty"] == pytest.approx(empty)
    # The config's threshold joins the grid; x 2 x 2 x 2 for the three shape switches.
    assert result["grid_points"] == len({*thresholds, 0.5}) * 8


@pytest.mark.slow
@pytest.mark.mutation
@pytest.mark.parametrize("tta", ["none", "hflip"])
def test_predict_writes_the_thresholded_probabilities_of_every_test_image(
        full_size_workdir, tmp_path, tta):
    workdir, config, reference = full_size_workdir
    paths = glob.glob(os.path.join(config.kaggle_dir, "test", "*.tif"))
    threshold = float(np.median(reference.probs(_read(paths[0]))))
    postprocess.save(workdir, postprocess.Settings(threshold=threshold), {})
    try:
        out = str(tmp_path / "submission.csv")
        result = inference.predict([workdir], out, tta=tta)
    finally:
        os.remove(os.path.join(workdir, postprocess.POSTPROCESS_FILE))
    got = references.submission_masks(out)
    assert sorted(got) == sorted(int(os.path.basename(p)[:-4]) for p in paths)
    assert result["images"] == len(paths)
    for path in paths:
        image = _read(path)
        probs = reference.probs(image)
        if tta == "hflip":
            probs = (probs + reference.probs(image[:, ::-1])[:, ::-1]) / 2
        want = probs > threshold
        near = np.abs(probs - threshold) < 1e-5
        mask = got[int(os.path.basename(path)[:-4])]
        assert np.array_equal(mask[~near], want[~near]), path
        assert 0.05 < want.mean() < 0.95


@pytest.mark.slow
@pytest.mark.mutation
def test_segmenter_masks_equal_the_submissions(full_size_workdir, tmp_path):
    workdir, config, reference = full_size_workdir
    paths = sorted(glob.glob(os.path.join(config.kaggle_dir, "test", "*.tif")))
    images = np.stack([_read(p) for p in paths])
    threshold = float(np.median(reference.probs(images[0])))
    postprocess.save(workdir, postprocess.Settings(threshold=threshold, min_mask_area=50), {})
    try:
        out, out_16 = str(tmp_path / "a.csv"), str(tmp_path / "b.csv")
        assert cli.main(["predict", "--workdir", workdir, "--out", out]) == 0
        assert cli.main(["predict", "--workdir", workdir, "--out", out_16,
                         "--batch-size", "16"]) == 0
        seg = nerve_jax.Segmenter.from_workdirs(workdir)
        masks, single = seg(images), seg(images[1])
        probs = seg.probabilities(images)
    finally:
        os.remove(os.path.join(workdir, postprocess.POSTPROCESS_FILE))
    written = references.submission_masks(out)
    assert references.submission_masks(out_16).keys() == written.keys()
    for path, mask in zip(paths, masks, strict=True):
        image_id = int(os.path.basename(path)[:-4])
        np.testing.assert_array_equal(mask, written[image_id])
        np.testing.assert_array_equal(references.submission_masks(out_16)[image_id], mask)
    assert masks.dtype == bool and masks.shape == images.shape
    np.testing.assert_array_equal(single, masks[1])
    assert probs.dtype == np.float32 and probs.shape == images.shape
    np.testing.assert_allclose(probs[0], reference.probs(images[0]), atol=1e-5)


def test_segmenter_refuses_frames_it_cannot_read():
    with pytest.raises(UserError, match=r"expected uint8 frames \[420, 580\] or \[N, 420, 580\], "
                                        r"got float32 \[2, 420, 580\]"):
        inference._checked_frames(np.zeros((2, 420, 580), np.float32))


def test_an_unknown_tta_names_the_choices(test_config):
    with pytest.raises(UserError, match=r"tta='vflip': choose one of \('none', 'hflip'\)"):
        evaluation.resolve_tta(test_config(), "vflip")
    assert evaluation.resolve_tta(test_config(), None) == "none"


@pytest.mark.slow
@pytest.mark.mutation
def test_an_ensemble_uses_the_first_workdirs_postprocessing_and_says_which_differ(
        full_size_workdir, tmp_path):
    workdir, _, _ = full_size_workdir
    others = [shutil.copytree(workdir, str(tmp_path / name)) for name in ("other", "same")]
    postprocess.save(others[0], postprocess.Settings(threshold=0.9), {})
    result = inference.predict([workdir, *others], str(tmp_path / "sub.csv"))
    assert result["postprocess_ignored"] == [others[0]]
    assert result["postprocess"] == dataclasses.asdict(postprocess.Settings())
    assert [m["workdir"] for m in result["models"]] == [workdir, *others]


def shell_bound_loss(outputs: dict, batch: dict) -> jax.Array:
    """A loss whose body reads what only the training shell has: tracing it anywhere else
    fails."""
    return outputs["logits"].mean(axis=(1, 2, 3)) * float(os.environ["ONLY_IN_TRAINING_SHELL"])


@pytest.fixture(scope="module")
def later_worse_workdir(full_size_workdir, tmp_path_factory):
    """The full-size workdir with a second, later checkpoint of lower validation Dice whose
    every probability is near 1, and a config naming a loss module this shell cannot import
    and a batch transform of the same kind."""
    workdir, config, _ = full_size_workdir
    copy = shutil.copytree(workdir, str(tmp_path_factory.mktemp("later_worse") / "work"))
    state = step.create_train_state(config, jax.random.key(7))
    state.params["Conv_0"]["bias"] = state.params["Conv_0"]["bias"] + 50.0
    mngr = checkpoint.manager(copy)
    checkpoint.save(mngr, 2, state, 0.1)
    mngr.wait_until_finished()
    saved = json.load(open(os.path.join(copy, config_util.CONFIG_FILE)))
    saved["batch_transform"] = "module_of_the_training_shell:cutmix"
    saved["loss"] = "module_of_the_training_shell:my_loss"
    with open(os.path.join(copy, config_util.CONFIG_FILE), "w") as f:
        json.dump(saved, f)
    return copy


@pytest.mark.slow
@pytest.mark.mutation
def test_a_workdir_config_names_what_training_would_miss(later_worse_workdir):
    with pytest.raises(config_util.ConfigError, match="module_of_the_training_shell"):
        config_util.load(later_worse_workdir, step.FOR_TRAINING)


@pytest.mark.slow
@pytest.mark.mutation
def test_evaluate_tune_predict_and_segmenter_use_the_best_checkpoint_not_the_last(
        full_size_workdir, later_worse_workdir, evaluated, tmp_path):
    """Step 1 is the best, step 2 the last; the config's loss and batch transform cannot be
    imported here, so these commands must resolve only the model (and evaluate its metrics)."""
    workdir, config, reference = full_size_workdir
    result = inference.evaluate(later_worse_workdir)
    assert result["step"] == 1 and result["val_dice"] == pytest.approx(evaluated["val_dice"])
    assert evaluation.load_heldout(later_worse_workdir).step == 1
    grid = tune.Grid(thresholds=(0.5,), min_component_areas=(0,), min_mask_areas=(0,),
                     presence_thresholds=(0.5,))
    assert tune.tune([later_worse_workdir], grid, write=False)["folds"][0]["step"] == 1
    out = str(tmp_path / "submission.csv")
    assert inference.predict(later_worse_workdir, out)["step"] == 1
    image = _read(sorted(glob.glob(os.path.join(config.kaggle_dir, "test", "*.tif")))[0])
    probs = nerve_jax.Segmenter.from_workdirs(later_worse_workdir).probabilities(image)
    np.testing.assert_allclose(probs, reference.probs(image), atol=1e-5)


@pytest.mark.slow
def test_predict_never_traces_the_training_loss(full_size_workdir, tmp_path, monkeypatch):
    workdir, _, _ = full_size_workdir
    copy = shutil.copytree(workdir, str(tmp_path / "work"))
    saved = json.load(open(os.path.join(copy, config_util.CONFIG_FILE)))
    saved["loss"] = f"{__name__}:shell_bound_loss"
    with open(os.path.join(copy, config_util.CONFIG_FILE), "w") as f:
        json.dump(saved, f)
    monkeypatch.delenv("ONLY_IN_TRAINING_SHELL", raising=False)
    with pytest.raises(config_util.ConfigError, match="ONLY_IN_TRAINING_SHELL"):
        config_util.load(copy, step.FOR_TRAINING)
    result = inference.predict(copy, str(tmp_path / "submission.csv"))
    assert result["images"] == 4
