"""Loading config files (Python files with get_config()) and --config.FIELD=VALUE overrides."""

import ast
import contextlib
import importlib.util
import os
import sys

import ml_collections

from nerve_jax.errors import UserError


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
            raise UserError(f"--config.{name}: no such config field")
        try:
            value = _parse_value(text, node[leaf])
        except (ValueError, SyntaxError) as e:
            raise UserError(f"--config.{name}={text!r}: {e}") from None
        node[leaf] = value
