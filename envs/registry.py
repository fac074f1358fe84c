"""The environment registry: built-ins by decorator, third-party packages by entry point, a user's
own file by ``--plugin``. ``make_env(name, **config)`` is the one way to build an environment.

- ``@register_env("name")`` registers a class; ``@register_env("family", family=True)`` registers a
  parametrised family addressed as "family:<task>" (e.g. "reasoning_gym:chain_sum"), whose config
  gets ``task=<task>``.
- Packages expose environments in the entry-point group ``grpopp.envs`` (the entry point names a
  module that registers with the decorator, or an ``Environment`` subclass registered under the
  entry point's name).
- ``load_plugin("path/to/file.py")`` or ``load_plugin("package.module")`` imports a user's module.

Registration checks the contract: an ``Environment`` subclass, a pydantic config that subclasses
``EnvConfig``, no abstract method left, a new name. Mistakes are refused with the fix. ``make_env``
also refuses a procedural environment whose problem space is too small to split into train and
test (``Environment.check_split_space``).
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
import re
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from grpopp.config_tools import ConfigError, UserError, validate_config
from grpopp.envs.base import EnvConfig, Environment

ENTRY_POINT_GROUP = "grpopp.envs"
BUILTIN_MODULES = (
    "grpopp.envs.arithmetic",
    "grpopp.envs.code",
    "grpopp.envs.code_feedback",
    "grpopp.envs.countdown",
    "grpopp.envs.guess",
    "grpopp.envs.math_data",
    "grpopp.envs.math_tool",
    "grpopp.envs.reasoning_gym_env",
)
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-]*$")

_REGISTRY: dict[str, type[Environment[Any]]] = {}
_FAMILIES: set[str] = set()
_loaded = {"builtins": False, "entry_points": False}

EnvT = TypeVar("EnvT", bound=type[Environment[Any]])


class RegistryError(UserError):
    """An environment could not be registered, found or loaded; the message says how to fix it."""


def register_env(name: str, *, family: bool = False) -> Callable[[EnvT], EnvT]:
    """Class decorator: register an ``Environment`` subclass under ``name``."""

    def decorator(cls: EnvT) -> EnvT:
        _check_contract(name, cls, family)
        _REGISTRY[name] = cls
        if family:
            _FAMILIES.add(name)
        cls.name = name
        return cls

    return decorator


def _check_contract(name: str, cls: Any, family: bool) -> None:
    where = f"{getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', cls)!s}"
    if not isinstance(name, str) or not _NAME.match(name):
        raise RegistryError(
            f"cannot register {where} as {name!r}: a name starts with a letter and holds only letters, digits, "
            "'_', '-' and '.' (':' is reserved for families and weights)"
        )
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        other = _REGISTRY[name]
        raise RegistryError(
            f"cannot register {where} as {name!r}: the name is taken by {other.__module__}.{other.__qualname__}; "
            "choose another name"
        )
    if not (inspect.isclass(cls) and issubclass(cls, Environment)):
        raise RegistryError(f"cannot register {where} as {name!r}: it must subclass grpopp.envs.base.Environment")
    config_class = cls.config_class
    if not (inspect.isclass(config_class) and issubclass(config_class, BaseModel)):
        raise RegistryError(
            f"cannot register {where} as {name!r}: config_class must be a pydantic model subclassing "
            f"grpopp.envs.base.EnvConfig, got {config_class!r}"
        )
    if not issubclass(config_class, EnvConfig):
        raise RegistryError(
            f"cannot register {where} as {name!r}: config_class {config_class.__name__} must subclass "
            "grpopp.envs.base.EnvConfig (it brings seed, system_prompt and reward)"
        )
    if family and "task" not in config_class.model_fields:
        raise RegistryError(f"cannot register family {name!r}: its config needs a 'task' field")
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(getattr(cls, "__abstractmethods__", ())))
        raise RegistryError(f"cannot register {where} as {name!r}: it does not implement {missing}")


def _load_builtins() -> None:
    if not _loaded["builtins"]:
        for module in BUILTIN_MODULES:
            importlib.import_module(module)
        _loaded["builtins"] = True  # only once all imported: a failed import is retried, not hidden


def _load_entry_points() -> None:
    if _loaded["entry_points"]:
        return
    _loaded["entry_points"] = True
    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = entry_point.load()
        except Exception as exc:
            raise RegistryError(
                f"the environment plugin {entry_point.name!r} ({entry_point.value}) from an installed package "
                f"failed to import: {type(exc).__name__}: {exc}"
            ) from exc
        if inspect.isclass(obj) and issubclass(obj, Environment) and "name" not in obj.__dict__:
            register_env(entry_point.name)(obj)  # a class named directly by the entry point


def load_plugin(spec: str) -> list[str]:
    """Import a user's environment module: a ``.py`` path or a dotted module name. Returns the names
    it registered."""
    _load_builtins()
    before = set(_REGISTRY)
    path = Path(spec)
    if spec.endswith(".py") or path.exists():
        _import_file(spec, path)
    else:
        try:
            importlib.import_module(spec)
        except ModuleNotFoundError as exc:
            if exc.name is not None and spec.startswith(exc.name):  # the plugin module itself is missing
                raise RegistryError(
                    f"--plugin {spec!r}: {exc}; give a path to a .py file or an importable module"
                ) from exc
            raise RegistryError(f"--plugin {spec!r} failed to import: ModuleNotFoundError: {exc}") from exc
        except Exception as exc:
            raise RegistryError(f"--plugin {spec!r} failed to import: {type(exc).__name__}: {exc}") from exc
    added = sorted(set(_REGISTRY) - before)
    if not added:
        raise RegistryError(f"--plugin {spec!r} registered no environment; decorate a class with @register_env")
    return added


def registered_envs() -> dict[str, type[Environment[Any]]]:
    """Every registered class by display name (families shown as "family:<task>"), sorted by name."""
    _load_builtins()
    _load_entry_points()
    shown = {f"{name}:<task>" if name in _FAMILIES else name: cls for name, cls in _REGISTRY.items()}
    return dict(sorted(shown.items()))


def _import_file(spec: str, path: Path) -> None:
    """Import a plugin given as a file path; any error in it is reported with the path."""
    if not path.is_file():
        raise RegistryError(f"--plugin {spec!r}: no such file; give a path to a .py file or a module name")
    module_name = f"grpopp_plugin_{path.stem}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None or module_spec.loader is None:
        raise RegistryError(f"--plugin {spec!r}: cannot load this file as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise RegistryError(f"--plugin {spec!r} failed to import: {type(exc).__name__}: {exc}") from exc


def list_envs() -> list[str]:
    """Registered names (families shown as "family:<task>")."""
    return list(registered_envs())


def env_class(name: str) -> tuple[type[Environment[Any]], dict[str, Any]]:
    """The class behind ``name`` and the config fields the name itself sets (a family's task)."""
    _load_builtins()
    if name not in _REGISTRY and name.split(":", 1)[0] not in _REGISTRY:
        _load_entry_points()
    if name in _REGISTRY and name not in _FAMILIES:
        return _REGISTRY[name], {}
    family, _, task = name.partition(":")
    if family in _FAMILIES:
        if not task:
            raise RegistryError(f"{family!r} is a family of environments: name one as '{family}:<task>'")
        return _REGISTRY[family], {"task": task}
    known = sorted(_REGISTRY)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise RegistryError(
        f"unknown environment {name!r}.{hint} Known: {', '.join(list_envs())}. "
        "Your own: --plugin path/to/file.py, or a package with a 'grpopp.envs' entry point."
    )


def make_env(name: str, **config: Any) -> Environment[Any]:
    """Build environment ``name`` with ``config`` validated against its pydantic config class, and
    check that its problem space can be split (``Environment.check_split_space``)."""
    cls, implied = env_class(name)
    try:
        cfg = validate_config(cls.config_class, {**config, **implied})
    except ConfigError as error:
        lines = str(error).replace("\n", f"\n  env {name}: ")
        raise ConfigError(f"env {name}: {lines}") from None
    env = cls(cfg)
    env.name = name
    env.check_split_space()  # a SplitSpaceError (a ConfigError) names the environment and the fix
    return env
