"""The HTTP face of the server (aiohttp): the application (app.py), its keys (keys.py), the one
error mapping (errors.py), authorisation (auth.py), the legacy signalling routes ``/offer`` and
WHEP ``/whep`` (signalling.py) and the sessions API ``/v1/sessions`` (sessions.py)."""
