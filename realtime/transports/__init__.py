"""Transports carry a session's output to remote parties (and speech back in): ``base.py`` is the
contract; ``webrtc/`` (aiortc peers: browsers, WHEP players) and ``agent/`` (the voice agent's
WebSocket) implement it. A new transport needs no edit to the session."""
