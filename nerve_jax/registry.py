"""Models, losses, metrics and batch transforms chosen by a config string.

A string is either a registered name (each kind keeps a small {name: "module:attribute"} table
next to its built-in functions) or "package.module:attribute" from the user's own code, imported
with importlib as big_vision does. The current folder is importable while it is looked up, so
`--config.loss=my_losses:focal` finds my_losses.py where the command runs.
"""

import functools
import importlib
import inspect
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

from nerve_jax.errors import UserError


class RegistryError(UserError, ValueError):
    """A config string that names nothing importable."""


def resolve(name: str, registered: Mapping[str, str], what: str) -> Any:
    """The object `name` stands for; RegistryError naming `what` (e.g. "config.loss") and the
    known names, or the module and its import error."""
    if not isinstance(name, str) or not name:
        raise RegistryError(f"{what}={name!r}: expected a registered name "
                            f"({', '.join(sorted(registered))}) or package.module:attribute")
    if ":" in name:
        module_name, _, attribute = name.partition(":")
    elif name in registered:
        module_name, _, attribute = registered[name].partition(":")
    else:
        known = ", ".join(sorted(registered)) or "none"
        raise RegistryError(f"{what}={name!r}: not a registered name ({known}) nor "
                            "package.module:attribute")
    module = _import(module_name, what, name)
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise RegistryError(f"{what}={name!r}: module {module_name} has no attribute "
                            f"{attribute!r}") from None


def bind(fn: Callable, config: Mapping, args: Mapping | None = None) -> Callable:
    """`fn` with its keyword-only parameters set from the config fields of the same name, then
    from `args` (e.g. config.loss_args), which win."""
    names = [p.name for p in inspect.signature(fn).parameters.values()
             if p.kind is inspect.Parameter.KEYWORD_ONLY]
    kwargs = {name: config[name] for name in names if name in config}
    kwargs.update(args or {})
    return functools.partial(fn, **kwargs)


def display_name(name: str) -> str:
    """The short name results are logged under: the attribute of "module:attribute"."""
    return name.rpartition(":")[2]


def _import(module_name: str, what: str, name: str):
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.append(cwd)  # Last, so installed packages win.
    try:
        return importlib.import_module(module_name)
    except Exception as e:  # Any error of the user's module, reported with its name.
        raise RegistryError(f"{what}={name!r}: cannot import module {module_name!r} "
                            f"({type(e).__name__}: {e}); run from the folder that holds it, or "
                            "install it") from None
    finally:
        if added:
            sys.path.remove(cwd)
