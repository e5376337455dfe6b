"""Prometheus metrics of one server (``GET /metrics``, text exposition format, prometheus-client).

Each application has its own ``CollectorRegistry`` (several servers may share a process: tests,
cluster workers). Two kinds of metric:

* counted as requests pass (``middleware``, outermost): HTTP responses by route template, method,
  status and error code (the code the error middleware put in its JSON body: ``session_limit``
  for a 503, ``unauthorized`` ...), and request durations by route;
* read from the live state when scraped (``ServerCollector``): sessions active / started / ended,
  the session cap (where one is set) and the draining flag, viewers by transport, the figures
  admission uses (``realtime/session/admission.py``: active sessions, the CPU and event loop
  time an active and an inactive session cost, the usable CPU, the capacity in active sessions,
  the slowest active session's frame rate), and per session: frames delivered per second over the last
  ``FPS_WINDOW_S`` seconds, clock ticks, frames missing, late ticks, frames the engine dropped,
  video frames the WebRTC viewers skipped, and held back waiting for a keyframe (with the skipped ones, every
  tick a viewer did not send), engine milliseconds per tick, queued speech (the
  playback buffer's depth), viewers; and the GPU memory torch holds where an engine loaded torch
  on a CUDA machine;
* observed as it happens: push-to-playback latency, from an utterance's first pushed audio to the
  clock tick that sends it (``avatar_push_to_playback_seconds``, a histogram over all sessions).

With an API key configured, ``/metrics`` needs it (``Authorization: Bearer <key>``; Prometheus'
``authorization`` scrape setting), since it names the live sessions.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Awaitable, Callable, Iterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from avatarstream.realtime.http.auth import require_api_key
from avatarstream.realtime.http.errors import ERROR_CODE
from avatarstream.realtime.http.keys import CONFIG, REGISTRY
from avatarstream.realtime.session.registry import SessionRegistry
from avatarstream.realtime.session.session import AvatarSession

FPS_WINDOW_S = 2.0  # delivered fps: frames sent over this many seconds
PLAYBACK_BUCKETS = (0.08, 0.12, 0.16, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 2.0)
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def delivered_fps(session: AvatarSession, now: float, window_s: float = FPS_WINDOW_S) -> float:
    """Frames the session sent with a rendered frame over the last ``window_s`` seconds, per second."""
    sent = 0
    for _index, wall, _rms, _mouth, has_frame in reversed(session.stats.sent_log):
        if wall < now - window_s:
            break
        sent += bool(has_frame)
    return sent / window_s


class ServerCollector(Collector):
    """The server's live state, read at scrape time."""

    def __init__(self, registry: SessionRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        reg, now = self.registry, time.time()
        sessions = [s for s in reg if not s.closed]
        yield GaugeMetricFamily("avatar_sessions_active", "Sessions running now, watched or not", len(sessions))
        if reg.config.max_sessions:
            yield GaugeMetricFamily("avatar_sessions_max", "Concurrent session cap (max_sessions; absent: none)",
                                    reg.config.max_sessions)
        yield GaugeMetricFamily("avatar_draining", "1 while the server takes no new sessions", int(reg.draining))
        yield CounterMetricFamily("avatar_sessions_started", "Sessions started", reg.sessions_started)
        yield CounterMetricFamily("avatar_sessions_ended", "Sessions ended (closed, idle, failed)",
                                  reg.sessions_ended)
        viewers = GaugeMetricFamily("avatar_viewers", "Viewers connected or connecting, by transport",
                                    labels=["transport"])
        by_transport: dict[str, int] = {"webrtc": 0, "agent": 0}
        for s in sessions:
            for v in s.viewers:
                by_transport[v.transport] = by_transport.get(v.transport, 0) + 1
        for transport, n in sorted(by_transport.items()):
            viewers.add_metric([transport], n)
        yield viewers
        yield from self._capacity()
        yield from self._sessions(sessions, now)
        yield from _gpu_memory()

    def _capacity(self) -> Iterator[Metric]:
        """The figures admission uses (``realtime/session/admission.py``); a cost not yet measured is absent."""
        load = self.registry.load
        yield GaugeMetricFamily("avatar_admission_active_sessions",
                                "Sessions rendering now (a viewer or agent attached, or speech playing): "
                                "what admission counts", self.registry.active_count)
        cap = load.capacity
        if cap is not None:
            yield GaugeMetricFamily("avatar_capacity_sessions", "Active sessions this server sustains at the "
                                    "admission frame rate (measured)", cap)
        figures = (
            ("avatar_admission_cpu_per_active_session_cores", "Process CPU one active session costs (cores)",
             load.cpu.per_active),
            ("avatar_admission_cpu_per_inactive_session_cores", "Process CPU one unwatched, silent session "
             "costs (cores)", load.cpu.per_inactive),
            ("avatar_admission_loop_per_active_session", "Fraction of the event loop thread one active "
             "session costs", load.loop.per_active),
        )
        for name, doc, value in figures:
            if value is not None:
                yield GaugeMetricFamily(name, doc, value)
        yield GaugeMetricFamily("avatar_admission_usable_cpu_cores", "CPU the sessions may fill: budget x headroom "
                                "(cores)", load.policy.usable_cores)
        if load.min_active_fps is not None:
            yield GaugeMetricFamily("avatar_admission_min_active_session_fps", "Lowest frame rate an active session "
                                    "delivered over the admission window", load.min_active_fps)
        yield GaugeMetricFamily("avatar_cpu_cores_used", "Process CPU over the admission window (cores)",
                                load.cpu_cores_used)
        yield GaugeMetricFamily("avatar_event_loop_busy", "Fraction of the event loop thread busy",
                                load.loop_busy)

    def _sessions(self, sessions: list[AvatarSession], now: float) -> Iterator[Metric]:
        fps = GaugeMetricFamily("avatar_session_fps", f"Frames delivered per second over the last {FPS_WINDOW_S:g} s",
                                labels=["session"])
        ticks = CounterMetricFamily("avatar_session_ticks", "Clock ticks (40 ms frames) processed", labels=["session"])
        missing = CounterMetricFamily("avatar_session_frames_missing",
                                      "Ticks sent without a fresh frame (previous frame repeated)", labels=["session"])
        late = CounterMetricFamily("avatar_session_late_ticks", "Clock ticks processed more than a frame late",
                                   labels=["session"])
        dropped = CounterMetricFamily("avatar_session_engine_dropped_frames", "Frames the engine dropped",
                                      labels=["session"])
        skipped = CounterMetricFamily("avatar_session_video_frames_skipped",
                                      "Video frames viewers skipped behind the clock (summed over viewers)", labels=["session"])
        waits = CounterMetricFamily("avatar_session_video_keyframe_waits",
                                    "Video frames viewers held back waiting for a keyframe, at join or after a skip "
                                    "(summed over viewers)", labels=["session"])
        engine_ms = GaugeMetricFamily("avatar_session_engine_ms_per_tick", "Engine render time per tick (mean, ms)",
                                      labels=["session"])
        queued = GaugeMetricFamily("avatar_session_queued_speech_seconds", "Speech queued for playback (seconds)",
                                   labels=["session"])
        viewers = GaugeMetricFamily("avatar_session_viewers", "Viewers of the session", labels=["session"])
        for s in sessions:
            label = [s.id]
            p = s.pipeline_stats()
            fps.add_metric(label, delivered_fps(s, now))
            ticks.add_metric(label, p["ticks"])
            missing.add_metric(label, p["frames_missing"])
            late.add_metric(label, p["late_ticks"])
            dropped.add_metric(label, p["engine_dropped_frames"])
            viewer_stats = [v.stats() for v in s.viewers]
            skipped.add_metric(label, sum(v.video_frames_skipped for v in viewer_stats))
            waits.add_metric(label, sum(v.video_keyframe_waits for v in viewer_stats))
            engine_ms.add_metric(label, p["engine_ms_per_tick"])
            queued.add_metric(label, s.queued_seconds)
            viewers.add_metric(label, s.viewer_count)
        yield from (fps, ticks, missing, late, dropped, skipped, waits, engine_ms, queued, viewers)


def _gpu_memory() -> Iterator[Metric]:
    """GPU memory held by torch, where an engine loaded it on a CUDA machine (never imported here)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return
    family = GaugeMetricFamily("avatar_gpu_memory_bytes", "GPU memory allocated by torch", labels=["device"])
    for i in range(torch.cuda.device_count()):
        family.add_metric([str(i)], float(torch.cuda.memory_allocated(i)))
    yield family


class HttpMetrics:
    """An application's metrics registry with the request counters (a server's, or a cluster front's)."""

    def __init__(self) -> None:
        self.prometheus = CollectorRegistry()
        self.responses = Counter("avatar_http_responses", "HTTP responses by route, method, status and error code",
                                 ["route", "method", "status", "code"], registry=self.prometheus)
        self.request_seconds = Histogram("avatar_http_request_seconds", "HTTP request handling time",
                                         ["route", "method"], buckets=REQUEST_BUCKETS, registry=self.prometheus)

    def observe(self, request: web.Request, status: int, code: str, seconds: float) -> None:
        route = route_template(request)
        self.responses.labels(route, request.method, str(status), code).inc()
        self.request_seconds.labels(route, request.method).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.prometheus)


