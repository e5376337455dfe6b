"""The front's placement table on its own (no Ray): a restarted front adopts the sessions its
workers report, once, and authorises them by the reported token digest; a deleted session's slot
is free at once."""

from __future__ import annotations

from avatarstream.realtime.cluster.placement import PlacementTable, WorkerStatus, token_digest


def status(worker: str, sessions: dict[str, str], incarnation: str = "i1", slots: int = 2) -> WorkerStatus:
    return WorkerStatus(worker_id=worker, url=f"http://{worker}:1", slots=slots, incarnation=incarnation,
                        sessions=tuple(sessions), draining=False, pid=1, node_ip="10.0.0.1",
                        token_digests={sid: token_digest(tok) for sid, tok in sessions.items()})


def test_a_new_table_adopts_reported_sessions_once_with_their_token_digests():
    table = PlacementTable()
    assert table.update(status("a", {"s1": "t1", "s2": "t2"}), polled_at=0.0) == []
    assert set(table.routes) == {"s1", "s2"} and table.adopted_total == 2
    route = table.routes["s1"]
    assert route.adopted and route.worker_id == "a" and route.token == token_digest("t1") != "t1"
    table.update(status("a", {"s1": "t1", "s2": "t2"}), polled_at=0.0)  # the next report: nothing new
    assert table.adopted_total == 2 and table.workers["a"].free == 0
    # a new incarnation: the adopted sessions died with the old process
    assert sorted(table.update(status("a", {}, incarnation="i2"), polled_at=0.0)) == ["s1", "s2"]
    assert not table.routes and set(table.lost) == {"s1", "s2"}


def test_a_placed_session_is_not_adopted_again_and_a_deleted_one_frees_its_slot_at_once():
    table = PlacementTable()
    table.update(status("a", {}, slots=1), polled_at=0.0)
    worker = table.choose()
    assert worker is not None
    table.record("s1", worker, "t1")
    table.update(status("a", {"s1": "t1"}, slots=1), polled_at=0.0)
    assert not table.routes["s1"].adopted and table.adopted_total == 0 and table.choose() is None
    table.forget("s1")  # DELETE through the front
    assert table.choose() is worker  # free before the worker's next report
