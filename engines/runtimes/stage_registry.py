"""Every exportable stage by name, LivePortrait's then JoyVASA's (the order ``avatar export`` works through)."""

from __future__ import annotations

from avatarstream.engines.base import EngineError
from avatarstream.engines.joyvasa.stages import JOYVASA_STAGES
from avatarstream.engines.liveportrait.stages import LIVEPORTRAIT_STAGES
from avatarstream.engines.runtimes.stage_spec import StageSpec

STAGES: dict[str, StageSpec] = {**LIVEPORTRAIT_STAGES, **JOYVASA_STAGES}


def stage_names() -> list[str]:
    return list(STAGES)


def get_stage(name: str) -> StageSpec:
    if name not in STAGES:
        raise EngineError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    return STAGES[name]
