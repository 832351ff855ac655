"""Configs: files (Python files with get_config()), --config.FIELD=VALUE overrides, the check of
every field before any work, and a workdir's config.json (save, load, and the migration of those
written by earlier versions, with the frozen values those versions used)."""

import ast
import contextlib
import dataclasses
import difflib
import importlib.util
import json
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections

from nerve_jax import fileio, losses, metrics, parallel, registry, step
from nerve_jax.atomic import atomic_open
from nerve_jax.data import augment, pipeline
from nerve_jax.errors import UserError
from nerve_jax.models import unet

CONFIG_FILE = "config.json"


class ConfigError(UserError, ValueError):
    """One or more config fields hold values nerve-jax cannot run with."""


def load_config_file(path: str) -> ml_collections.ConfigDict:
    """Runs `get_config()` of a config file; its folder's parent is importable while it loads,
    so configs can build on each other (`from configs import default`)."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: config file not found")
    path = os.path.abspath(path)
    parent = os.path.dirname(os.path.dirname(path))
    spec = importlib.util.spec_from_file_location("nerve_jax_config", path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, parent)
    try:
        spec.loader.exec_module(module)
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(parent)
    if not hasattr(module, "get_config"):
        raise UserError(f"{path}: a config file must define get_config()")
    return module.get_config()


def _parse_value(text: str, current):
    if isinstance(current, bool):
        lowered = text.lower()
        if lowered not in ("true", "false", "1", "0"):
            raise ValueError("expected true or false")
        return lowered in ("true", "1")
    if isinstance(current, str):
        return text
    if isinstance(current, (tuple, list)):
        if all(isinstance(v, str) for v in current) and not text.strip().startswith(("(", "[")):
            return type(current)(v.strip() for v in text.split(",") if v.strip())  # Names.
        value = ast.literal_eval(text if text.strip().startswith(("(", "[")) else f"({text},)")
        return type(current)(value)
    if isinstance(current, int):
        return int(text)
    if isinstance(current, float):
        return float(text)
    return ast.literal_eval(text)


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[str]) -> None:
    """Applies `--config.a.b=VALUE` (or `--config.a.b VALUE`) arguments in place.

    Values are parsed by the type of the current value: bools take true/false, tuples take
    `96,128` or `(96, 128)`. Unknown fields and unparsable values raise UserError.
    """
    args = list(overrides)
    while args:
        arg = args.pop(0)
        if not arg.startswith("--config."):
            raise UserError(f"unrecognised argument {arg!r}")
        name, sep, text = arg[len("--config."):].partition("=")
        if not sep:
            if not args:
                raise UserError(f"{arg}: missing value")
            text = args.pop(0)
        *parents, leaf = name.split(".")
        node = config
        for part in parents:
            node = node.get(part) if isinstance(node, ml_collections.ConfigDict) else None
        if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
            known = list(flatten(config))
            raise ConfigError(f"--config.{name}: no such config field"
                              f"{_did_you_mean(name, known)}")
        try:
            value = _parse_value(text, node[leaf])
        except (ValueError, SyntaxError) as e:
            raise UserError(f"--config.{name}={text!r}: {e}") from None
        node[leaf] = value


# --- The schema: every field's type, range or choices -----------------------------------------

@dataclasses.dataclass(frozen=True)
class Field:
    """What a config field may hold. `kind`: bool, int, float, str, "size" (two ints) or
    "names" (a list of non-empty strings)."""

    kind: Any
    low: float | None = None  # Inclusive bounds for numbers.
    high: float | None = None
    choices: tuple | None = None
    above_low: bool = False  # True: low itself is excluded.

    def problem(self, value) -> str | None:
        """Why `value` does not fit, or None."""
        if self.kind == "size":
            if (isinstance(value, (str, bytes)) or not isinstance(value, Sequence)
                    or len(value) != 2 or not all(_is_int(v) and v > 0 for v in value)):
                return "expected two positive whole numbers (rows, cols), e.g. 96,128"
            return None
        if self.kind == "names":
            if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not all(
                    isinstance(v, str) and v for v in value):
                return "expected a list of names, e.g. (\"iou\",)"
            return None
        if self.kind is bool and not isinstance(value, bool):
            return "expected true or false"
        if self.kind is int and not _is_int(value):
            return "expected a whole number"
        if self.kind is float and (isinstance(value, bool) or not isinstance(value, (int, float))
                                   or not math.isfinite(value)):
            return "expected a number"
        if self.kind is str and not isinstance(value, str):
            return "expected a string"
        if self.choices is not None and value not in self.choices:
            return f"choose one of {self.choices}"
        too_low = self.low is not None and (value <= self.low if self.above_low
                                            else value < self.low)
        if too_low or (self.high is not None and value > self.high):
            low = "" if self.low is None else f"{'>' if self.above_low else '>='} {self.low:g}"
            high = "" if self.high is None else f"<= {self.high:g}"
            return f"expected a value {' and '.join(b for b in (low, high) if b)}"
        return None


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# Free-form fields: their contents go to user code as keyword arguments, unchecked here.
FREE_FIELDS = ("loss_args", "batch_transform_args")


def schema(model_name: str = "unet") -> dict[str, Field | None]:
    """Every config field by dotted name (configs/default.py explains each); None: checked
    elsewhere (`augment.*` by nerve_jax.data.augment.from_config, FREE_FIELDS by the code that
    takes them). The UNet's model fields are known only for model.name "unet"; another model
    checks its own."""
    unit = {"low": 0.0, "high": 1.0}
    fields = {
        "kaggle_dir": Field(str), "tfds_data_dir": Field(str), "image_size": Field("size"),
        "num_folds": Field(int, low=2), "fold": Field(int, low=0), "split_seed": Field(int),
        "clean": Field(str, choices=pipeline.CLEAN_MODES),
        "duplicate_threshold": Field(float, low=0.0),
        "model.name": Field(str),
        "loss": Field(str), "metrics": Field("names"), "batch_transform": Field(str),
        "batch_size": Field(int, low=1), "eval_batch_size": Field(int, low=1),
        "dice_smooth": Field(float, low=0.0, above_low=True),
        "presence_weight": Field(float, low=0.0), "pixel_bce_weight": Field(float, low=0.0),
        "optimizer": Field(str, choices=step.OPTIMIZERS),
        "learning_rate": Field(float, low=0.0),
        "lr_schedule": Field(str, choices=step.SCHEDULES), "warmup_steps": Field(int, low=0),
        "weight_decay": Field(float, low=0.0), "num_epochs": Field(float, low=0.0,
                                                                    above_low=True),
        "num_train_steps": Field(int), "seed": Field(int),
        "parallel": Field(str, choices=parallel.PARALLEL_CHOICES),
        "threshold": Field(float, **unit), "presence_threshold": Field(float, **unit),
        "min_mask_area": Field(int, low=0), "min_component_area": Field(int, low=0),
        "largest_component_only": Field(bool), "fill_holes": Field(bool),
        "ellipse_fit": Field(bool), "tta": Field(str, choices=step.TTA_CHOICES),
        "log_every_steps": Field(int, low=1), "eval_every_steps": Field(int, low=1),
        "early_stopping_patience": Field(int, low=0), "checkpoints_to_keep": Field(int, low=1),
        "checkpoint_every_steps": Field(int, low=0),
        "checkpoint_every_minutes": Field(float, low=0.0),
        "skip_nonfinite_steps": Field(int, low=0),
        **dict.fromkeys(FREE_FIELDS),
        **{f"augment.{name}": None for name in augment.FIELDS},
    }
    if model_name == "unet":
        fields.update({
            "model.depth": Field(int, low=1, high=8), "model.base_features": Field(int, low=1),
            "model.upsample": Field(str, choices=unet.UPSAMPLE_CHOICES),
            "model.dtype": Field(str, choices=unet.DTYPE_CHOICES),
            "model.presence_head": Field(bool),
            "model.norm": Field(str, choices=unet.NORM_CHOICES),
            "model.input_mean": Field(float),
            "model.input_std": Field(float, low=0.0, above_low=True),
        })
    return fields


def flatten(config: ml_collections.ConfigDict, prefix: str = "",
            leaves: Sequence[str] = ()) -> dict[str, Any]:
    """{dotted name: value} of every leaf field; the names in `leaves` count as leaves."""
    flat = {}
    for name, value in config.items():
        if isinstance(value, ml_collections.ConfigDict) and f"{prefix}{name}" not in leaves:
            flat.update(flatten(value, f"{prefix}{name}.", leaves))
        else:
            flat[f"{prefix}{name}"] = value
    return flat


def _did_you_mean(name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f"; did you mean config.{close[0]}?" if close else ""


def _field_problems(config: ml_collections.ConfigDict) -> dict[str, str]:
    """{dotted field name: its problem} of the fields that are unknown, missing or ill-typed."""
    model_name = config.get("model", {}).get("name", "unet")
    fields = schema(model_name)
    values = flatten(config, leaves=FREE_FIELDS)
    if model_name != "unet":  # The model's own fields are its business.
        values = {k: v for k, v in values.items()
                  if not k.startswith("model.") or k == "model.name"}
    problems = {name: REMOVED_FIELDS.get(name, f"config.{name}: no such field"
                                         f"{_did_you_mean(name, list(fields))}")
                for name in values if name not in fields}
    problems.update({name: f"config.{name}: missing" for name in fields if name not in values})
    for name, field in fields.items():
        if field is not None and name in values and (why := field.problem(values[name])):
            problems[name] = f"config.{name}={values[name]!r}: {why}"
    return problems


def _relation_problems(config: ml_collections.ConfigDict, bad: set[str], devices: int,
                       processes: int) -> list[str]:
    problems = []
    if not bad & {"fold", "num_folds"} and config.fold >= config.num_folds:
        problems.append(f"config.fold={config.fold}: must be below config.num_folds="
                        f"{config.num_folds}")
    if not bad & {"image_size", "model.depth"} and "depth" in config.model:
        try:
            unet.check_input_size(config.image_size, config.model.depth)
        except (ValueError, TypeError) as e:
            problems.append(f"config.image_size: {e}")
    for name in ("batch_size", "eval_batch_size"):
        if name not in bad and config[name] % devices:
            over = f", over {processes} processes" if processes > 1 else ""
            problems.append(f"config.{name}={config[name]}: must be divisible by the number of "
                            f"devices ({devices}{over})")
        elif name not in bad and config[name] % processes:
            problems.append(f"config.{name}={config[name]}: must be divisible by the number "
                            f"of processes ({processes})")
    return problems


def _code_problems(config: ml_collections.ConfigDict, parts: Sequence[str]) -> list[str]:
    """The `parts` (step.FOR_*: model, loss, metrics, batch transform) and the augmentation
    named by a config whose fields are all well-formed."""
    problems = []
    lookups = [("model.name", config.model.name, step.MODELS)]
    if "loss" in parts:
        lookups.append(("loss", config.loss, losses.LOSSES))
    if "metrics" in parts:
        lookups += [("metrics", name, metrics.METRICS) for name in config.metrics]
    if "batch_transform" in parts and config.batch_transform:
        lookups.append(("batch_transform", config.batch_transform, {}))
    for field, name, registered in lookups:
        try:
            registry.resolve(name, registered, f"config.{field}")
        except registry.RegistryError as e:
            problems.append(str(e))
    names = [registry.display_name(n) for n in config.metrics]
    clash = sorted({n for n in names if n in metrics.BUILT_IN or names.count(n) > 1})
    if clash:
        problems.append(f"config.metrics: {clash} repeated or taken by the built-in names "
                        f"{metrics.BUILT_IN}")
    try:
        augment.from_config(config.augment)
    except UserError as e:
        problems.append(str(e))
    if not problems:
        problems += step.contract_problems(config, parts)
    return problems


def check(config: ml_collections.ConfigDict, *, devices: int | None = None,
          processes: int | None = None, needs_data: bool = False,
          parts: Sequence[str] = step.FOR_TRAINING) -> None:
    """Checks every field of `config` at once, before any data or model work: types, ranges
    and choices (`schema()`), unknown and missing fields, fold < num_folds, image_size against
    model.depth, batch sizes against `devices` and `processes` (default: JAX's), that the
    `parts` it names (model, loss, metrics, batch transform: step.FOR_*) can be imported and
    keep their contracts, and with `needs_data` that kaggle_dir is set. Raises ConfigError
    listing every problem."""
    by_field = _field_problems(config)
    bad = set(by_field)
    devices = jax.device_count() if devices is None else devices
    processes = jax.process_count() if processes is None else processes
    problems = [*by_field.values(), *_relation_problems(config, bad, devices, processes)]
    if not problems:  # The rest needs well-formed fields.
        problems += _code_problems(config, parts)
    if needs_data and "kaggle_dir" not in bad and not config.kaggle_dir:
        problems.append("config.kaggle_dir is not set: pass --config.kaggle_dir=DIR, a folder "
                        "in Kaggle layout (train/ or train.zip, test/ or test.zip)")
    if problems:
        raise ConfigError("\n".join([f"config: {len(problems)} problem(s)",
                                     *[f"  - {p}" for p in problems]]))


def checked(config: ml_collections.ConfigDict, **kwargs) -> ml_collections.FrozenConfigDict:
    """`check(config, **kwargs)`, then the config locked: nothing changes it after the check."""
    check(config, **kwargs)
    return ml_collections.FrozenConfigDict(config)


# --- A workdir's config.json ------------------------------------------------------------------

def save(config: ml_collections.ConfigDict, workdir: str) -> None:
    with atomic_open(fileio.join(workdir, CONFIG_FILE)) as f:
        f.write(config.to_json(indent=2))


def load(workdir: str, parts: Sequence[str] = step.FOR_PREDICTION,
         ) -> ml_collections.FrozenConfigDict:
    """A workdir's config.json, migrated and checked; of the code it names only `parts`
    (step.FOR_*) are imported and traced, so a run whose loss this shell cannot import still
    evaluates and predicts."""
    path = fileio.join(workdir, CONFIG_FILE)
    if not fileio.isfile(path):
        raise UserError(f"{workdir}: no {CONFIG_FILE}; is this a workdir written by "
                        "`nerve-jax train`?")
    try:
        saved = json.loads(fileio.read_text(path))
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable config ({e})") from None
    # Devices are checked where batches are run: a workdir may be read on another machine.
    return checked(migrate(saved), devices=1, processes=1, parts=parts)


# Fields each earlier version lacked in the config.json it wrote, oldest first, with the value
# that version ran with: frozen literals, so that changing a default never changes how an old
# run is read back.
MIGRATIONS = (
    ("presence head, shape post-processing, augmentation, early stopping, TTA", {
        "model.presence_head": False, "presence_weight": 0.0, "pixel_bce_weight": 0.0,
        "early_stopping_patience": 0, "tta": "none",
        "min_component_area": 0, "largest_component_only": False, "fill_holes": False,
        "ellipse_fit": False, "presence_threshold": 0.5,
        "augment.enabled": False, "augment.shift": 0.0, "augment.rotation": 0.0,
        "augment.zoom": (1.0, 1.0), "augment.flip": 0.0, "augment.brightness": 0.0,
        "augment.contrast": (1.0, 1.0), "augment.gamma": (1.0, 1.0),
        "augment.fill_mode": "reflect",
    }),
    ("models, losses, metrics and batch transforms by name", {
        "model.name": "unet", "loss": "soft_dice+bce", "loss_args": {}, "metrics": [],
        "batch_transform": "", "batch_transform_args": {},
    }),
    ("timed checkpoints and non-finite steps", {
        "checkpoint_every_steps": 0, "checkpoint_every_minutes": 0.0, "skip_nonfinite_steps": 0,
    }),
    ("UNet without BatchNorm, fixed input standardisation", {
        "model.norm": "batch", "model.input_mean": 0.0, "model.input_std": 1.0,
    }),
)

# Fields that earlier versions had, with what became of them.
REMOVED_FIELDS = {
    "shuffle_buffer": "config.shuffle_buffer: removed; every lane of a global batch is fully "
                      "reshuffled (pipeline.LaneSampler), so there is no buffer to size",
}


def migrate(saved: dict) -> ml_collections.ConfigDict:
    """A workdir's saved config (config.json) completed, step by step, with the MIGRATIONS'
    values of the fields it lacks, without the REMOVED_FIELDS."""
    config = ml_collections.ConfigDict(
        {k: v for k, v in saved.items() if k not in REMOVED_FIELDS})
    unet_model = saved.get("model", {}).get("name", "unet") == "unet"
    for _, added in MIGRATIONS:
        for name, value in added.items():
            if name.startswith("model.") and name != "model.name" and not unet_model:
                continue  # Another model's fields are its own.
            _set_if_missing(config, name, value)
    return config


def _set_if_missing(config: ml_collections.ConfigDict, name: str, value) -> None:
    *parents, leaf = name.split(".")
    node = config
    for part in parents:
        if part not in node:
            node[part] = ml_collections.ConfigDict()
        node = node[part]
    if leaf not in node:
        node[leaf] = (ml_collections.ConfigDict(value) if isinstance(value, dict)
                      else list(value) if isinstance(value, tuple) else value)
