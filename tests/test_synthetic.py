"""The synthetic Kaggle look-alike: layout, file formats, determinism, label and texture
statistics."""

import csv
import json
import os

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from skimage import measure

from nerve_jax import rle
from nerve_jax.data import synthetic
from nerve_jax.data.kaggle import HEIGHT, WIDTH, read_tiff

SMALL = dict(num_subjects=3, frames_per_subject=6, num_test=4)

# Median and 10th-90th percentile over 70 real training frames of subjects 1, 2 and 10 (27 with a
# nerve), see docs/data.md, "Texture of the real frames".
REAL_TEXTURE = {
    "mean": (94.5, 85.7, 101.2),
    "std": (58.2, 51.9, 60.2),
    "share_above_200": (0.066, 0.050, 0.081),
    "local_std_7x7": (17.1, 14.6, 18.6),
    "autocorr_half_length_cols": (34.5, 29.9, 44.1),
    "autocorr_half_length_rows": (8.0, 6.0, 9.0),
    "mean_abs_diff_cols": (3.24, 2.86, 3.48),
    "mean_abs_diff_rows": (9.14, 7.71, 9.93),
    "power_spectrum_slope": (-3.47, -3.53, -3.35),
    "nerve_contrast_in_std_units": (0.67, 0.39, 1.03),
    "nerve_local_std_ratio": (1.27, 1.09, 1.50),
}


