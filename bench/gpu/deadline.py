"""The GPU check's time budget: every section states its estimate, runs only if the time left covers it, and
a failing section is recorded, not fatal (one device call must bring back whatever it could measure).

``Deadline(total_s)`` starts the clock; ``run(name, estimate_s, fn)`` returns ``fn()``'s dict, or
``{"skipped": why}`` when fewer than ``estimate_s`` seconds are left, or ``{"error": ...}`` when ``fn`` raised.
Every section runs on a thread of its own and is waited for at most ``hang_limit(estimate_s)`` (twice its estimate
plus 30 s, never past the budget's end plus 30 s; the dry run: the budget's end; ``hang_limits[name]`` when set): one that does not return by then is
recorded as ``hung`` and abandoned (a daemon thread), and every later section is skipped (the engine it used may
be stuck). ``on_section`` is called before every section (the check writes its JSON there, with everything measured
before: a hang or a kill keeps it).
Sections with inner steps (sessions 1, 2, 4, ...) ask ``left()`` before each step and record the steps they
skipped themselves. ``report()`` is the JSON's ``time_budget``: the total, each section's estimate, what it took,
and whether it ran, was skipped or failed.
"""

from __future__ import annotations

import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class SectionRecord:
    estimate_s: float
    took_s: float = 0.0
    status: str = "pending"  # "ran", "skipped", "error", "hung"
    note: str = ""


@dataclass
class Deadline:
    total_s: float
    t0: float = field(default_factory=time.perf_counter)
    sections: dict[str, SectionRecord] = field(default_factory=dict)
    section_limits: bool = True  # False (the CPU dry run): a section's steps are limited by the whole budget only
    hang_limits: dict[str, float] = field(default_factory=dict)  # a section's wait limit (else hang_limit's formula)
    on_section: Callable[[], None] | None = None  # before every section (write what was measured)
    hung: str | None = None  # the section that hung: the later ones are skipped

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.total_s - self.elapsed()

    def section_left(self, estimate_s: float) -> Callable[[], float]:
        """For a section starting now: seconds left of its own estimate, or of the whole budget if that is less
        (a section with steps stops at its estimate, so the sections after it keep theirs)."""
        if not self.section_limits:
            return self.left
        end = self.elapsed() + estimate_s
        return lambda: min(self.left(), end - self.elapsed())

    def hang_limit(self, estimate_s: float, name: str = "") -> float:
        if name in self.hang_limits:
            return self.hang_limits[name]
        if not self.section_limits:  # the CPU dry run: the estimates are the H100's, only the budget bounds it
            return max(1.0, self.left() + 30.0)
        return max(1.0, min(2.0 * estimate_s + 30.0, self.left() + 30.0))

    def run(self, name: str, estimate_s: float, fn: Callable[[], dict]) -> dict:
        if self.on_section is not None:  # what the sections before measured, before this one may hang
            self.on_section()
        return self._run(name, estimate_s, fn)

    def _run(self, name: str, estimate_s: float, fn: Callable[[], dict]) -> dict:
        record = self.sections[name] = SectionRecord(estimate_s=round(estimate_s, 1))
        left = self.left()
        if self.hung is not None:
            record.status = "skipped"
            record.note = f"after the hang in {self.hung}"
            return {"skipped": record.note}
        if left < estimate_s:
            record.status = "skipped"
            record.note = f"needs ~{estimate_s:.0f} s, {max(0.0, left):.0f} s left of the {self.total_s:.0f} s budget"
            print(f"gpu check: {name} skipped ({record.note})")
            return {"skipped": record.note}
        t = time.perf_counter()
        limit = self.hang_limit(estimate_s, name)
        print(f"gpu check: {name} (estimate {estimate_s:.0f} s, {left:.0f} s left, abandoned after {limit:.0f} s)",
              flush=True)
        box: dict = {}

        def section() -> None:
            try:
                box["out"] = fn()
            except Exception as exc:  # noqa: BLE001 - a failed section is reported, the others still run
                box["error"] = f"{type(exc).__name__}: {exc}"
                box["traceback"] = traceback.format_exc(limit=6)

        thread = threading.Thread(target=section, name=f"gpu-check-{name}", daemon=True)
        thread.start()
        thread.join(limit)
        record.took_s = round(time.perf_counter() - t, 1)
        if thread.is_alive():
            self.hung = name
            record.status = "hung"
            record.note = f"no answer after {limit:.0f} s: abandoned, the later sections are skipped"
            print(f"gpu check: {name} hung ({record.note})", flush=True)
            return {"error": f"hung: {record.note}", "hung": True}
        if "error" in box:
            record.status = "error"
            record.note = box["error"]
            print(f"gpu check: {name} failed: {record.note}\n{box['traceback']}", flush=True)
            return {"error": record.note, "traceback": box["traceback"]}
        record.status = "ran"
        return box["out"]

    def report(self) -> dict:
        return {"total_s": self.total_s, "elapsed_s": round(self.elapsed(), 1), "hung": self.hung,
                "estimated_s": round(sum(r.estimate_s for r in self.sections.values()), 1),
                "sections": {k: vars(r) for k, r in self.sections.items()}}
