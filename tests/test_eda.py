"""The dataset report: every promised file, numbers that match the masks, nothing on bad input."""

import html.parser
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from nerve_jax.data import duplicates, eda, kaggle, synthetic
from nerve_jax.errors import DataError

SUBJECTS, FRAMES, TEST_IMAGES = 4, 10, 3


@pytest.fixture(scope="module")
def kaggle_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("eda") / "data"
    # Seed 1 injects 4 contradictory twins, so any working detector reports some pairs.
    synthetic.generate(str(out), num_subjects=SUBJECTS, frames_per_subject=FRAMES,
                       num_test=TEST_IMAGES, seed=1, contradictory_rate=0.2)
    return str(out)


@pytest.fixture(scope="module")
def report(kaggle_dir, tmp_path_factory):
    out_dir = str(tmp_path_factory.mktemp("eda_report") / "report")  # does not exist yet
    stats = eda.write_report(kaggle_dir, out_dir, workers=2, progress=False, max_samples=2)
    return out_dir, stats


@pytest.fixture(scope="module")
def frames(kaggle_dir):
    """name -> (subject, image, bool mask), read straight from the generated files."""
    return {p.name: (p.subject, kaggle.read_tiff(p.image_path),
                     kaggle.read_tiff(p.mask_path) == 255)
            for p in kaggle.scan_train(kaggle_dir)}


