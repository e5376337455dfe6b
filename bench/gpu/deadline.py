"""The GPU check's time budget: every section states its estimate, runs only if the time left covers it, and
a failing section is recorded, not fatal (one device call must bring back whatever it could measure).

``Deadline(total_s)`` starts the clock; ``run(name, estimate_s, fn)`` returns ``fn()``'s dict, or
``{"skipped": why}`` when fewer than ``estimate_s`` seconds are left, or ``{"error": ...}`` when ``fn`` raised.
Sections with inner steps (sessions 1, 2, 4, ...) ask ``left()`` before each step and record the steps they
skipped themselves. ``report()`` is the JSON's ``time_budget``: the total, each section's estimate, what it took,
and whether it ran, was skipped or failed.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class SectionRecord:
    estimate_s: float
    took_s: float = 0.0
    status: str = "pending"  # "ran", "skipped", "error"
    note: str = ""


@dataclass
class Deadline:
    total_s: float
    t0: float = field(default_factory=time.perf_counter)
    sections: dict[str, SectionRecord] = field(default_factory=dict)
    section_limits: bool = True  # False (the CPU dry run): a section's steps are limited by the whole budget only

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

    def run(self, name: str, estimate_s: float, fn: Callable[[], dict]) -> dict:
        record = self.sections[name] = SectionRecord(estimate_s=round(estimate_s, 1))
        left = self.left()
        if left < estimate_s:
            record.status = "skipped"
            record.note = f"needs ~{estimate_s:.0f} s, {max(0.0, left):.0f} s left of the {self.total_s:.0f} s budget"
            print(f"gpu check: {name} skipped ({record.note})")
            return {"skipped": record.note}
        t = time.perf_counter()
        print(f"gpu check: {name} (estimate {estimate_s:.0f} s, {left:.0f} s left)", flush=True)
        try:
            out = fn()
            record.status = "ran"
        except Exception as exc:  # noqa: BLE001 - a failed section is reported, the others still run
            record.status = "error"
            record.note = f"{type(exc).__name__}: {exc}"
            print(f"gpu check: {name} failed: {record.note}\n{traceback.format_exc()}", flush=True)
            out = {"error": record.note, "traceback": traceback.format_exc(limit=6)}
        record.took_s = round(time.perf_counter() - t, 1)
        return out

    def report(self) -> dict:
        return {"total_s": self.total_s, "elapsed_s": round(self.elapsed(), 1),
                "estimated_s": round(sum(r.estimate_s for r in self.sections.values()), 1),
                "sections": {k: vars(r) for k, r in self.sections.items()}}
