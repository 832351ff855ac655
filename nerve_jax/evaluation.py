"""The evaluator: the one path by which training and `nerve-jax evaluate` score a model.

The model predicts the validation subjects on the devices (step.eval_step: full-resolution
probabilities and presence); on the host, the post-processing it is given (the config's values
during training, a workdir's tuned postprocess.json after it) turns them into masks, scored with
the Kaggle metric next to the all-empty baseline and every config.metrics entry, over the same
frames. Every process gathers every frame, so all of them compute the same numbers (and agree on
early stopping). Its output states the settings it used and where they came from.
"""

import io
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from typing import NamedTuple

import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from nerve_jax import checkpoint, config_util, fileio, metrics, parallel, postprocess, step
from nerve_jax.atomic import atomic_open
from nerve_jax.data import pipeline
from nerve_jax.errors import UserError

METRIC = "Kaggle Dice, per image at 420x580, empty vs empty = 1"
HELDOUT_FILE = "heldout_predictions.npz"


def validation_subjects(config: ml_collections.ConfigDict, builder) -> list[int]:
    """The subjects of config.fold's validation part (pipeline.split_subjects)."""
    frames = pipeline.frames_per_subject(builder)
    return pipeline.split_subjects(list(frames), config.num_folds, config.fold,
                                   config.split_seed)[1]


def settings_of(workdir: str,
                config: ml_collections.ConfigDict) -> tuple[postprocess.Settings, str, dict]:
    """(settings, where they come from, tune's report or {}): workdir/postprocess.json when
    present, else the config's values."""
    loaded = postprocess.load(workdir)
    if loaded is None:
        return (postprocess.Settings.from_config(config),
                f"config values (no {postprocess.POSTPROCESS_FILE} in {workdir})", {})
    settings, report = loaded
    return settings, fileio.join(workdir, postprocess.POSTPROCESS_FILE), report


class HeldOut(NamedTuple):
    """A fold's held-out predictions, as saved in workdir/heldout_predictions.npz."""

    names: np.ndarray  # [N] str, "<subject>_<frame>".
    subjects: np.ndarray  # [N] int32.
    logits: np.ndarray  # [N, h, w] float16 at the model's resolution (step.predict_step).
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


class Evaluation(NamedTuple):
    """What one evaluation measured, and with what."""

    # val_dice (Kaggle Dice of `settings`), val_empty_dice (all-empty baseline), val_<metric>
    # of config.metrics on `settings`' masks, val_dice_<name> of each extra setting, and
    # val_frames: every value a mean over the same frames.
    scores: dict
    settings: postprocess.Settings
    settings_source: str
    tta: str
    # When asked for: names, subjects, logits (float16) and presence of every frame, the
    # arrays of a HeldOut.
    predictions: dict | None


