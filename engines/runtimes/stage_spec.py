"""What describes one exportable stage: which network, which tensors in and out, which axes are dynamic, and
the TensorRT optimisation profile of each dynamic input.

A stage wraps a network in a module with a tensor-only ``forward`` whose positional inputs and tuple outputs
match ``input_names``/``output_names``; the families' stages are in ``engines.liveportrait.stages`` and
``engines.joyvasa.stages``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from avatarstream.engines.runtimes.network_source import NetworkSource

Shape = tuple[int, ...]


@dataclass(frozen=True)
class ProfileShapes:
    """min / opt / max shape of one dynamic input."""

    min: Shape
    opt: Shape
    max: Shape


@dataclass(frozen=True)
class StageSpec:
    """How to build, feed and export one stage."""

    name: str
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    dynamic_axes: dict[str, dict[int, str]]
    build: Callable[[NetworkSource], nn.Module]
    example_inputs: Callable[[int, torch.Generator], tuple[torch.Tensor, ...]]  # (batch, generator) -> inputs
    profiles: Callable[[], dict[str, ProfileShapes]]  # TensorRT optimisation profile per dynamic input
    fp32_only: bool = False  # kept FP32 in --fp16 exports (audio encoder, motion extractor: bins -> angles)
    uses_grid_sample: bool = False
    bench_batches: tuple[int, ...] = (1,)
    family: str = "liveportrait"
