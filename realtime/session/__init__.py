"""The session core, transport-agnostic: the orchestrating ``AvatarSession`` (session.py), its output
ring (output_ring.py), event bus (events.py), engine pump (engine_pump.py), and the registry that
creates, finds and reaps sessions (registry.py)."""
