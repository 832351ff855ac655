"""The `nerve-jax` command."""

import argparse
import os
import sys
import traceback

from nerve_jax import fileio, runtime
from nerve_jax.errors import TrainingDiverged, UserError
from nerve_jax.runtime import distributed


def _cmd_synth(args: argparse.Namespace) -> int:
    from nerve_jax.data import synthetic

    summary = synthetic.generate(args.out, num_subjects=args.subjects,
                                 frames_per_subject=args.frames, num_test=args.test,
                                 seed=args.seed, workers=args.workers)
    print(f"wrote synthetic Kaggle-layout data to {os.path.abspath(args.out)}")
    print(summary)
    return 0


def _progress(enabled: bool, desc: str):
    """A tqdm wrapper for kaggle.inspect's progress hook, or None."""
    if not enabled:
        return None
    from tqdm import tqdm

    return lambda iterable, total: tqdm(iterable, total=total, desc=desc, unit="file")


def _cmd_validate_data(args: argparse.Namespace) -> int:
    from nerve_jax.data import kaggle
    from nerve_jax.errors import group_problems

    download, problems = kaggle.inspect(args.kaggle_dir, workers=args.workers,
                                        progress=_progress(not args.quiet, "checking"))
    if download is not None:
        print(f"{args.kaggle_dir}: {len(download.pairs)} training pairs from {download.train}, "
              f"{len(download.tests)} test images from {download.test or '(none)'}")
    for heading, group in group_problems(problems).items():
        print(f"{heading} ({len(group)}):")
        for problem in group:
            print(f"  - {problem}")
    print(f"{len(problems)} problem(s)" if problems else "no problems found")
    return 1 if problems else 0


def _is_main_process() -> bool:
    """Process 0 prints the results; the others run the same steps quietly."""
    import jax

    return jax.process_index() == 0


def _cmd_build(args: argparse.Namespace) -> int:
    from nerve_jax.data import tfds_builder

    data_dir = tfds_builder.data_dir(args.tfds_data_dir or "")
    builder = tfds_builder.prepare_on_process_zero(
        lambda: tfds_builder.prepare(args.kaggle_dir, data_dir), data_dir)
    if not _is_main_process():
        return 0
    for name, split in builder.info.splits.items():
        print(f"{tfds_builder.NAME} {name}: {split.num_examples} examples")
    print(f"TFDS data: {builder.data_dir}")
    if args.tfds_data_dir:
        print(f"train with --config.tfds_data_dir={fileio.absolute(data_dir)}")
    return 0


def _cmd_eda(args: argparse.Namespace) -> int:
    from nerve_jax.data import eda

    stats = eda.write_report(args.kaggle_dir, args.out, workers=args.workers,
                             duplicate_threshold=args.duplicate_threshold,
                             progress=not args.quiet)
    print(f"report: {fileio.join(fileio.absolute(args.out), 'index.html')}")
    print(f"{stats['contradictory_pairs']['count']} contradictory near-duplicate pairs")
    return 0


