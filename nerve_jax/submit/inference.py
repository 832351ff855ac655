"""Trained models put to use: held-out predictions and `nerve-jax evaluate` (through the
evaluator), and `Segmenter` / `nerve-jax predict` on test images with test-time augmentation,
fold ensembles and post-processing."""

import dataclasses
import functools
import json
from collections.abc import Iterator, Sequence

import jax
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from nerve_jax import evaluation, fileio, metrics, parallel, postprocess, rle, runtime, step
from nerve_jax.atomic import atomic_open
from nerve_jax.data import kaggle, pipeline, tfds_builder
from nerve_jax.errors import UserError
from nerve_jax.submit import submission

EVAL_FILE = "eval.json"
OVERLAY_FILE = "overlay_val.png"


def write_heldout_predictions(workdir: str, tta: str | None = None) -> dict:
    """Held-out predictions of the best checkpoint on the validation subjects, saved as
    workdir/heldout_predictions.npz for `nerve-jax tune`: per frame its name, presence
    probability and logits at model resolution (float16)."""
    runtime.start_tensorflow()
    config, state, best = evaluation.restore_best(workdir, step.FOR_EVALUATION)
    evaluator = evaluation.with_config_settings(config, parallel.make_mesh(), tta)
    result, subjects = _validation_pass(workdir, config, state, evaluator)
    heldout = evaluation.heldout(result, best, subjects)
    path = evaluation.save_heldout(workdir, heldout) if jax.process_index() == 0 else None
    return {"heldout": path, "frames": len(heldout.names), "step": best, "tta": heldout.tta}


def _validation_pass(workdir: str, config, state,
                     evaluator: evaluation.Evaluator) -> tuple[evaluation.Evaluation, list[int]]:
    """The evaluator run on the workdir's validation subjects, their predictions kept."""
    builder = tfds_builder.prepare_for(config, workdir)
    subjects = evaluation.validation_subjects(config, builder)
    batches = evaluation.validation_batches(config, builder, subjects)
    return evaluator.run(state, batches, keep_predictions=True), subjects


def evaluate(workdir: str, tta: str | None = None) -> dict:
    """Kaggle Dice at full resolution on the validation subjects, with the post-processing of
    workdir/postprocess.json when present (else the config's), next to the config's values and
    the all-empty baseline; written to workdir/eval.json with an overlay PNG of some frames.
    Rewrites the held-out predictions on the way."""
    runtime.start_tensorflow()
    config, state, best = evaluation.restore_best(workdir, step.FOR_EVALUATION)
    tta = evaluation.resolve_tta(config, tta)
    settings, source, report = evaluation.settings_of(workdir, config)
    config_params = postprocess.Settings.from_config(config)
    extra = {} if settings == config_params else {"config_postprocess": config_params}
    evaluator = evaluation.Evaluator(config, parallel.make_mesh(), settings, source, tta, extra)
    result, subjects = _validation_pass(workdir, config, state, evaluator)
    heldout = evaluation.heldout(result, best, subjects)
    path = evaluation.save_heldout(workdir, heldout) if jax.process_index() == 0 else None
    scores = result.scores
    tuned_on = set(report.get("tuned_on", {}).get("subjects", []))
    out = {
        **scores,
        "val_dice_config_postprocess": scores.get("val_dice_config_postprocess",
                                                  scores["val_dice"]),
        "metrics": list(evaluator.metric_fns),
        "step": int(best), "val_subjects": subjects, "tta": tta,
        "postprocess": dataclasses.asdict(settings), "postprocess_source": source,
        "config_postprocess": dataclasses.asdict(config_params),
        # Settings tuned on these very frames score optimistically here; tune reports an
        # estimate from folds it did not tune on.
        "postprocess_tuned_on_these_frames": bool(tuned_on & set(subjects)),
        "heldout_predictions": path,
        "data": fileio.absolute(config.kaggle_dir),
        "metric": evaluation.METRIC,
    }
    if jax.process_index() == 0:
        with atomic_open(fileio.join(workdir, EVAL_FILE)) as f:
            json.dump(out, f, indent=2)
        out["overlay"] = save_overlay(config, state, subjects,
                                      fileio.join(workdir, OVERLAY_FILE), settings, tta)
    return out


