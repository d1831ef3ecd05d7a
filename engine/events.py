"""Job events for streaming: versioned JSON dicts, kept in memory per job. No torch.

    {"version": 1, "seq": 7, "job": "ab12", "type": "queued" | "started" | "step" | "finished"
     | "failed" | "cancelled", ...}

``step`` carries step/total/window/windows/elapsed/eta and, when asked for, ``preview``: a small
PNG as base64. ``finished`` carries the result, ``failed`` the reason. The queue in SQLite stays
the record; events are the live view of it (a client that connects late replays the job's events
that this service process has seen, then follows).
"""

from __future__ import annotations

import threading
import time

EVENT_VERSION = 1
TERMINAL = ("finished", "failed", "cancelled")
KEEP_STEPS = 50  # step events kept per job for late subscribers (terminal events are always kept)


class EventHub:
    def __init__(self) -> None:
        self._events: list[dict] = []
        self._seq = 0
        self._changed = threading.Condition()

    def publish(self, job_id: str, kind: str, **payload) -> dict:
        with self._changed:
            self._seq += 1
            event = {"version": EVENT_VERSION, "seq": self._seq, "job": job_id, "type": kind,
                     "time": time.time(), **payload}
            self._events.append(event)
            self._trim(job_id)
            self._changed.notify_all()
            return event

    def _trim(self, job_id: str) -> None:
        steps = [i for i, e in enumerate(self._events) if e["job"] == job_id and e["type"] == "step"]
        for index in reversed(steps[:-KEEP_STEPS]):
            del self._events[index]

    def has_ended(self, job_id: str) -> bool:
        with self._changed:
            return any(e["job"] == job_id and e["type"] in TERMINAL for e in self._events)

    def follow(self, job_id: str | None = None, after: int = 0, timeout: float = 15.0):
        """Yield events (of one job, or all) with seq > after; a ``None`` every ``timeout`` seconds
        without news (so a stream can send keep-alives and notice a closed client)."""
        while True:
            with self._changed:
                news = [e for e in self._events if e["seq"] > after and (job_id is None or e["job"] == job_id)]
                if not news:
                    self._changed.wait(timeout)
                    news = [e for e in self._events if e["seq"] > after and (job_id is None or e["job"] == job_id)]
            if not news:
                yield None
                continue
            for event in news:
                after = event["seq"]
                yield event
