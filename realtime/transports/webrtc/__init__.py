"""WebRTC transport (aiortc): SDP negotiation (peer.py), the paced media tracks (tracks.py), the
microphone input (microphone.py), 16 kHz <-> 48 kHz audio conversion (audio_convert.py)."""
