"""Shared fixtures."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from envs import registry


@pytest.fixture
def clean_registry() -> Iterator[Callable[[], None]]:
    """Each test sees the built-ins (and installed entry points) only: environments it registers
    (plugins loaded in-process) are forgotten afterwards. Yields a function that restores the
    registry on demand, as a new process of the CLI would start from it."""
    registry.list_envs()  # load built-ins and installed entry points once
    saved = (dict(registry._REGISTRY), set(registry._FAMILIES), dict(registry._loaded))

    def restore() -> None:
        registry._REGISTRY.clear()
        registry._REGISTRY.update(saved[0])
        registry._FAMILIES.clear()
        registry._FAMILIES.update(saved[1])
        registry._loaded.update(saved[2])

    yield restore
    restore()