class _ImageSources(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources, self.captions = [], 0

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.sources.append(dict(attrs)["src"])
        self.captions += tag == "figcaption"


def test_every_promised_file_is_valid(report):
    out_dir, stats = report
    pngs = sorted(n for n in os.listdir(out_dir) if n.endswith(".png"))
    assert sorted(stats["figures"]) == pngs
    assert set(pngs) == {eda.SAMPLES_PNG, eda.SHARE_PNG, eda.AREA_PNG, eda.POSITION_PNG,
                         eda.INTENSITY_PNG, eda.PAIRS_PNG, eda.TEST_PNG}
    for name in pngs:
        with Image.open(os.path.join(out_dir, name)) as im:
            assert im.format == "PNG" and min(im.size) > 100
            im.verify()
    with open(os.path.join(out_dir, "stats.json")) as f:
        assert json.load(f) == stats
    parser = _ImageSources()
    with open(os.path.join(out_dir, "index.html"), encoding="utf-8") as f:
        parser.feed(f.read())
    assert sorted(parser.sources) == pngs
    assert parser.captions == len(pngs)
    assert not [n for n in os.listdir(out_dir) if n.startswith(".")]  # no temporary files left


def test_stats_match_the_masks(report, frames):
    _, stats = report
    subjects = np.array([s for s, _, _ in frames.values()])
    masks = [m for _, _, m in frames.values()]
    areas = np.array([m.sum() for m in masks])
    has_nerve = areas > 0
    shares = [has_nerve[subjects == s].mean() for s in range(1, SUBJECTS + 1)]
    assert 0 < has_nerve.sum() < len(frames)  # the check below means something

    assert stats["counts"] == {"train_pairs": SUBJECTS * FRAMES, "subjects": SUBJECTS,
                               "with_nerve": int(has_nerve.sum()),
                               "empty": int((~has_nerve).sum()), "test_images": TEST_IMAGES}
    share = stats["nerve_share"]
    assert share["overall"] == pytest.approx(has_nerve.mean(), abs=1e-4)
    assert share["subject_min"] == pytest.approx(min(shares), abs=1e-4)
    assert share["subject_median"] == pytest.approx(np.median(shares), abs=1e-4)
    assert share["subject_max"] == pytest.approx(max(shares), abs=1e-4)
    assert share["per_subject"] == pytest.approx(
        {str(s): v for s, v in enumerate(shares, 1)}, abs=1e-4)

    area = stats["mask_area_px"]
    assert area["p50"] == pytest.approx(np.median(areas[has_nerve]), abs=0.01)
    assert (area["min"], area["max"]) == (areas[has_nerve].min(), areas[has_nerve].max())
    rows = [ndimage.center_of_mass(m)[0] for m in masks if m.any()]
    assert stats["mask_centroid_px"]["row"]["p50"] == pytest.approx(np.median(rows), abs=0.01)
    assert stats["mask_pixel_fraction"] == pytest.approx(areas.sum() / (len(masks) * 420 * 580),
                                                         abs=1e-6)
    inside = np.concatenate([im[m] for _, im, m in frames.values()])
    assert stats["intensity"]["inside_nerve"]["mean"] == pytest.approx(inside.mean(), abs=1e-3)
    assert stats["components"]["masks_not_one_component"] == 0


def test_contradictory_pairs_are_the_ones_duplicates_finds(report, frames):
    _, stats = report
    names = list(frames)
    found = duplicates.find_contradictory_pairs(
        names, np.array([frames[n][0] for n in names]),
        np.array([frames[n][2].any() for n in names]),
        np.stack([duplicates.frame_signature(frames[n][1]) for n in names]))
    reported = stats["contradictory_pairs"]
    assert reported["threshold"] == duplicates.DEFAULT_THRESHOLD
    assert reported["count"] == len(found) > 0
    assert [(p["with_nerve"], p["without_nerve"]) for p in reported["pairs"]] == [
        (p.with_nerve, p.without_nerve) for p in found]


def test_samples_are_balanced_and_deterministic():
    has_nerve = np.array([True, False, True, False, False, False, True, False])
    assert eda.choose_samples(has_nerve, 4) == [0, 6, 1, 7]
    only_two = np.array([True, False, False, True, False, False])
    assert eda.choose_samples(only_two, 5) == [0, 3, 1, 4, 5]
    assert eda.choose_samples(np.zeros(3, bool), 8) == [0, 1, 2]


def test_pair_gallery_cycles_subjects_and_shows_each_frame_once():
    pairs = [duplicates.Pair(1, "1_1", "1_2", 0.1), duplicates.Pair(1, "1_1", "1_3", 0.05),
             duplicates.Pair(1, "1_4", "1_5", 0.2), duplicates.Pair(2, "2_1", "2_2", 0.3)]
    chosen = eda.choose_pairs(pairs, 3)
    assert [(p.with_nerve, p.without_nerve) for p in chosen] == [
        ("1_1", "1_3"), ("2_1", "2_2"), ("1_4", "1_5")]
    assert len(eda.choose_pairs(pairs, 8)) == 3


def _write_pair(train_dir, name, mask, rng):
    kaggle.write_tiff(os.path.join(train_dir, f"{name}.tif"),
                      rng.integers(0, 256, (420, 580), dtype=np.uint8))
    kaggle.write_tiff(os.path.join(train_dir, f"{name}_mask.tif"), mask)


def test_split_masks_are_counted_and_test_folder_is_optional(tmp_path):
    rng = np.random.default_rng(0)
    train_dir = tmp_path / "data" / "train"
    train_dir.mkdir(parents=True)
    one, two, empty = (np.zeros((420, 580), np.uint8) for _ in range(3))
    one[100:160, 300:400] = 255
    two[100:160, 300:340] = 255
    two[100:160, 360:400] = 255
    for name, mask in (("1_1", one), ("1_2", two), ("2_1", empty), ("2_2", one)):
        _write_pair(train_dir, name, mask, rng)
    stats = eda.write_report(str(tmp_path / "data"), str(tmp_path / "report"), workers=1,
                             progress=False)
    assert stats["components"]["masks_not_one_component"] == 1
    assert stats["components"]["examples_not_one_component"] == ["1_2"]
    assert stats["components"]["masks_by_component_count"] == {"1": 2, "2": 1}
    assert stats["counts"]["test_images"] == 0 and stats["intensity"]["test"] is None
    assert eda.TEST_PNG not in stats["figures"]
    assert not (tmp_path / "report" / eda.TEST_PNG).exists()


def test_truncated_tiff_raises_and_writes_nothing(kaggle_dir, tmp_path):
    data_dir = tmp_path / "data"
    shutil.copytree(kaggle_dir, data_dir)
    victim = data_dir / "train" / "2_3.tif"
    victim.write_bytes(victim.read_bytes()[:500])
    out_dir = tmp_path / "report"
    with pytest.raises(DataError, match="2_3.tif"):
        eda.write_report(str(data_dir), str(out_dir), workers=1, progress=False)
    assert not (out_dir / "index.html").exists()
    assert not out_dir.exists()


def test_the_report_decodes_each_tiff_once_besides_the_galleries(kaggle_dir, tmp_path,
                                                                 monkeypatch):
    import collections

    decoded = collections.Counter()
    decode = kaggle._decode_tiff
    monkeypatch.setattr(kaggle, "_decode_tiff", lambda ref: decoded.update([ref]) or decode(ref))
    eda.write_report(kaggle_dir, str(tmp_path / "report"), workers=1, progress=False,
                     max_samples=2)
    files = len(os.listdir(os.path.join(kaggle_dir, "train"))) + len(
        os.listdir(os.path.join(kaggle_dir, "test")))
    assert len(decoded) == files
    # Read again: the 2 sample frames and the 2 pairs' 4 frames shown, image and mask each.
    assert sum(decoded.values()) - files <= 2 * 2 + 4 * 2
