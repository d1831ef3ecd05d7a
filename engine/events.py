"""Job events for streaming: ``protocol.Event``s, kept in memory per job. No torch.

The queue in SQLite stays the record; events are the live view of it (a client that connects late
replays the job's events that this service process has seen, then follows). Each event gets the
next ``seq`` of this process and the time it was published.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

from magic141.protocol import Event, EventType

KEEP_STEPS = 50  # step events kept per job for late subscribers (terminal events are always kept)


class EventHub:
    def __init__(self) -> None:
        self._events: list[Event] = []
        self._seq = 0
        self._changed = threading.Condition()

    def publish(self, job_id: str, type: EventType, **fields: Any) -> Event:
        """Publish the next event of ``job_id`` (``fields``: those of ``protocol.Event``)."""
        with self._changed:
            self._seq += 1
            event = Event(job_id, EventType(type), seq=self._seq, time=time.time(), **fields)
            self._events.append(event)
            self._trim(job_id)
            self._changed.notify_all()
            return event

    def _trim(self, job_id: str) -> None:
        steps = [i for i, e in enumerate(self._events) if e.job == job_id and e.type == EventType.STEP]
        for index in reversed(steps[:-KEEP_STEPS]):
            del self._events[index]

    def has_ended(self, job_id: str) -> bool:
        with self._changed:
            return any(e.job == job_id and e.type.terminal for e in self._events)

    def follow(self, job_id: str | None = None, after: int = 0,
               timeout: float = 15.0) -> Iterator[Event | None]:
        """Yield events (of one job, or all) with seq > after; a ``None`` every ``timeout`` seconds
        without news (so a stream can send keep-alives and notice a closed client)."""
        while True:
            with self._changed:
                news = self._news(job_id, after)
                if not news:
                    self._changed.wait(timeout)
                    news = self._news(job_id, after)
            if not news:
                yield None
                continue
            for event in news:
                after = event.seq
                yield event

    def _news(self, job_id: str | None, after: int) -> list[Event]:
        return [e for e in self._events if e.seq > after and (job_id is None or e.job == job_id)]
