"""Restoring trained models; held-out predictions; evaluating on the validation subjects;
predicting test images with test-time augmentation, fold ensembles and post-processing."""

import dataclasses
import functools
import io
import json
import zipfile
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from nerve_jax import checkpoint, fileio, metrics, parallel, postprocess, rle, runtime, train
from nerve_jax.atomic import atomic_open
from nerve_jax.data import kaggle, pipeline
from nerve_jax.errors import UserError
from nerve_jax.submit import submission

EVAL_FILE = "eval.json"
OVERLAY_FILE = "overlay_val.png"
HELDOUT_FILE = "heldout_predictions.npz"


def best_step(workdir: str) -> int:
    """The step of the checkpoint with the best validation Dice (else the latest)."""
    mngr = checkpoint.manager(workdir, read_only=True)
    step = mngr.best_step() or mngr.latest_step()
    if step is None:
        raise UserError(f"{workdir}: no checkpoint found; run `nerve-jax train` first")
    return int(step)


def restore_best(workdir: str) -> tuple[ml_collections.ConfigDict, train.TrainState, int]:
    """(config, replicated state, step) of the checkpoint with the best validation Dice."""
    config = train.load_config(workdir)
    step = best_step(workdir)
    # Shapes only: initialising the model eagerly would cost seconds per workdir.
    abstract = jax.eval_shape(lambda: train.create_train_state(config, jax.random.key(0)))
    replicated = NamedSharding(parallel.make_mesh(), P())
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), abstract)
    mngr = checkpoint.manager(workdir, read_only=True)
    return config, checkpoint.restore(mngr, step, abstract), step


def resolve_tta(config: ml_collections.ConfigDict, tta: str | None = None) -> str:
    """`tta` if given, else config.tta."""
    tta = tta or config.tta
    if tta not in train.TTA_CHOICES:
        raise UserError(f"tta={tta!r}: choose one of {train.TTA_CHOICES}")
    return tta


def _gather(x) -> np.ndarray:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def validation_subjects(config: ml_collections.ConfigDict, builder) -> list[int]:
    frames = pipeline.frames_per_subject(builder)
    return pipeline.split_subjects(list(frames), config.num_folds, config.fold,
                                   config.split_seed)[1]


def _validation_predictions(config, state, builder, subjects: list[int],
                            tta: str) -> Iterator[dict]:
    """Per batch, the valid validation frames of all processes: logits [n, h, w], probs
    [n, 420, 580], presence [n], image [n, h, w, 1], mask_full [n, 420, 580] bool, subject [n],
    frame [n]."""
    def step(state, batch):
        out = train.predict_step(state, batch, tta=tta)
        return {**out, **{k: batch[k] for k in ("image", "mask_full", "subject", "frame",
                                                 "valid")}}

    predict = parallel.parallelize(step, config.parallel, parallel.make_mesh(), out_batched=True)
    for batch in pipeline.eval_batches(builder, subjects, config.image_size,
                                       config.eval_batch_size):
        out = {k: _gather(v) for k, v in predict(state, batch).items()}
        valid = out.pop("valid")
        yield {k: v[valid] for k, v in out.items()}


class HeldOut(NamedTuple):
    """A fold's held-out predictions, as saved in workdir/heldout_predictions.npz."""

    names: np.ndarray  # [N] str, "<subject>_<frame>".
    subjects: np.ndarray  # [N] int32.
    logits: np.ndarray  # [N, h, w] float16 at the model's resolution (train.predict_step).
    presence: np.ndarray  # [N] float32.
    step: int  # The checkpoint that made them.
    tta: str
    val_subjects: list[int]


def save_heldout(workdir: str, heldout: HeldOut) -> str:
    path = fileio.join(workdir, HELDOUT_FILE)
    with atomic_open(path, "wb") as f:
        np.savez_compressed(f, names=heldout.names, subjects=heldout.subjects,
                            logits=heldout.logits, presence=heldout.presence,
                            step=heldout.step, tta=heldout.tta,
                            val_subjects=np.asarray(heldout.val_subjects, np.int32))
    return path