def _overlay_frames(kaggle_dir: str, subjects: list[int], count: int) -> list[kaggle.TrainPair]:
    """Up to `count` validation frames, half with a nerve and half without where possible."""
    pairs, _ = kaggle.pair_train_files(kaggle.locate(kaggle_dir, "train"))
    pairs = [p for p in pairs if p.subject in set(subjects)]
    has_nerve = [kaggle.read_tiff(p.mask_path).any() for p in pairs]
    with_nerve = [p for p, h in zip(pairs, has_nerve, strict=True) if h]
    without = [p for p, h in zip(pairs, has_nerve, strict=True) if not h]
    rng = np.random.default_rng(0)
    half = count // 2
    chosen = [with_nerve[i] for i in rng.permutation(len(with_nerve))[:half]]
    chosen += [without[i] for i in rng.permutation(len(without))[: count - len(chosen)]]
    return chosen


def save_overlay(config, state, subjects: list[int], path: str, settings: postprocess.Settings,
                 tta: str = "none", count: int = 8) -> str:
    """PNG of validation frames: truth outline green, prediction outline red, with Dice."""
    pairs = _overlay_frames(config.kaggle_dir, subjects, count)
    images = np.stack([kaggle.read_tiff(p.image_path) for p in pairs])
    truths = np.stack([kaggle.read_tiff(p.mask_path) > 0 for p in pairs])
    resized = pipeline.resize_image(images[..., None], tuple(config.image_size)).numpy()
    predict = jax.jit(functools.partial(step.predict_step, tta=tta))
    predictions = jax.device_get(predict(jax.device_get(state), {"image": resized}))
    preds = postprocess.apply_batch(predictions["probs"], predictions["presence"], settings)
    dices = np.asarray(metrics.dice_per_image(preds, truths))
    rows = 1 if len(pairs) == 1 else 2
    columns = -(-len(pairs) // rows)
    fig = Figure(figsize=(4 * columns, 3.2 * rows))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")  # Panels without a frame (fewer than `count` frames) stay blank.
    for ax, pair, image, truth, pred, dice in zip(axes.flat, pairs, images, truths, preds,
                                                  dices, strict=False):
        ax.imshow(image, cmap="gray", vmin=0, vmax=255)
        if truth.any():
            ax.contour(truth, levels=[0.5], colors="lime", linewidths=1.2)
        if pred.any():
            ax.contour(pred, levels=[0.5], colors="red", linewidths=1.2)
        ax.set_title(f"{pair.name}  Dice {dice:.2f}", fontsize=9)
    fig.suptitle("validation: truth (green) vs prediction (red)")
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=80)
    return path


class Segmenter:
    """Masks from Python: the best checkpoints of one or more workdirs (an ensemble, whose
    full-resolution probabilities and presence are averaged), each with its TTA, and the first
    workdir's post-processing (its postprocess.json, else its config). `nerve-jax predict` runs
    the same computation, so the masks equal those of its CSV.

        seg = Segmenter.from_workdirs(["runs/fold0", "runs/fold1"])
        masks = seg(frames)               # uint8 [420, 580] or [N, 420, 580] -> bool, same shape
        probs = seg.probabilities(frames)  # float32, same shape
    """

    def __init__(self, workdirs: list[str], models: list[tuple], settings: postprocess.Settings,
                 settings_source: str, report: dict, ttas: list[str], batch_size: int):
        self.workdirs, self.models, self.ttas = workdirs, models, ttas
        self.settings, self.settings_source, self.report = settings, settings_source, report
        self.batch_size = batch_size
        mesh = parallel.make_mesh()
        self._predictors = [step.parallel_predict_step(config, mesh, t)
                            for (config, _, _), t in zip(models, ttas, strict=True)]

    @classmethod
    def from_workdirs(cls, workdirs: Sequence[str] | str, tta: str | None = None,
                      batch_size: int | None = None) -> "Segmenter":
        """`tta` overrides each workdir's config.tta; `batch_size` (global) the first config's
        eval_batch_size."""
        workdirs = [workdirs] if isinstance(workdirs, str) else list(workdirs)
        runtime.start_tensorflow()
        models = [evaluation.restore_best(w) for w in workdirs]
        settings, source, report = evaluation.settings_of(workdirs[0], models[0][0])
        ttas = [evaluation.resolve_tta(config, tta) for config, _, _ in models]
        batch_size = batch_size or models[0][0].eval_batch_size
        parallel.check_batch_size(batch_size, "batch size")
        return cls(workdirs, models, settings, source, report, ttas, batch_size)

    def image_sizes(self) -> list[tuple[int, int]]:
        return [tuple(config.image_size) for config, _, _ in self.models]

    def predict_batches(self, streams: Sequence[Iterator[dict]]) -> Iterator[dict]:
        """One stream of batches per model (the same frames in the same order, each at its
        model's size, from pipeline.test_batches or array_batches) -> per batch, the valid
        frames of every process: probs [n, 420, 580] float32 and presence [n] averaged over
        the models, and their "id"."""
        for batches in zip(*streams, strict=True):
            outs = [fn(state, batch) for fn, (_, state, _), batch in
                    zip(self._predictors, self.models, batches, strict=True)]
            probs = evaluation.gather(sum(out["probs"] for out in outs) / len(outs))
            presence = evaluation.gather(sum(out["presence"] for out in outs) / len(outs))
            ids = evaluation.gather(outs[0]["id"])
            keep = ids >= 0
            yield {"probs": probs[keep], "presence": presence[keep], "id": ids[keep]}

    def predict_arrays(self, images) -> tuple[np.ndarray, np.ndarray]:
        """(probs [N, 420, 580] float32, presence [N] float32) of frames [N, 420, 580] uint8."""
        images = _checked_frames(images)
        streams = [pipeline.array_batches(images, size, self.batch_size)
                   for size in self.image_sizes()]
        probs = np.zeros((len(images), kaggle.HEIGHT, kaggle.WIDTH), np.float32)
        presence = np.zeros(len(images), np.float32)
        for out in self.predict_batches(streams):
            probs[out["id"]], presence[out["id"]] = out["probs"], out["presence"]
        return probs, presence

    def probabilities(self, images) -> np.ndarray:
        """Full-resolution nerve probabilities, float32, of the shape of `images`."""
        images = np.asarray(images)
        probs, _ = self.predict_arrays(images.reshape(-1, *images.shape[-2:]))
        return probs.reshape(images.shape)

    def __call__(self, images) -> np.ndarray:
        """Post-processed masks, bool, of the shape of `images` (uint8 [420, 580] or [N, 420,
        580])."""
        images = np.asarray(images)
        probs, presence = self.predict_arrays(images.reshape(-1, *images.shape[-2:]))
        return postprocess.apply_batch(probs, presence, self.settings).reshape(images.shape)


