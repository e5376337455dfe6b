"""Shared fixtures: every stage exported once per session with random weights of the real shapes."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def network_source():
    from avatarstream.engines.runtimes.network_source import NetworkSource

    return NetworkSource(seed=0)


@pytest.fixture(scope="session")
def exported(network_source, tmp_path_factory):
    """All stages as ONNX (native 5-D GridSample) in one directory; built once for the session."""
    import torch

    from avatarstream.export.exporter import export_all

    torch.set_num_threads(2)
    return export_all(network_source, tmp_path_factory.mktemp("engines"), progress=False)
