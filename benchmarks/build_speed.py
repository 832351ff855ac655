"""Times `nerve-jax build` on a synthetic download the size of the Kaggle one.

  .venv/bin/python benchmarks/build_speed.py [--subjects 47 --frames 120 --test 5508
      --data /tmp/nerve_build_bench --zip]

Generates (once, reused on later runs) a synthetic Kaggle folder with 47 subjects x 120 frames
(5,640 pairs; the real set has 5,635) and 5,508 test images, optionally zipped as Kaggle ships
it, then times separately, each in a fresh TFDS data dir:
  validate: kaggle.inspect, every TIFF decoded and every mask checked against train_masks.csv;
  build:    tfds_builder.prepare, which validates again, then decodes and PNG-encodes every
            image on all cores while TFDS writes the records.
Prints images/s (training frames count twice: image + mask) and one JSON line.
"""

import argparse
import os
import shutil
import sys
import tempfile
import time
import zipfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402
from nerve_jax.data import kaggle, synthetic, tfds_builder  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--subjects", type=int, default=47)
    p.add_argument("--frames", type=int, default=120)
    p.add_argument("--test", type=int, default=5508)
    p.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "nerve_build_bench"))
    p.add_argument("--zip", action="store_true", help="build from train.zip/test.zip")
    return p.parse_args(argv)


def ensure_data(args) -> str:
    folder = os.path.join(args.data, f"s{args.subjects}_f{args.frames}_t{args.test}")
    if not os.path.exists(os.path.join(folder, kaggle.TRAIN_MASKS_CSV)):
        shutil.rmtree(folder, ignore_errors=True)
        start = time.perf_counter()
        synthetic.generate(folder, num_subjects=args.subjects, frames_per_subject=args.frames,
                           num_test=args.test, seed=0, workers=os.cpu_count() or 1)
        print(f"generated {folder} in {time.perf_counter() - start:.0f} s", flush=True)
    if not args.zip:
        return folder
    zipped = folder + "_zip"
    if not os.path.exists(os.path.join(zipped, "test.zip")):
        os.makedirs(zipped, exist_ok=True)
        for part in ("train", "test"):
            with zipfile.ZipFile(os.path.join(zipped, part + ".zip"), "w") as z:
                for name in sorted(os.listdir(os.path.join(folder, part))):
                    z.write(os.path.join(folder, part, name), f"{part}/{name}")
        for name in (kaggle.TRAIN_MASKS_CSV, kaggle.SAMPLE_SUBMISSION_CSV):
            shutil.copy(os.path.join(folder, name), zipped)
    return zipped


def main(argv=None):
    args = parse_args(argv)
    source = ensure_data(args)
    start = time.perf_counter()
    download, problems = kaggle.inspect(source)
    validate_s = time.perf_counter() - start
    if problems:
        raise SystemExit(f"{len(problems)} problems in the synthetic data: {problems[:3]}")
    files = 2 * len(download.pairs) + len(download.tests)
    print(f"validate: {files} TIFFs in {validate_s:.1f} s = {files / validate_s:.0f} images/s",
          flush=True)
    with tempfile.TemporaryDirectory() as data_dir:
        start = time.perf_counter()
        builder = tfds_builder.prepare(source, data_dir)
        build_s = time.perf_counter() - start
        records = sum(split.num_examples for split in builder.info.splits.values())
    print(f"build (validation included): {records} records ({files} TIFFs) in {build_s:.1f} s "
          f"= {files / build_s:.0f} images/s", flush=True)
    common.print_json({
        "source": "zip" if args.zip else "folders", "pairs": len(download.pairs),
        "test_images": len(download.tests), "tiffs": files, "cores": os.cpu_count(),
        "validate_s": validate_s, "validate_images_per_s": files / validate_s,
        "build_s": build_s, "build_images_per_s": files / build_s, "records": records,
    })


if __name__ == "__main__":
    common.run_main(main)
