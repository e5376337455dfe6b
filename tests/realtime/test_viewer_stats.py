"""Viewer statistics cross the transport contract typed (``transports/base.py`` ``ViewerStats``): admission's
counters and ``/metrics`` read ``video_frames_skipped`` (``/metrics`` also ``video_keyframe_waits``) of a viewer of
any transport, and the session's viewer list shows the transport's own details as they are."""

from __future__ import annotations

import numpy as np
import pytest

from avatarstream.engines.base import Portrait
from avatarstream.realtime.config import ServerConfig
from avatarstream.realtime.http.metrics import ServerCollector
from avatarstream.realtime.session.admission import session_counters
from avatarstream.realtime.session.registry import SessionRegistry
from avatarstream.realtime.transports.base import Viewer, ViewerState, ViewerStats

pytestmark = pytest.mark.timeout(60)


class _LaggingViewer:
    """A viewer of a transport no module of the session layer names, behind the clock by ``skipped`` frames."""

    transport = "carrier-pigeon"
    state = ViewerState.CONNECTED
    state_since = 0.0

    def __init__(self, skipped: int) -> None:
        self.id = f"pigeon-{skipped}"
        self.skipped = skipped

    def stats(self) -> ViewerStats:
        return ViewerStats(video_frames_sent=100, video_frames_skipped=self.skipped, video_keyframe_waits=1,
                           details={"feathers": 3})

    async def close(self) -> None:
        return None


async def test_skipped_frames_of_any_transport_reach_admission_and_metrics(bar_engine):
    registry = SessionRegistry(ServerConfig(admission=False, size=64, engine_loader=lambda name, **_: bar_engine),
                               Portrait(np.full((64, 64, 3), 128, np.uint8)))
    session = await registry.create(size=64)
    try:
        before = session_counters(session).bad
        for skipped in (2, 5):
            viewer = _LaggingViewer(skipped)
            assert isinstance(viewer, Viewer)
            session.attach_viewer(viewer)
        assert session_counters(session).bad == before + 5  # the worst viewer's lag counts
        families = {f.name: f for f in ServerCollector(registry).collect()}
        (sample,) = [s for s in families["avatar_session_video_frames_skipped"].samples
                     if s.labels == {"session": session.id}]
        assert sample.value == 7  # summed over viewers
        (sample,) = [s for s in families["avatar_session_video_keyframe_waits"].samples
                     if s.labels == {"session": session.id}]
        assert sample.value == 2
        shown = session.viewer_stats()
        assert [(v["transport"], v["feathers"]) for v in shown] == [("carrier-pigeon", 3)] * 2
    finally:
        await registry.stop()