def load_heldout(workdir: str) -> HeldOut:
    """workdir/heldout_predictions.npz; UserError naming the file if missing or unreadable."""
    path = fileio.join(workdir, HELDOUT_FILE)
    if not fileio.isfile(path):
        raise UserError(f"{path}: no held-out predictions; `nerve-jax train` writes them when "
                        f"it ends, `nerve-jax evaluate --workdir {workdir}` rewrites them")
    try:
        with np.load(io.BytesIO(fileio.read_bytes(path))) as f:
            heldout = HeldOut(f["names"], f["subjects"], f["logits"], f["presence"],
                              int(f["step"]), str(f["tta"]), f["val_subjects"].tolist())
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise UserError(f"{path}: unreadable held-out predictions ({e}); rewrite them with "
                        f"`nerve-jax evaluate --workdir {workdir}`") from None
    n = len(heldout.names)
    if heldout.logits.ndim != 3 or len(heldout.logits) != n or heldout.presence.shape != (n,):
        raise UserError(f"{path}: arrays of inconsistent shapes; rewrite them with "
                        f"`nerve-jax evaluate --workdir {workdir}`")
    return heldout


def postprocess_settings(workdir: str,
                       config: ml_collections.ConfigDict) -> tuple[postprocess.Settings, str, dict]:
    """(settings, where they come from, tune's report or {}): workdir/postprocess.json when
    present, else the config's values."""
    loaded = postprocess.load(workdir)
    if loaded is None:
        return (postprocess.Settings.from_config(config),
                f"config values (no {postprocess.POSTPROCESS_FILE} in {workdir})", {})
    settings, report = loaded
    return settings, fileio.join(workdir, postprocess.POSTPROCESS_FILE), report


def validation_pass(workdir: str, config: ml_collections.ConfigDict, state: train.TrainState,
                    step: int, tta: str,
                    scored: dict[str, postprocess.Settings] | None = None) -> dict:
    """Predicts the validation subjects once: writes workdir/heldout_predictions.npz and
    returns the Kaggle Dice (420x580, empty vs empty = 1) of each of `scored`'s settings,
    as "<name>_dice", next to the all-empty baseline, over the same frames; and config.metrics
    of the masks of scored["val"], as "metric_<name>"."""
    scored = scored or {}
    metric_fns = metrics.from_config(config) if "val" in scored else {}
    builder = train.prepare_data(config, workdir)
    subjects = validation_subjects(config, builder)
    sums = dict.fromkeys([*scored, "empty", *[f"metric_{m}" for m in metric_fns]], 0.0)
    parts = []
    for frames in _validation_predictions(config, state, builder, subjects, tta):
        for name, settings in scored.items():
            masks = postprocess.apply_batch(frames["probs"], frames["presence"], settings)
            sums[name] += float(np.sum(metrics.dice_per_image(masks, frames["mask_full"])))
            if name == "val":
                for metric, fn in metric_fns.items():
                    values = np.asarray(fn({**frames, "masks": masks}, frames))
                    sums[f"metric_{metric}"] += float(np.sum(values))
        sums["empty"] += float(np.sum(metrics.empty_baseline_per_image(frames["mask_full"])))
        parts.append({"logits": frames["logits"].astype(np.float16),
                      "presence": frames["presence"].astype(np.float32),
                      "subjects": frames["subject"].astype(np.int32),
                      "names": np.array([f"{s}_{f}" for s, f in
                                         zip(frames["subject"], frames["frame"], strict=True)])})
    joined = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    heldout = HeldOut(step=int(step), tta=tta, val_subjects=subjects, **joined)
    path = save_heldout(workdir, heldout) if jax.process_index() == 0 else None
    count = len(heldout.names)
    return {**{(name if name.startswith("metric_") else f"{name}_dice"): total / count
               for name, total in sums.items()},
            "frames": count, "val_subjects": subjects, "heldout": path}


