"""The front's ``/metrics``: its own (requests, workers, placements, lost sessions) followed by every
live worker's metrics, scraped at the same moment and re-exposed with a ``worker`` label (one
scrape target for Prometheus; a worker that does not answer in time is left out of that scrape
and shows as ``avatar_front_worker_scraped{worker} 0``)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import aiohttp
from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from avatarstream.realtime.cluster.placement import PlacementTable

SCRAPE_TIMEOUT_S = 2.0


class FrontCollector(Collector):
    """The front's view of the cluster, read at scrape time."""

    def __init__(self, table: PlacementTable) -> None:
        self.table = table

    def collect(self) -> Iterator[Metric]:
        t = self.table
        up = GaugeMetricFamily("avatar_front_worker_up", "1 while Ray reports the worker alive and it answers",
                               labels=["worker"])
        draining = GaugeMetricFamily("avatar_front_worker_draining", "1 while the worker drains", labels=["worker"])
        slots = GaugeMetricFamily("avatar_front_worker_slots", "Session slots the worker declares", labels=["worker"])
        free = GaugeMetricFamily("avatar_front_worker_free_slots", "Slots free for new sessions", labels=["worker"])
        placed = CounterMetricFamily("avatar_front_placements", "Sessions placed on the worker by this front",
                                     labels=["worker"])
        for wid, w in sorted(t.workers.items()):
            up.add_metric([wid], int(w.alive and w.responsive))
            draining.add_metric([wid], int(w.status.draining))
            slots.add_metric([wid], w.status.slots)
            free.add_metric([wid], w.free if w.placeable else 0)
            placed.add_metric([wid], t.placements.get(wid, 0))
        yield from (up, draining, slots, free, placed)
        yield GaugeMetricFamily("avatar_front_sessions", "Sessions routed by this front", len(t.routes))
        yield CounterMetricFamily("avatar_front_sessions_lost", "Sessions lost with their worker", t.lost_total)
        yield GaugeMetricFamily("avatar_front_free_slots", "Free slots over the placeable workers", t.free_slots)


class _Families:
    """A collector over already-built metric families."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


async def _scrape(http: aiohttp.ClientSession, url: str, api_key: str | None) -> str | None:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        async with http.get(url + "/metrics", headers=headers,
                            timeout=aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT_S)) as resp:
            return await resp.text() if resp.status == 200 else None
    except (aiohttp.ClientError, asyncio.TimeoutError):
        return None


async def worker_metrics(http: aiohttp.ClientSession, table: PlacementTable, api_key: str | None) -> bytes:
    """Every live worker's metrics, merged by family, each sample labelled with its worker."""
    workers = sorted((wid, w.status.url) for wid, w in table.workers.items() if w.alive)
    texts = await asyncio.gather(*(_scrape(http, url, api_key) for _, url in workers))
    merged: dict[str, Metric] = {}
    scraped = GaugeMetricFamily("avatar_front_worker_scraped", "1 if the worker's /metrics answered this scrape",
                                labels=["worker"])
    for (wid, _), text in zip(workers, texts):
        scraped.add_metric([wid], int(text is not None))
        for family in text_string_to_metric_families(text or ""):
            out = merged.get(family.name)
            if out is None:
                out = merged[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
            out.samples += [Sample(s.name, {**s.labels, "worker": wid}, s.value, s.timestamp, s.exemplar)
                            for s in family.samples]
    return generate_latest(_Families([scraped, *merged.values()]))
