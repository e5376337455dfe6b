"""A LiveKit Agents voice agent with an avatarstream avatar, in either mode (docs/agent.md, "LiveKit Agents").

    pip install 'avatarstream[livekit]'
    export LIVEKIT_URL=ws://127.0.0.1:7880 LIVEKIT_API_KEY=devkey LIVEKIT_API_SECRET=secret  # livekit-server --dev

    # in process: the lite engine in this worker, the agent's participant publishes the avatar
    python examples/livekit_agent.py dev

    # server mode: an avatarstream server joins the room as the avatar participant
    avatar serve --port 8080 &
    AVATARSTREAM_URL=http://127.0.0.1:8080 python examples/livekit_agent.py dev

Open the LiveKit Agents playground (or any LiveKit client) on the same room: the agent greets you with the
avatar's ``avatar_video`` and ``avatar_audio`` tracks. The speech models are LiveKit Inference model names
(``STT_MODEL`` / ``LLM_MODEL`` / ``TTS_MODEL`` to change them); any ``AgentSession`` configuration works, the
avatar only takes over the agent's audio output. Switching from a hosted avatar vendor is the one line that
builds ``avatar``.
"""

from __future__ import annotations

import os

from livekit.agents import Agent, AgentServer, AgentSession, JobContext, cli, room_io

from avatarstream.integrations.livekit import AvatarSession

server = AgentServer()


def make_avatar() -> AvatarSession:
    """``AVATARSTREAM_URL`` set: server mode (``AVATARSTREAM_API_KEY`` if the server wants one); else in process."""
    image = os.environ.get("AVATAR_IMAGE", "astronaut")
    size = int(os.environ.get("AVATAR_SIZE", "512"))
    url = os.environ.get("AVATARSTREAM_URL")
    if url:
        return AvatarSession(url=url, api_key=os.environ.get("AVATARSTREAM_API_KEY"), image=image, size=size,
                             engine=os.environ.get("AVATAR_ENGINE", "lite"))
    return AvatarSession(image=image, size=size, engine="lite")


@server.rtc_session()
async def entrypoint(ctx: JobContext) -> None:
    await ctx.connect()
    session = AgentSession(stt=os.environ.get("STT_MODEL", "deepgram/nova-3"),
                           llm=os.environ.get("LLM_MODEL", "openai/gpt-4.1-mini"),
                           tts=os.environ.get("TTS_MODEL", "cartesia/sonic-2"))
    avatar = make_avatar()
    await avatar.start(session, room=ctx.room)  # before session.start: the avatar takes the audio output
    await session.start(agent=Agent(instructions="You are a friendly assistant with a face. Keep replies short."),
                        room=ctx.room,
                        room_options=room_io.RoomOptions(audio_output=False))  # the avatar publishes the audio
    await session.generate_reply(instructions="Greet the user and say that you are an avatar.")


if __name__ == "__main__":
    cli.run_app(server)
