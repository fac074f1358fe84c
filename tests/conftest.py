"""Shared fixtures."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from grpopp.envs import registry

_Snapshot = tuple[dict, set, dict]


def _snapshot() -> _Snapshot:
    return dict(registry._REGISTRY), set(registry._FAMILIES), dict(registry._loaded)


def _restore(saved: _Snapshot) -> None:
    registry._REGISTRY.clear()
    registry._REGISTRY.update(saved[0])
    registry._FAMILIES.clear()
    registry._FAMILIES.update(saved[1])
    registry._loaded.update(saved[2])


@pytest.fixture
def clean_registry() -> Iterator[Callable[[], None]]:
    """The registry a new process of the CLI starts from: built-ins and installed entry points, none of
    the plugin files earlier tests loaded (``--plugin path.py`` modules are named ``grpopp_plugin_*``).
    Yields a function that goes back to that state mid-test (as a second CLI process would); after
    the test, the registry is what it was before, so other modules' plugins stay registered."""
    registry.list_envs()  # load built-ins and installed entry points once
    before = _snapshot()
    for name, cls in list(registry._REGISTRY.items()):
        if cls.__module__.startswith("grpopp_plugin_"):
            del registry._REGISTRY[name]
            registry._FAMILIES.discard(name)
    fresh = _snapshot()
    yield lambda: _restore(fresh)
    _restore(before)
