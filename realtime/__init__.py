"""Real-time serving: sessions, WebRTC, pacing, HTTP/WebSocket API and the ``avatar`` CLI.

Nothing here imports torch; engines are reached through ``engines.base`` and ``engines.registry``.
"""