class ServerMetrics(HttpMetrics):
    """A server's metrics: the request counters and the live-state collector."""

    def __init__(self, registry: SessionRegistry) -> None:
        super().__init__()
        self.prometheus.register(ServerCollector(registry))
        self.push_to_playback = Histogram(
            "avatar_push_to_playback_seconds",
            "From an utterance's first pushed audio to the clock tick that sends it (lip-sync delay included)",
            buckets=PLAYBACK_BUCKETS, registry=self.prometheus)
        registry.playback_latency_observers.append(self.push_to_playback.observe)


METRICS = web.AppKey("metrics", HttpMetrics)


def route_template(request: web.Request) -> str:
    """The matched route's template (``/v1/sessions/{id}``), so session ids never become labels."""
    info = request.match_info
    resource = info.route.resource if info.http_exception is None else None
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost: counts every response (error responses carry their code, see ``errors.py``)."""
    metrics = request.app.get(METRICS)
    start = time.perf_counter()
    try:
        response = await handler(request)
    except web.HTTPException as exc:  # a redirect, or a JSON HTTPException passed through
        if metrics is not None:
            metrics.observe(request, exc.status, "", time.perf_counter() - start)
        raise
    except Exception:  # not caught by the error middleware: aiohttp answers 500
        if metrics is not None:
            metrics.observe(request, 500, "internal_error", time.perf_counter() - start)
        raise
    if metrics is not None:
        metrics.observe(request, response.status, str(response.get(ERROR_CODE, "")), time.perf_counter() - start)
    return response


async def metrics_handler(request: web.Request) -> web.Response:
    require_api_key(request, request.app[CONFIG].api_key)
    return web.Response(body=request.app[METRICS].exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def add_routes(app: web.Application) -> None:
    """``GET /metrics``; the application must list ``metrics_middleware`` first."""
    app[METRICS] = ServerMetrics(app[REGISTRY])
    app.router.add_get("/metrics", metrics_handler)
