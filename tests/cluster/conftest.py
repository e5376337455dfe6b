"""Fixtures for the cluster and metrics tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def engine_loader():
    """``load_engine`` keeping one instance per engine name: a portrait is analysed once per run."""
    from avatarstream.engines.registry import load_engine

    cache: dict[str, object] = {}

    def load(name: str, **options):
        if name not in cache:
            cache[name] = load_engine(name, **options)
        return cache[name]

    return load
