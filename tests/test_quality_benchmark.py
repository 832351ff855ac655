"""The pieces of benchmarks/quality.py that decide its table: scoring, changes, the rows."""

import csv
import dataclasses
import functools
import json
import os
from pathlib import Path

import numpy as np
import pytest

from benchmarks import quality
from nerve_jax import config_util, rle
from nerve_jax.data import kaggle
from nerve_jax.submit import tune


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


def test_each_choice_changes_one_thing_and_trains_on_as_many_images(tmp_path):
    """--choices: the starter rows differ from each other only in the learning rate, the
    others from the recipe in one field; a row with another batch size or step scale trains on
    the images --steps of the recipe's batch would, the validations following its steps."""
    args = quality.parse_args(["--config", "configs/quickstart.py", "--steps", "400",
                               "--image-size", "96,128", "--evals", "2"])
    split = quality.Split("", str(tmp_path / "data"), str(tmp_path / "tfds"), {})
    recipe = quality.base_config(args, split)
    assert (recipe.num_train_steps, recipe.eval_every_steps, recipe.batch_size) == (400, 200, 16)
    assert tuple(recipe.image_size) == (96, 128)
    recipe_fields = recipe.to_dict()
    by_name = {piece.name: piece for piece in quality.CHOICES}
    for piece in quality.CHOICES:
        system = piece.add(quality.System())
        config = quality.base_config(args, split, system)
        images = config.num_train_steps * config.batch_size
        assert images == 400 * 16 * system.step_scale
        assert config.eval_every_steps == config.num_train_steps // (system.evals or 2)
        if piece.name.startswith("starter"):
            assert tuple(config.image_size) == (96, 96) and config.model.norm == "none"
            assert config.learning_rate == float(piece.name.split("Adam ")[1].split(" ")[0])
            continue
        if piece.against:  # One field changed against the row it is paired with.
            against = by_name[piece.against].add(quality.System())
            assert dataclasses.replace(system, overrides=()) == against
            other = quality.base_config(args, split, against).to_dict()
            assert len({k for k, v in config.to_dict().items() if v != other[k]}) == 1
            continue
        if piece.name.startswith("CPU recipe"):  # configs/cpu.py as shipped, then tuned.
            shipped = config_util.load_config_file("configs/cpu.py")
            shipped.kaggle_dir, shipped.tfds_data_dir = config.kaggle_dir, config.tfds_data_dir
            shipped.log_every_steps = config.log_every_steps  # The benchmark logs at evaluations.
            assert config.to_dict() == shipped.to_dict() and system.tuned
            continue
        changed = {k for k, v in config.to_dict().items() if v != recipe_fields[k]}
        changed -= {"num_train_steps", "eval_every_steps", "log_every_steps"}
        assert len(changed) <= 1 and (changed or system.tuned or system.step_scale > 1)
    assert quality.System().key() == (  # Results cached before the config and step fields.
        '{"folds": 1, "overrides": [], "tta": "none", "tuned": false}')


def test_results_of_another_recipe_are_never_reused(tmp_path):
    """The cache folder follows what --config holds, not only its name."""
    args = quality.parse_args(["--config", "configs/quickstart.py", "--steps", "400",
                               "--image-size", "96,128", "--out", str(tmp_path)])
    changed = tmp_path / "quickstart.py"
    changed.write_text(open("configs/quickstart.py").read().replace(
        "return config", "config.augment.enabled = not config.augment.enabled\n    return config"))
    other = quality.parse_args(["--config", str(changed), "--steps", "400",
                                "--image-size", "96,128", "--out", str(tmp_path)])
    assert quality.run_dir(args) == quality.run_dir(quality.parse_args(
        ["--config", "configs/quickstart.py", "--steps", "400", "--image-size", "96,128",
         "--out", str(tmp_path)]))
    assert quality.run_dir(args) != quality.run_dir(other)
    assert os.path.basename(quality.run_dir(args)).startswith("quickstart_96x128_steps400_")


def test_a_row_scored_with_other_seeds_is_run_again(tmp_path, monkeypatch):
    """--seeds 2 after --seeds 1: the cached one-seed row is not the answer (the run reuses the
    models already trained)."""
    system, path = quality.System(), str(tmp_path / quality.RESULTS_FILE)
    runs = []
    monkeypatch.setattr(quality, "run_system", lambda args, splits, s: runs.append(
        args.seeds) or {"dice": [0.5], "seed_dice": [0.5] * args.seeds})
    results = {}
    for seeds in (1, 1, 2, 2):
        args = quality.parse_args(["--seeds", str(seeds)])
        assert quality.cached(args, [], system, results, path)["seed_dice"] == [0.5] * seeds
    assert runs == [1, 2]
    with open(path) as f:
        assert len(json.load(f)[system.key()]["seed_dice"]) == 2


