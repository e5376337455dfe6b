"""The avatar participant's room token, minted on the agent's side (the vendors' pattern).

The token lets the avatar (our server's LiveKit transport) join exactly one room as one identity, of
kind ``agent``, with the attribute ``lk.publish_on_behalf`` = the agent's identity: LiveKit Agents'
room I/O then treats the avatar's ``avatar_audio`` / ``avatar_video`` tracks as the agent's own
(transcription sync, the playground's agent view). The avatar server never sees the LiveKit secret.
"""

from __future__ import annotations

import datetime

from livekit import api
from livekit.agents.types import ATTRIBUTE_PUBLISH_ON_BEHALF

DEFAULT_TTL = datetime.timedelta(hours=6)


def avatar_token(*, api_key: str, api_secret: str, room: str, identity: str, agent_identity: str,
                 name: str = "avatarstream", ttl: datetime.timedelta = DEFAULT_TTL) -> str:
    """A JWT for the avatar participant ``identity`` in ``room``, publishing on behalf of ``agent_identity``."""
    if not (api_key and api_secret):
        raise ValueError("minting the avatar's room token needs the LiveKit API key and secret "
                         "(arguments or LIVEKIT_API_KEY / LIVEKIT_API_SECRET)")
    return (api.AccessToken(api_key, api_secret)
            .with_identity(identity)
            .with_name(name)
            .with_kind("agent")
            .with_ttl(ttl)
            .with_grants(api.VideoGrants(room_join=True, room=room, can_publish=True, can_subscribe=True,
                                         can_publish_data=True))
            .with_attributes({ATTRIBUTE_PUBLISH_ON_BEHALF: agent_identity})
            .to_jwt())
