"""Typed keys of the aiohttp application's shared state (one place, no import cycles)."""

from __future__ import annotations

from aiohttp import web

from avatarstream.realtime.config import ServerConfig
from avatarstream.realtime.http.ended import IssuedResources
from avatarstream.realtime.session.registry import SessionRegistry

REGISTRY = web.AppKey("registry", SessionRegistry)
CONFIG = web.AppKey("config", ServerConfig)
RESOURCES = web.AppKey("whep_resources", IssuedResources)  # WHEP resources handed out (idempotent DELETE)
