"""Config helpers shared by every pydantic config: dotted overrides and readable errors.

``apply_overrides(cfg, ["loss.eps_high=0.28"])`` is what ``--set KEY=VALUE`` does on the CLI. An
unknown key is refused with the closest known key suggested; a bad value is refused with pydantic's
reason and the dotted key it belongs to, never silently ignored.
"""

from __future__ import annotations

import difflib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

ModelT = TypeVar("ModelT", bound=BaseModel)


class ConfigError(ValueError):
    """A configuration problem; the message names the key and says how to fix it."""


def format_validation_error(error: ValidationError, prefix: str = "") -> str:
    """One line per problem: ``key.path: reason (got value)``."""
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in (prefix, *item["loc"]) if part != "") or "(config)"
        reason = item["msg"].removeprefix("Value error, ")
        got = "" if item["type"] == "value_error" else f" (got {item['input']!r})"
        lines.append(f"{key}: {reason}{got}")
    return "\n".join(lines)


def validate_config(model: type[ModelT], data: Any, prefix: str = "") -> ModelT:
    """``model.model_validate(data)`` with a ``ConfigError`` that names every bad key."""
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, prefix)) from None


def parse_value(text: str) -> Any:
    """Read an override's value: JSON when it parses (numbers, true/false, lists), else the string."""
    if text.strip().lower() in ("none", "null", "~"):
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _check_path(model: type[BaseModel], path: list[str]) -> None:
    """Refuse a dotted key that names no field, suggesting the closest one."""
    current: type[BaseModel] = model
    for depth, part in enumerate(path):
        fields = current.model_fields
        if part not in fields:
            where = ".".join(path[:depth]) or "the top level"
            close = difflib.get_close_matches(part, list(fields), n=1)
            hint = f" Did you mean {'.'.join([*path[:depth], close[0]])!r}?" if close else ""
            raise ConfigError(
                f"unknown key {'.'.join(path)!r}: {where} has no field {part!r}.{hint} "
                f"Known fields there: {', '.join(fields)}"
            )
        annotation = fields[part].annotation
        is_model = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        if depth < len(path) - 1 and not is_model:
            raise ConfigError(f"unknown key {'.'.join(path)!r}: {'.'.join(path[: depth + 1])!r} has no sub-keys")
        if is_model:
            current = annotation  # type: ignore[assignment]


def apply_overrides(config: ModelT, assignments: Sequence[str]) -> ModelT:
    """Return a copy of ``config`` with ``KEY.PATH=VALUE`` assignments applied and re-validated."""
    data: dict[str, Any] = config.model_dump()
    for assignment in assignments:
        key, sep, raw_value = assignment.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {assignment!r} is not KEY=VALUE, e.g. loss.eps_high=0.28")
        path = key.split(".")
        _check_path(type(config), path)
        target = data
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = parse_value(raw_value)
    return validate_config(type(config), data)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML (.yaml/.yml) or TOML (.toml) config file into a dict; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
            raise ConfigError(f"{where}: invalid YAML: {getattr(error, 'problem', error)}") from None
    elif path.suffix == ".toml":
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover - Python 3.10
            import tomli as tomllib
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{path}: invalid TOML: {error}") from None
    else:
        raise ConfigError(f"config file {str(path)!r}: use a .yaml, .yml or .toml file")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
    return data
