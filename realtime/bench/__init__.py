"""Server benchmarks and measurement tools: the agent API latency bench (latency.py), a recording
WebRTC viewer (viewer_recorder.py) and lip-sync measurement (av_sync.py)."""