def write_heldout_predictions(workdir: str, tta: str | None = None) -> dict:
    """Held-out predictions of the best checkpoint on the validation subjects, saved as
    workdir/heldout_predictions.npz for `nerve-jax tune`: per frame its name, presence
    probability and logits at model resolution (float16)."""
    runtime.start_tensorflow()
    config, state, step = restore_best(workdir)
    tta = resolve_tta(config, tta)
    result = validation_pass(workdir, config, state, step, tta)
    return {"heldout": result["heldout"], "frames": result["frames"], "step": step, "tta": tta}


def evaluate(workdir: str, tta: str | None = None) -> dict:
    """Kaggle Dice at full resolution on the validation subjects, with the post-processing of
    workdir/postprocess.json when present (else the config's), next to the config's values and
    the all-empty baseline; written to workdir/eval.json with an overlay PNG of some frames.
    Rewrites the held-out predictions on the way."""
    runtime.start_tensorflow()
    config, state, step = restore_best(workdir)
    tta = resolve_tta(config, tta)
    settings, source, report = postprocess_settings(workdir, config)
    config_params = postprocess.Settings.from_config(config)
    scored = {"val": settings} if settings == config_params else {"val": settings,
                                                                "config": config_params}
    scores = validation_pass(workdir, config, state, step, tta, scored)
    tuned_on = set(report.get("tuned_on", {}).get("subjects", []))
    result = {
        "val_dice": scores["val_dice"], "val_empty_dice": scores["empty_dice"],
        "val_dice_config_postprocess": scores.get("config_dice", scores["val_dice"]),
        "val_frames": scores["frames"],
        **{f"val_{k.removeprefix('metric_')}": v for k, v in scores.items()
           if k.startswith("metric_")},
        "metrics": [k.removeprefix("metric_") for k in scores if k.startswith("metric_")],
        "step": int(step), "val_subjects": scores["val_subjects"], "tta": tta,
        "postprocess": dataclasses.asdict(settings), "postprocess_source": source,
        "config_postprocess": dataclasses.asdict(config_params),
        # Settings tuned on these very frames score optimistically here; tune reports an
        # estimate from folds it did not tune on.
        "postprocess_tuned_on_these_frames": bool(tuned_on & set(scores["val_subjects"])),
        "heldout_predictions": scores["heldout"],
        "data": fileio.absolute(config.kaggle_dir),
        "metric": "Kaggle Dice, per image at 420x580, empty vs empty = 1",
    }
    if jax.process_index() == 0:
        with atomic_open(fileio.join(workdir, EVAL_FILE)) as f:
            json.dump(result, f, indent=2)
        result["overlay"] = save_overlay(config, state, scores["val_subjects"],
                                         fileio.join(workdir, OVERLAY_FILE), settings, tta)
    return result


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
    predict = jax.jit(functools.partial(train.predict_step, tta=tta))
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
        self._predictors = [self._predictor(config, t, mesh)
                            for (config, _, _), t in zip(models, ttas, strict=True)]

    @classmethod
    def from_workdirs(cls, workdirs: Sequence[str] | str, tta: str | None = None,
                      batch_size: int | None = None) -> "Segmenter":
        """`tta` overrides each workdir's config.tta; `batch_size` (global) the first config's
        eval_batch_size."""
        workdirs = [workdirs] if isinstance(workdirs, str) else list(workdirs)
        runtime.start_tensorflow()
        models = [restore_best(w) for w in workdirs]
        settings, source, report = postprocess_settings(workdirs[0], models[0][0])
        ttas = [resolve_tta(config, tta) for config, _, _ in models]
        batch_size = batch_size or models[0][0].eval_batch_size
        parallel.check_batch_size(batch_size, "batch size")
        return cls(workdirs, models, settings, source, report, ttas, batch_size)

    @staticmethod
    def _predictor(config, tta: str, mesh):
        def step(state, batch):
            out = train.predict_step(state, batch, tta=tta)
            return {"probs": out["probs"], "presence": out["presence"], "id": batch["id"]}
        return parallel.parallelize(step, config.parallel, mesh, out_batched=True)

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
            probs = _gather(sum(out["probs"] for out in outs) / len(outs))
            presence = _gather(sum(out["presence"] for out in outs) / len(outs))
            ids = _gather(outs[0]["id"])
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