def _checked_frames(images) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != kaggle.IMAGE_SHAPE:
        raise UserError(f"expected uint8 frames [420, 580] or [N, 420, 580], got {images.dtype} "
                        f"{list(images.shape)}")
    return images


def predict(workdirs: Sequence[str] | str, out_path: str, test_dir: str | None = None,
            tta: str | None = None, batch_size: int | None = None) -> dict:
    """Predicts every test image at full resolution and writes the Kaggle submission CSV.

    With several workdirs (e.g. the folds of a k-fold run, each with its own config and image
    size) the full-resolution probabilities and presence are averaged over their best
    checkpoints. The post-processing is the first workdir's postprocess.json (`nerve-jax tune`
    over all the folds writes the same pooled choice into each), else its config's values.
    `batch_size` (global) overrides the first config's eval_batch_size.
    """
    seg = Segmenter.from_workdirs(workdirs, tta, batch_size)
    first_config = seg.models[0][0]
    # Tune over all the folds writes one choice into each; say so where they disagree.
    disagreeing = sorted({w for w in seg.workdirs[1:]
                          if (loaded := postprocess.load(w)) and loaded[0] != seg.settings})
    test_dir = test_dir or kaggle.locate(first_config.kaggle_dir, "test") or fileio.join(
        first_config.kaggle_dir, "test")
    images = kaggle.scan_test(test_dir)
    # Every model reads the test images at its own size, in the same order and batches.
    streams = [pipeline.test_batches(images, size, seg.batch_size) for size in seg.image_sizes()]
    rles = {}
    for out in seg.predict_batches(streams):
        if jax.process_index() != 0:
            continue
        for image_id, frame_probs, frame_presence in zip(out["id"], out["probs"],
                                                         out["presence"], strict=True):
            mask = postprocess.apply(frame_probs, float(frame_presence), seg.settings)
            rles[int(image_id)] = rle.encode(mask)
    if jax.process_index() == 0:
        submission.write(out_path, list(rles), list(rles.values()))
    tuned_tta = seg.report.get("tuned_on", {}).get("tta")
    return {"submission": fileio.absolute(out_path), "images": len(rles),
            "non_empty": sum(bool(r) for r in rles.values()),
            "models": [{"workdir": w, "step": int(step), "tta": t}
                       for w, (_, _, step), t in zip(seg.workdirs, seg.models, seg.ttas,
                                                     strict=True)],
            "step": int(seg.models[0][2]), "postprocess": dataclasses.asdict(seg.settings),
            "postprocess_source": seg.settings_source, "postprocess_tuned_tta": tuned_tta,
            "postprocess_ignored": disagreeing, "batch_size": seg.batch_size}