class Evaluator:
    """Scores a TrainState on batches of labelled frames; built once (its step compiled once)
    and run at each evaluation, as big_vision's evaluators are (`run(train_state)`)."""

    def __init__(self, config: ml_collections.ConfigDict, mesh, settings: postprocess.Settings,
                 settings_source: str, tta: str = "none",
                 extra_settings: Mapping[str, postprocess.Settings] | None = None):
        self.config = config
        self.settings, self.settings_source, self.tta = settings, settings_source, tta
        self.extra_settings = dict(extra_settings or {})
        self.metric_fns = metrics.from_config(config)
        self._predict = step.parallel_eval_step(config, mesh, tta)

    def predictions(self, state: step.TrainState, batches: Iterable[dict]) -> Iterator[dict]:
        """Per batch (pipeline.eval_batches: this process's part, padding marked invalid), the
        valid frames of all processes: logits [n, h, w], probs [n, 420, 580], presence [n],
        image [n, h, w, 1], mask_full [n, 420, 580] bool, subject [n], frame [n]."""
        for batch in batches:
            out = {k: gather(v) for k, v in self._predict(state, batch).items()}
            valid = out.pop("valid").astype(bool)
            yield {k: v[valid] for k, v in out.items()}

    def run(self, state: step.TrainState, batches: Iterable[dict],
            keep_predictions: bool = False) -> Evaluation:
        """Means over the valid frames of `batches` (see Evaluation)."""
        sums, count, parts = {}, 0, []
        for frames in self.predictions(state, batches):
            for name, values in self._per_frame(frames).items():
                sums[name] = sums.get(name, 0.0) + float(np.sum(values, dtype=np.float64))
            count += len(frames["probs"])
            if keep_predictions:
                parts.append(_heldout_part(frames))
        scores = {f"val_{name}": total / max(count, 1) for name, total in sums.items()}
        scores["val_frames"] = count
        kept = ({k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
                if keep_predictions and parts else None)
        return Evaluation(scores, self.settings, self.settings_source, self.tta, kept)

    def _per_frame(self, frames: dict) -> dict[str, np.ndarray]:
        """Per-frame values of one batch of gathered frames: dice, empty_dice, each metric,
        and dice_<name> of each extra setting."""
        masks = postprocess.apply_batch(frames["probs"], frames["presence"], self.settings)
        values = {"dice": metrics.dice_per_image(masks, frames["mask_full"]),
                  "empty_dice": metrics.empty_baseline_per_image(frames["mask_full"])}
        for name, fn in self.metric_fns.items():
            values[name] = fn({**frames, "masks": masks}, frames)
        for name, settings in self.extra_settings.items():
            extra = postprocess.apply_batch(frames["probs"], frames["presence"], settings)
            values[f"dice_{name}"] = metrics.dice_per_image(extra, frames["mask_full"])
        return {k: np.asarray(v) for k, v in values.items()}


def validation_batches(config: ml_collections.ConfigDict, builder,
                       subjects: list[int]) -> Iterator[dict]:
    """The frames of `subjects` as the evaluator takes them."""
    return pipeline.eval_batches(builder, subjects, config.image_size, config.eval_batch_size)


def heldout(evaluation: Evaluation, checkpoint_step: int, subjects: list[int]) -> HeldOut:
    """The predictions an evaluation kept (keep_predictions), as a fold's HeldOut."""
    return HeldOut(step=int(checkpoint_step), tta=evaluation.tta, val_subjects=list(subjects),
                   **evaluation.predictions)


def gather(x) -> np.ndarray:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _heldout_part(frames: dict) -> dict:
    return {"logits": frames["logits"].astype(np.float16),
            "presence": frames["presence"].astype(np.float32),
            "subjects": frames["subject"].astype(np.int32),
            "names": np.array([f"{s}_{f}" for s, f in
                               zip(frames["subject"], frames["frame"], strict=True)])}


def with_config_settings(config: ml_collections.ConfigDict, mesh,
                         tta: str | None = None) -> Evaluator:
    """The evaluator of the config's post-processing (the one the training loop runs) and
    its TTA unless `tta` is given."""
    return Evaluator(config, mesh, postprocess.Settings.from_config(config), "config values",
                     resolve_tta(config, tta))


def resolve_tta(config: ml_collections.ConfigDict, tta: str | None = None) -> str:
    """`tta` if given, else config.tta."""
    tta = tta or config.tta
    if tta not in step.TTA_CHOICES:
        raise UserError(f"tta={tta!r}: choose one of {step.TTA_CHOICES}")
    return tta


def best_step(workdir: str) -> int:
    """The step of the checkpoint with the best validation Dice (else the latest)."""
    mngr = checkpoint.manager(workdir, read_only=True)
    found = mngr.best_step() or mngr.latest_step()
    if found is None:
        raise UserError(f"{workdir}: no checkpoint found; run `nerve-jax train` first")
    return int(found)


def restore_best(workdir: str, parts=step.FOR_PREDICTION,
                 ) -> tuple[ml_collections.FrozenConfigDict, step.TrainState, int]:
    """(config, replicated state, step) of the checkpoint with the best validation Dice; of the
    config only `parts` (step.FOR_*) are resolved and traced."""
    config = config_util.load(workdir, parts)
    best = best_step(workdir)
    abstract = step.abstract_train_state(config, parallel.make_mesh())
    mngr = checkpoint.manager(workdir, read_only=True)
    return config, checkpoint.restore(mngr, best, abstract), best
