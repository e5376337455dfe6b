"""The LiveKit transport: the session joins a LiveKit room as the agent's avatar (``pip install 'avatarstream[livekit]'``).

``join.py`` (no LiveKit import: the server starts without the extra) validates a join request and loads
``viewer.py`` on first use; ``viewer.py`` joins the room and publishes through LiveKit Agents'
``AvatarRunner``; ``generator.py`` is the ``VideoGenerator`` the agent-side plugin runs too.
"""
