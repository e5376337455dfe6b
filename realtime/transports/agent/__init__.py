"""The voice agent's WebSocket transport: wire format (protocol.py) and the socket (socket.py)."""
