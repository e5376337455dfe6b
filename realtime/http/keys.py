"""Typed keys of the aiohttp application's shared state (one place, no import cycles)."""

from __future__ import annotations

from aiohttp import web

from avatarstream.realtime.config import ServerConfig
from avatarstream.realtime.http.ended import EndedResources
from avatarstream.realtime.session.registry import SessionRegistry

REGISTRY = web.AppKey("registry", SessionRegistry)
CONFIG = web.AppKey("config", ServerConfig)
ENDED = web.AppKey("ended", EndedResources)  # WHEP resources that ended recently (idempotent DELETE)
