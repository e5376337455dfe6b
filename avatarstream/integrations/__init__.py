"""Adapters that put an avatarstream avatar into voice-agent frameworks.

Framework-free parts (importable without any framework installed):
``local_server`` (an in-process server), ``inprocess`` (the in-process engine runner: a session of
an in-process server, shared by the adapters), ``session_reader`` (read a co-located session
directly), ``whep_reader`` (read a remote one as a WebRTC viewer), ``speech_cutter`` (the agent's
speech back out of the avatar's audio). Framework adapters, each behind its extra: ``pipecat``
(``pip install 'avatarstream[pipecat]'``), ``espeak_tts`` (a keyless Pipecat TTS) and ``livekit``
(``pip install 'avatarstream[livekit]'``: LiveKit Agents' avatar contract).
"""