def _cmd_train(args: argparse.Namespace, overrides: list[str]) -> int:
    from nerve_jax import config_util, evaluation, train
    from nerve_jax.submit import inference

    config = config_util.load_config_file(args.config)
    config_util.apply_overrides(config, overrides)
    result = train.train_and_evaluate(config, args.workdir)
    if result.status == "interrupted":
        return 0  # The loop said which step it saved.
    if result.status == "already_early_stopped" and distributed.process_zero_says(
            fileio.isfile(fileio.join(args.workdir, evaluation.HELDOUT_FILE))):
        return 0
    heldout = inference.write_heldout_predictions(args.workdir)
    if not _is_main_process():
        return 0
    if result.val_metrics:
        metrics = result.val_metrics
        print(f"last evaluation, step {result.eval_step}: validation Dice "
              f"{metrics['val_dice']:.4f} (all-empty {metrics['val_empty_dice']:.4f}, "
              f"{metrics['val_frames']} frames, the config's post-processing)")
    print(f"best checkpoint: step {heldout['step']}, validation Dice {result.best.dice:.4f}; "
          "evaluate, tune and predict use it")
    print(f"held-out predictions for `nerve-jax tune`: {heldout['heldout']} "
          f"({heldout['frames']} frames, tta {heldout['tta']})")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from nerve_jax.submit import inference

    result = inference.evaluate(args.workdir, args.tta)
    if not _is_main_process():
        return 0
    print(f"validation subjects {result['val_subjects']} ({result['val_frames']} frames), "
          f"best checkpoint (step {result['step']}), tta {result['tta']}")
    print(f"post-processing: {result['postprocess_source']}")
    print(f"Kaggle Dice (420x580): model {result['val_dice']:.4f}   "
          f"all-empty baseline {result['val_empty_dice']:.4f}")
    if result["metrics"]:
        print("  " + "   ".join(f"{name} {result[f'val_{name}']:.4f}"
                                for name in result["metrics"]))
    if result["postprocess"] != result["config_postprocess"]:
        print(f"  with the config's post-processing instead: "
              f"{result['val_dice_config_postprocess']:.4f}")
    if result["postprocess_tuned_on_these_frames"]:
        print("  note: the post-processing was tuned on these frames, so the score is "
              "optimistic; `nerve-jax tune` prints a leave-one-fold-out estimate")
    print(f"results: {fileio.join(fileio.absolute(args.workdir), inference.EVAL_FILE)}")
    print(f"held-out predictions: {result['heldout_predictions']}")
    print(f"overlay: {fileio.absolute(result['overlay'])}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from nerve_jax.submit import inference

    fileio.check_writable(fileio.dirname(args.out) or ".", "the folder of --out")
    result = inference.predict(args.workdir, args.out, args.test_dir, args.tta, args.batch_size)
    if not _is_main_process():
        return 0
    models = result["models"]
    if len(models) > 1:
        print(f"ensemble of {len(models)} models (probabilities and presence averaged):")
    for model in models:
        print(f"  {model['workdir']}: checkpoint step {model['step']}, tta {model['tta']}")
    print(f"post-processing: {result['postprocess_source']}")
    tuned_tta = result["postprocess_tuned_tta"]
    if tuned_tta and sorted({m["tta"] for m in models}) != tuned_tta:
        print(f"  note: tuned on predictions with tta {tuned_tta}")
    for workdir in result["postprocess_ignored"]:
        print(f"  note: {workdir}/postprocess.json holds other values; not used")
    print(f"submission: {result['submission']} ({result['images']} images, "
          f"{result['non_empty']} with a nerve)")
    return _check(args.out, args.test_dir)


def _cmd_tune(args: argparse.Namespace) -> int:
    from nerve_jax.submit import tune

    launch = distributed.from_args(args)
    if launch and launch.process_id:
        print(f"process {launch.process_id}: tune runs on process 0 only")
        return 0
    result = tune.tune(args.workdir, workers=args.workers, progress=not args.quiet)
    for fold in result["folds"]:
        print(f"{fold['workdir']}: {fold['frames']} held-out frames, subjects "
              f"{fold['subjects']}, checkpoint step {fold['step']}, tta {fold['tta']}")
    for workdir in result["configs_differ"]:
        print(f"note: {workdir}'s config has other post-processing values than "
              f"{result['folds'][0]['workdir']}'s, whose values are the defaults here")
    scores = result["heldout_dice"]
    workers = result["workers"]
    print(f"searched {result['grid_points']} parameter settings on {scores['frames']} "
          f"held-out frames in {result['seconds']:.0f} s ({workers} "
          f"process{'es' if workers > 1 else ''}); {tune.METRIC}:")
    print(f"  all-empty baseline      {scores['all_empty']:.4f}")
    print(f"  config's settings       {scores['config']:.4f}   {result['defaults'].describe()}")
    print(f"  tuned (in-sample)       {scores['tuned_in_sample']:.4f}   "
          f"{result['settings'].describe()}")
    cross = result["leave_one_fold_out_dice"]
    if cross:
        print(f"  leave-one-fold-out      {cross['tuned_dice']:.4f}   (config's settings "
              f"{cross['config_dice']:.4f}): each fold scored with settings tuned on the others")
    else:
        print("  (one fold: no leave-one-fold-out estimate; the tuned score is optimistic)")
    if result["at_grid_edge"]:
        print(f"  note: {', '.join(result['at_grid_edge'])} at the end of the searched range")
    for path in result["files"]:
        print(f"wrote {path}")
    return 0


def _cmd_aot(args: argparse.Namespace, overrides: list[str]) -> int:
    from nerve_jax import aot, config_util

    aot.check_compiler(aot.target(args.topology))  # Before any slow work.
    config = config_util.load_config_file(args.config)
    config_util.apply_overrides(config, overrides)
    if args.largest_batch:
        search = aot.largest_batch(config, args.topology, args.headroom,
                                   on_probe=lambda p, fits: print(aot.probe_line(p, fits),
                                                                  flush=True))
        print("\n".join(aot.search_lines(search)))
        return 0 if search.largest else 1
    report = aot.compile_config(config, args.topology, args.programs.split(","))
    print("\n".join(aot.report_lines(report)))
    return 0 if all(p.fits for p in report.programs) else 1


def _check(path: str, test_dir: str | None) -> int:
    from nerve_jax.data import kaggle
    from nerve_jax.submit import submission

    expected = None
    if test_dir:
        expected = [im.id for im in kaggle.scan_test(test_dir)]
    problems = submission.validate(path, expected_ids=expected)
    for problem in problems:
        print(("warning: " if problem.warning else "error: ") + str(problem))
    fatal = submission.problems_are_fatal(problems)
    print(f"{path}: {'INVALID' if fatal else 'valid'}"
          + (f" ({len(problems)} problem(s))" if problems else ""))
    return 1 if fatal else 0


def _cmd_check_submission(args: argparse.Namespace) -> int:
    return _check(args.file, args.test_dir)


# The commands that import TensorFlow: tf.data (aot: through the config checks).
TENSORFLOW_COMMANDS = ("build", "train", "evaluate", "tune", "predict", "aot")
# The commands that run on several processes (jax.distributed) when asked. `tune` takes the
# same flags, but is host work that process 0 does alone.
DISTRIBUTED_COMMANDS = ("build", "train", "evaluate", "predict")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nerve-jax",
        description="Brachial plexus segmentation in neck ultrasound (Kaggle) with JAX/Flax.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true",
                        help="also show other libraries' log lines (TensorFlow, orbax, TFDS)")

    def command(name: str, **kwargs) -> argparse.ArgumentParser:
        p = subparsers.add_parser(name, parents=[common], **kwargs)
        if name in DISTRIBUTED_COMMANDS or name == "tune":
            distributed.add_arguments(p, host_only=name == "tune")
        return p

    p = command("synth", help="write a synthetic dataset in Kaggle layout")
    p.add_argument("--out", required=True, help="output folder (new or empty)")
    p.add_argument("--subjects", type=int, default=8, help="training subjects")
    p.add_argument("--frames", type=int, default=40, help="frames per subject")
    p.add_argument("--test", type=int, default=40, help="test images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="processes (output is the same for any value)")
    p.set_defaults(run=_cmd_synth)

    p = command("validate-data",
                       help="check a Kaggle download; list every problem (exit 0 only if clean)")
    p.add_argument("--kaggle-dir", required=True,
                   help="folder with train.zip/test.zip or train/ and test/, and the CSVs")
    p.add_argument("--workers", type=int, default=0, help="decoding threads (0: one per core)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_cmd_validate_data)

    p = command("build", help="check the Kaggle download and build the TFDS dataset "
                                     "ultrasound_nerve")
    p.add_argument("--kaggle-dir", required=True,
                   help="folder with train.zip/test.zip or train/ and test/, and the CSVs")
    p.add_argument("--tfds-data-dir", help="where to write it (default: $TFDS_DATA_DIR or "
                                          "~/tensorflow_datasets, where train looks too)")
    p.set_defaults(run=_cmd_build)

    p = command("eda", help="dataset report: figures, stats.json and index.html")
    p.add_argument("--kaggle-dir", required=True)
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("--duplicate-threshold", type=float, default=None,
                   help="near-duplicate distance (default: duplicates.DEFAULT_THRESHOLD)")
    p.add_argument("--workers", type=int, default=0, help="decoding threads (0: one per core)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_cmd_eda)

    p = command(
        "train", help="train and evaluate; resumes from the latest checkpoint in --workdir",
        epilog="Any config field can be overridden: --config.FIELD=VALUE, e.g. "
               "--config.kaggle_dir=DATA --config.batch_size=64 --config.image_size=96,128")
    p.add_argument("--config", required=True, help="config file, e.g. configs/quickstart.py")
    p.add_argument("--workdir", required=True, help="checkpoints, logs and results go here")
    p.set_defaults(run=_cmd_train, takes_overrides=True)

    tta_help = "test-time augmentation (default: config.tta of the workdir)"
    p = command("evaluate", help="Kaggle Dice on the validation subjects vs all-empty; "
                                        "rewrites the held-out predictions")
    p.add_argument("--workdir", required=True)
    p.add_argument("--tta", choices=("none", "hflip"), help=tta_help)
    p.set_defaults(run=_cmd_evaluate)

    p = command(
        "tune", help="choose post-processing on the pooled held-out predictions of the folds",
        description="Searches thresholds, minimum areas, largest component, hole filling and "
                    "ellipse fit for the best Kaggle Dice on the held-out predictions of the "
                    "given fold workdirs, and writes postprocess.json into each.")
    p.add_argument("--workdir", required=True, action="append",
                   help="a fold's workdir; repeat for each fold")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="processes scoring frames (the result is the same for any value)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_cmd_tune)

    p = command("predict", help="predict the test images and write a submission CSV")
    p.add_argument("--workdir", required=True, action="append",
                   help="repeat to average several models (e.g. folds); the first one's "
                        "postprocess.json (else config) sets the post-processing")
    p.add_argument("--out", required=True, help="submission CSV to write")
    p.add_argument("--test-dir", help="folder of <id>.tif (default: <kaggle_dir>/test)")
    p.add_argument("--tta", choices=("none", "hflip"), help=tta_help)
    p.add_argument("--batch-size", type=int,
                   help="images per step over all devices (default: the first config's "
                        "eval_batch_size)")
    p.set_defaults(run=_cmd_predict)

    p = command(
        "aot", help="compile the train, evaluation and prediction steps for a TPU slice or GPU "
                    "that is not attached: memory per chip, FLOPs, collectives",
        epilog="Any config field can be overridden: --config.FIELD=VALUE. Needs the target's "
               "compiler: pip install -e '.[tpu]' (libtpu) or '.[cuda12]' (h100). Exit 1 when "
               "a program does not fit the chip's memory.")
    p.add_argument("--config", required=True, help="config file, e.g. configs/tpu.py")
    p.add_argument("--topology", required=True,
                   help="v5e:1x1, v6e:1x1, v5e:2x2, v5e:2x4, v4:2x2x1, v5e:4x4 (4 hosts) or h100")
    p.add_argument("--programs", default="train,eval,predict",
                   help="comma-separated, from train, eval, predict (default: all)")
    p.add_argument("--largest-batch", action="store_true",
                   help="search the largest global batch whose train step fits (several "
                        "compiles, minutes each for the default UNet)")
    p.add_argument("--headroom", type=float, default=0.1,
                   help="--largest-batch: share of a chip's memory left free (default 0.1)")
    p.set_defaults(run=_cmd_aot, takes_overrides=True)

    p = command("check-submission", help="validate a submission CSV (exit 1 if invalid)")
    p.add_argument("file")
    p.add_argument("--test-dir", help="expect exactly the ids of the <id>.tif found here")
    p.set_defaults(run=_cmd_check_submission)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    runtime.configure(verbose=args.verbose)
    launch, peer_lost = None, False
    try:
        if args.command in DISTRIBUTED_COMMANDS and (launch := distributed.from_args(args)):
            distributed.initialize(launch, on_cpu=not runtime.accelerator_expected())
        if args.command in TENSORFLOW_COMMANDS:
            runtime.start_tensorflow()
        if getattr(args, "takes_overrides", False):
            return args.run(args, extra)
        if extra:
            parser.error(f"unrecognised arguments: {' '.join(extra)}")
        return args.run(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        code = 3 if isinstance(e, TrainingDiverged) else 2
    except KeyboardInterrupt:
        code = 130
    except Exception as e:
        if launch is None:
            raise
        if reason := distributed.lost_peer(e):
            print(f"error: {reason}", file=sys.stderr)
            peer_lost = True
        else:
            traceback.print_exc()
        code = 1
    if launch is not None:
        distributed.exit_now(code, grace=0 if peer_lost else 30)
    return code


# The commands that run XLA programs on batches, where a restart with huge pages pays for itself.
HUGE_PAGE_COMMANDS = ("train", "evaluate", "predict")


def entry() -> int:
    """The `nerve-jax` command: main(), for train/evaluate/predict on the CPU backend in a
    process that gets huge pages for its big allocations (it restarts once to get them;
    nerve_jax/runtime/host_malloc.py)."""
    if sys.argv[1:2] and sys.argv[1] in HUGE_PAGE_COMMANDS:
        runtime.reexec_with_huge_pages()
    return main()


if __name__ == "__main__":
    sys.exit(entry())