# --- --kaggle-dir: out-of-fold scoring of a user's own download ----------------------------

def _kaggle_folder(tmp_path_factory, subjects=6, frames=10):
    from nerve_jax.data import synthetic

    out = tmp_path_factory.mktemp("own_download") / "data"
    synthetic.generate(str(out), num_subjects=subjects, frames_per_subject=frames, num_test=2,
                       seed=3)
    return out


def _zipped(folder, dest):
    """The same training frames as Kaggle ships them: train.zip holding train/<name>.tif."""
    import zipfile

    dest.mkdir()
    with zipfile.ZipFile(dest / "train.zip", "w") as z:
        for path in sorted((folder / "train").iterdir()):
            z.write(path, f"train/{path.name}")
    return dest


def _masks_by_frame(folder) -> dict[tuple[int, int], np.ndarray]:
    from PIL import Image

    masks = {}
    for path in (folder / "train").glob("*_mask.tif"):
        subject, frame, _ = path.name.split("_")
        masks[(int(subject), int(frame))] = np.asarray(Image.open(path)) > 0
    return masks


@pytest.fixture(scope="module")
def own_download(tmp_path_factory):
    return _kaggle_folder(tmp_path_factory)


def _args(download, out, *more):
    return quality.parse_args(["--kaggle-dir", str(download), "--outer-folds", "2",
                               "--out", str(out), *more])


@pytest.mark.slow
def test_outer_folds_test_every_labelled_frame_once_on_subjects_never_trained_on(
        own_download, tmp_path):
    folder_splits = quality.ensure_data(_args(own_download, tmp_path / "a"))
    zip_splits = quality.ensure_data(_args(_zipped(own_download, tmp_path / "zips"),
                                           tmp_path / "b"))
    masks = _masks_by_frame(own_download)
    tested = []
    for split, zipped in zip(folder_splits, zip_splits, strict=True):
        with open(f"{split.data}/{quality.OUTER_TRUTH_FILE}") as f:
            rows = list(csv.DictReader(f))
        trained = {int(p.name.split("_")[0]) for p in (Path(split.data) / "train").iterdir()}
        held = {int(r["subject"]) for r in rows}
        assert trained and held and not trained & held
        assert trained | held == {s for s, _ in masks}
        for row in rows:
            key = (int(row["subject"]), int(row["frame"]))
            tested.append(key)
            test_image = Path(split.data) / "test" / f"{row['img']}.tif"
            assert test_image.read_bytes() == (own_download / "train" /
                                               f"{key[0]}_{key[1]}.tif").read_bytes()
            np.testing.assert_array_equal(rle.decode(split.truth[int(row["img"])]), masks[key])
        assert zipped.truth == split.truth  # zips or folders: the same outer folds
    assert sorted(tested) == sorted(masks)


@pytest.mark.slow
def test_kaggle_dir_ablation_runs_end_to_end_out_of_fold(own_download, tmp_path, capsys,
                                                         monkeypatch):
    """A piece that needs no new model and the one that adds a model per outer fold: 4
    trainings instead of the full table's 12."""
    pieces = [p for p in quality.PIECES if p.name in ("tuned post-processing", "2-fold ensemble")]
    assert len(pieces) == 2
    monkeypatch.setattr(quality, "PIECES", tuple(pieces))
    small = tune.Grid(thresholds=(0.3, 0.5), min_component_areas=(0, 500), min_mask_areas=(0,),
                      presence_thresholds=(0.5,))  # The tuning path, not the full search.
    monkeypatch.setattr(tune, "tune", functools.partial(tune.tune, grid=small))
    quality.main(["--kaggle-dir", str(own_download), "--outer-folds", "2",
                  "--config", "configs/test.py", "--image-size", "32,48", "--steps", "4",
                  "--seeds", "1", "--evals", "1", "--tune-workers", "1", "--out", str(tmp_path)])
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    masks = _masks_by_frame(own_download)
    assert record["images"] == len(masks) == 60
    rows = record["rows"]
    empty_share = np.mean([not m.any() for m in masks.values()])
    assert rows[0]["dice"] == pytest.approx(empty_share)
    assert [r["row"] for r in rows[2:]] == [p.name for p in quality.PIECES]
    assert all(0.0 <= r["dice"] <= 1.0 for r in rows)
    tuned = [r for r in rows if r["row"] == "tuned post-processing"][0]
    assert len(tuned["postprocess"]) == 2  # tuned once per outer fold, on its own training subjects
