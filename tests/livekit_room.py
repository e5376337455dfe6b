"""A stand-in for a LiveKit ``rtc.Room``'s network calls (import it after ``importorskip("livekit.agents")``).

The room is connected; ``publish_track`` keeps the real local track and emits ``local_track_published`` (no
network); RPC methods and byte-stream handlers are recorded where LiveKit's own DataStream I/O registers them.
"""

from __future__ import annotations

from typing import Any

from livekit import rtc


class StandInParticipant:
    def __init__(self, room: StandInRoom, identity: str) -> None:
        self.room, self.identity = room, identity
        self.kind = rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
        self.state = rtc.ParticipantState.PARTICIPANT_STATE_ACTIVE
        self.attributes: dict[str, str] = {}
        self.track_publications: dict[str, Any] = {}
        self.tracks: dict[str, Any] = {}
        self._rpc_handlers: dict[str, Any] = {}  # read by LiveKit's DataStream I/O when it registers its methods
        self.rpc_sent: list[tuple[str, str]] = []

    async def publish_track(self, track: Any, options: Any) -> Any:
        pub = StandInPublication(track)
        self.track_publications[pub.sid] = pub
        self.tracks[track.name] = track
        self.room.emit("local_track_published", pub, track)
        return pub

    def register_rpc_method(self, name: str, handler: Any) -> None:
        self._rpc_handlers[name] = handler

    async def perform_rpc(self, *, destination_identity: str, method: str, payload: str, **_: Any) -> str:
        self.rpc_sent.append((method, payload))
        return "ok"


class StandInPublication:
    def __init__(self, track: Any) -> None:
        self.track, self.sid, self.kind = track, f"TR_{track.name}", track.kind

    async def wait_for_subscription(self) -> None:
        return None


class StandInRoom(rtc.EventEmitter):
    """A connected room whose local participant is ``identity``; with ``agent``, that agent is in it too."""

    name = "room-1"

    def __init__(self, identity: str, agent: str | None = None) -> None:
        super().__init__()
        self.local_participant = StandInParticipant(self, identity)
        self.remote_participants: dict[str, StandInParticipant] = {}
        if agent is not None:
            self.agent = StandInParticipant(self, agent)
            self.remote_participants[agent] = self.agent
        self.byte_stream_handlers: dict[str, Any] = {}
        self.connected = True

    def isconnected(self) -> bool:
        return self.connected

    def register_byte_stream_handler(self, topic: str, handler: Any) -> None:
        self.byte_stream_handlers[topic] = handler

    async def disconnect(self) -> None:
        self.connected = False
