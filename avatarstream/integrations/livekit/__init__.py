"""An avatarstream avatar for LiveKit Agents voice agents: ``pip install 'avatarstream[livekit]'``.

``AvatarSession`` follows the contract of LiveKit's avatar plugins (``livekit.agents.voice.avatar``),
so switching from a hosted vendor is one line (docs/agent.md, "LiveKit Agents"). The
``VideoGenerator`` it runs, ``SessionVideoGenerator``, is the server's too
(``avatarstream.realtime.transports.livekit``).
"""

from __future__ import annotations

try:
    from avatarstream.integrations.livekit.avatar import AvatarSession, AvatarSpec, InProcessMedia, ServerMedia
    from avatarstream.integrations.livekit.token import avatar_token
    from avatarstream.realtime.transports.livekit.generator import SessionVideoGenerator
except ModuleNotFoundError as exc:  # pragma: no cover - exercised only without the extra
    if not (exc.name or "").startswith("livekit"):
        raise
    raise ImportError(f"avatarstream.integrations.livekit needs livekit-agents ({exc.name} is missing): "
                      "pip install 'avatarstream[livekit]'") from exc

__all__ = ["AvatarSession", "AvatarSpec", "InProcessMedia", "ServerMedia", "SessionVideoGenerator", "avatar_token"]