def _files(root: str) -> dict[str, bytes]:
    """Relative path -> bytes of every file under root."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


def _rows(path: str) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _small(image: np.ndarray) -> np.ndarray:
    """4x block-mean downscale, [420, 580] -> [105, 145] float32."""
    return image.astype(np.float32).reshape(HEIGHT // 4, 4, WIDTH // 4, 4).mean(axis=(1, 3))


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("synth") / "data")
    summary = synthetic.generate(out, seed=0, **SMALL)
    assert summary.num_train_images == 18 and summary.num_test_images == 4
    return out


def test_layout_and_names(small_dir):
    train = {
        f"{s}_{f}{kind}.tif" for s in range(1, 4) for f in range(1, 7) for kind in ("", "_mask")
    }
    assert set(os.listdir(os.path.join(small_dir, "train"))) == train
    assert set(os.listdir(os.path.join(small_dir, "test"))) == {f"{i}.tif" for i in range(1, 5)}
    assert {"train_masks.csv", "sample_submission.csv", synthetic.TRUTH_FILE} <= set(
        os.listdir(small_dir)
    )


def test_tiffs_are_lzw_uint8_and_masks_binary_single_component(small_dir):
    for sub in ("train", "test"):
        for name in os.listdir(os.path.join(small_dir, sub)):
            path = os.path.join(small_dir, sub, name)
            with Image.open(path) as im:
                assert im.info["compression"] == "tiff_lzw", path
                assert im.mode == "L" and im.size == (WIDTH, HEIGHT), path
            array = read_tiff(path)
            assert array.dtype == np.uint8 and array.shape == (HEIGHT, WIDTH)
            if name.endswith("_mask.tif"):
                assert set(np.unique(array)) <= {0, 255}, path
                if array.any():
                    assert measure.label(array > 0).max() == 1, path


def test_train_masks_csv_matches_masks(small_dir):
    rows = _rows(os.path.join(small_dir, "train_masks.csv"))
    with open(os.path.join(small_dir, "train_masks.csv")) as f:
        assert f.readline() == "subject,img,pixels\n"
    assert [(int(r["subject"]), int(r["img"])) for r in rows] == [
        (s, f) for s in range(1, 4) for f in range(1, 7)
    ]
    for r in rows:
        mask = read_tiff(os.path.join(small_dir, "train", f"{r['subject']}_{r['img']}_mask.tif"))
        np.testing.assert_array_equal(rle.decode(r["pixels"], (HEIGHT, WIDTH)), mask > 0)
        assert (r["pixels"] == "") == (not mask.any())


def test_sample_submission(small_dir):
    with open(os.path.join(small_dir, "sample_submission.csv")) as f:
        assert f.read() == "img,pixels\n" + "".join(f"{i},1 1\n" for i in range(1, 5))
    truth = _rows(os.path.join(small_dir, synthetic.TEST_MASKS_FILE))
    assert [int(r["img"]) for r in truth] == [1, 2, 3, 4]


def test_truth_file_without_contradictions(small_dir):
    with open(os.path.join(small_dir, synthetic.TRUTH_FILE)) as f:
        truth = json.load(f)
    assert truth["seed"] == 0 and truth["contradictory_pairs"] == []
    assert truth["params"]["frames_per_subject"] == 6
    assert truth["params"]["contradictory_rate"] == 0.0


@pytest.mark.slow
def test_same_seed_same_bytes_other_seed_differs(small_dir, tmp_path):
    synthetic.generate(tmp_path / "again", seed=0, **SMALL)
    synthetic.generate(tmp_path / "other", seed=1, **SMALL)
    first, again, other = (
        _files(small_dir),
        _files(tmp_path / "again"),
        _files(tmp_path / "other"),
    )
    assert first == again
    assert set(other) == set(first)
    assert other["train/1_1.tif"] != first["train/1_1.tif"]
    assert other["test/1.tif"] != first["test/1.tif"]


@pytest.mark.slow
def test_workers_do_not_change_output(tmp_path):
    args = dict(num_subjects=2, frames_per_subject=3, num_test=2, seed=5)
    synthetic.generate(tmp_path / "one", workers=1, **args)
    synthetic.generate(tmp_path / "two", workers=2, **args)
    assert _files(tmp_path / "one") == _files(tmp_path / "two")


def test_label_statistics_follow_the_real_data():
    areas, rows, cols, shares = [], [], [], {}
    for subject, _, mask in synthetic.iter_train_masks(40, 30, seed=0):
        shares.setdefault(subject, []).append(mask.any())
        if mask.any():
            r, c = np.nonzero(mask)
            areas.append(r.size)
            rows.append(r.mean())
            cols.append(c.mean())
            if len(areas) % 20 == 0:
                assert measure.label(mask).max() == 1
    share_empty = 1.0 - np.mean([v for s in shares.values() for v in s])
    per_subject = np.array([np.mean(v) for v in shares.values()])
    assert 0.45 <= share_empty <= 0.72
    assert per_subject.min() < 0.15 and per_subject.max() > 0.7
    assert 5000 <= np.median(areas) <= 9000
    assert 2500 <= np.min(areas) and np.max(areas) <= 18000
    assert 140 <= np.median(rows) <= 185
    assert 330 <= np.median(cols) <= 390
    assert 250 <= np.percentile(cols, 5) and np.percentile(cols, 95) <= 420


def test_presence_comes_in_runs():
    spec = synthetic.subject_spec(0, synthetic.TRAIN, 3, 400)
    present = np.array([f.labelled for f in spec.frames])
    changes = np.count_nonzero(present[1:] != present[:-1])
    p = present.mean()
    assert 0 < p < 1
    assert changes < 0.6 * 2 * p * (1 - p) * 399  # i.i.d. frames would switch this often


def test_nerve_contrast_only_changes_the_nerve():
    spec = synthetic.subject_spec(0, synthetic.TRAIN, 2, 40)
    frame = next(f for f in spec.frames if f.labelled)
    plain = synthetic.render_frame(synthetic.subject_anatomy(spec, 0.0), frame)
    nerve = synthetic.render_frame(synthetic.subject_anatomy(spec, 1.0), frame)
    mask = synthetic.frame_mask(spec, frame)
    changed = plain != nerve
    assert changed[mask].mean() > 0.3
    grown = np.zeros_like(mask)
    r, c = np.nonzero(mask)
    grown[max(r.min() - 20, 0) : r.max() + 21, max(c.min() - 20, 0) : c.max() + 21] = True
    assert not changed[~grown].any()


@pytest.mark.slow
def test_contradictory_twins(tmp_path):
    out = tmp_path / "twins"
    synthetic.generate(
        out, num_subjects=4, frames_per_subject=12, num_test=0, seed=1, contradictory_rate=0.2
    )
    with open(out / synthetic.TRUTH_FILE) as f:
        pairs = json.load(f)["contradictory_pairs"]
    assert pairs
    rows = _rows(str(out / "train_masks.csv"))
    assert len(rows) == 48
    for with_mask, without_mask in pairs:
        subject = with_mask.split("_")[0]
        assert without_mask.split("_")[0] == subject
        assert read_tiff(out / "train" / f"{with_mask}_mask.tif").any()
        assert not read_tiff(out / "train" / f"{without_mask}_mask.tif").any()
        a, b = (_small(read_tiff(out / "train" / f"{n}.tif")) for n in (with_mask, without_mask))
        others = [_small(read_tiff(out / "train" / f"{subject}_{k}.tif")) for k in range(1, 13)]
        unrelated = [np.abs(x - y).mean() for i, x in enumerate(others) for y in others[i + 1 :]]
        assert np.abs(a - b).mean() < 0.6 * np.median(unrelated)


@pytest.mark.parametrize("existing", ["train", "test"])
def test_refuses_a_folder_with_data(tmp_path, existing):
    os.makedirs(tmp_path / existing)
    with pytest.raises(ValueError, match=str(tmp_path)):
        synthetic.generate(tmp_path, **SMALL)


def test_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        synthetic.generate(tmp_path / "a", num_subjects=0)
    with pytest.raises(ValueError):
        synthetic.generate(tmp_path / "b", contradictory_rate=1.5)


def _local_std(x: np.ndarray) -> np.ndarray:
    """Std over the 7x7 window around each pixel."""
    mean = ndimage.uniform_filter(x, 7)
    return np.sqrt(np.maximum(ndimage.uniform_filter(x * x, 7) - mean * mean, 0.0))


def _half_length(autocorr: np.ndarray) -> int:
    """First lag at which a normalised autocorrelation drops below 0.5."""
    below = np.flatnonzero(autocorr < 0.5)
    return int(below[0]) if below.size else autocorr.size


def _spectrum_slope(centered: np.ndarray) -> float:
    """Least-squares slope of log radial power vs log k over k = 4..149 (integer radius bins)."""
    power = np.fft.fftshift(np.abs(np.fft.fft2(centered)) ** 2)
    rows, cols = np.indices(power.shape)
    center_row, center_col = power.shape[0] // 2, power.shape[1] // 2
    radius = np.hypot(rows - center_row, cols - center_col).astype(int).ravel()
    radial = np.bincount(radius, power.ravel()) / np.maximum(np.bincount(radius), 1)
    k = np.arange(4, 150)
    return float(np.polyfit(np.log(k), np.log(radial[k]), 1)[0])


def _texture_stats(image: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """REAL_TEXTURE's statistics of one frame; the nerve's only when `mask` is not empty."""
    x = image.astype(np.float64)
    centered = x - x.mean()
    spectrum = np.fft.fft2(centered)
    autocorr = np.real(np.fft.ifft2(np.abs(spectrum) ** 2))
    autocorr /= autocorr[0, 0]
    local_std = _local_std(x)
    stats = {
        "mean": x.mean(),
        "std": x.std(),
        "share_above_200": np.mean(x > 200),
        "local_std_7x7": local_std.mean(),
        "autocorr_half_length_cols": _half_length(autocorr[0, : x.shape[1] // 2]),
        "autocorr_half_length_rows": _half_length(autocorr[: x.shape[0] // 2, 0]),
        "mean_abs_diff_cols": np.abs(np.diff(x, axis=1)).mean(),
        "mean_abs_diff_rows": np.abs(np.diff(x, axis=0)).mean(),
        "power_spectrum_slope": _spectrum_slope(centered),
    }
    if mask.any():
        inside, outside = x[mask], x[~mask]
        stats["nerve_contrast_in_std_units"] = (inside.mean() - outside.mean()) / outside.std()
        stats["nerve_local_std_ratio"] = local_std[mask].mean() / local_std[~mask].mean()
    return stats


@pytest.mark.slow
@pytest.mark.mutation
def test_texture_follows_the_real_frames():
    """Per subject one frame with the nerve and one without, 12 subjects: medians in the bands."""
    frames = []
    for subject in range(1, 13):
        spec = synthetic.subject_spec(0, synthetic.TRAIN, subject, 40)
        anatomy = synthetic.subject_anatomy(spec, synthetic.DEFAULT_NERVE_CONTRAST)
        for labelled in (True, False):
            fs = next((f for f in spec.frames if f.labelled == labelled), None)
            if fs is not None:
                image = synthetic.render_frame(anatomy, fs)
                frames.append(_texture_stats(image, synthetic.frame_mask(spec, fs)))
    outside = {}
    for key, (_, low, high) in REAL_TEXTURE.items():
        values = [f[key] for f in frames if key in f]
        assert len(values) >= 8, key
        median = float(np.median(values))
        if not low <= median <= high:
            outside[key] = round(median, 3)
    assert not outside, f"medians outside the real p10-p90 band: {outside}"
