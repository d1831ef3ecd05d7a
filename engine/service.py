"""The engine service: a warm worker behind a local HTTP API (Starlette on uvicorn).

Why Starlette + uvicorn: both are widely used and maintained; uvicorn does the HTTP parsing
(h11), Starlette gives routing, JSON and streaming responses in a few lines, and the service
stays one small module. It binds 127.0.0.1 only, on a free port, and every request needs
``Authorization: Bearer <token>`` (the token file is readable by the user alone).

API, version ``protocol.API_VERSION`` (JSON; a refused request is ``{"error": message, "field": name}``,
``field`` naming the input at fault or null, for the client to phrase):

    GET  /v1/health                  version, device, free memory, loaded models, queue counts
    GET  /v1/models                  the model families: needs per memory mode, installed copies
                                     (``families.catalog``, version ``protocol.MODELS_VERSION``)
    POST /v1/jobs                    {"spec": {...}, "id": optional, "priority": 0} -> 201 job
    GET  /v1/jobs                    {"jobs": [job, ...]} in run order
    GET  /v1/jobs/{id}               job                           (404 if unknown)
    POST /v1/jobs/{id}/cancel        job (CANCELLED, or CANCELLING until the step loop stops)
    POST /v1/jobs/{id}/retry         job (PENDING again; 409 unless it FAILED or was CANCELLED)
    POST /v1/queue/pause | resume    {"paused": bool}
    GET  /v1/events[?job=ID&after=N] server-sent events, one ``protocol.Event`` JSON per ``data:`` line

One service per home (``home.ServiceLock``, taken by ``magic141 serve`` before anything else); only
it recovers the queue. It stops by itself after ``idle_exit`` seconds with no job running or pending,
no request and no open event stream, and a clean stop removes ``service.json``.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp

from magic141 import __version__
from magic141 import home as home_dir
from magic141.errors import InvalidInput, JobConflict, JobNotFound, Magic141Error
from magic141.protocol import API_VERSION, TERMINAL_STATES, Event, EventType, JobSpec, JobState

from .events import EventHub
from .queue import JobQueue
from .worker import Worker, discard_unfinished

log = logging.getLogger("magic141.service")

_BUSY = (JobState.PENDING, JobState.RUNNING, JobState.CANCELLING)


class Activity:
    """The idle clock: when a client last asked something, and how many event streams are open. The
    decision to stop and a request's arrival are ordered by one lock: a request either keeps the
    service up or is refused (503) by a service already stopping, never accepted and then dropped."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = time.monotonic()
        self._streams = 0
        self.stopping = False

    def touch(self) -> bool:
        """A request arrives: True to serve it, False if the service is stopping."""
        with self._lock:
            self._last = time.monotonic()
            return not self.stopping

    def open_stream(self, change: int) -> None:
        with self._lock:
            self._streams += change
            self._last = time.monotonic()

    def stop_if_idle(self, seconds: float) -> bool:
        with self._lock:
            if not self._streams and time.monotonic() - self._last >= seconds:
                self.stopping = True
            return self.stopping


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _refuse(status: int, exc: Magic141Error) -> JSONResponse:
    """A refused request: the message and the field it is about, for the client to phrase."""
    return JSONResponse({"error": exc.message, "field": exc.field}, status_code=status)


def build_app(queue: JobQueue, hub: EventHub, worker: Worker, token: str, default_output: Path,
              activity: Activity | None = None) -> ASGIApp:
    activity = activity or Activity()

    async def health(request: Request) -> Response:
        from .memory import available_bytes

        device = worker.device or ("cuda" if _cuda() else "cpu")
        return JSONResponse({
            "version": API_VERSION, "magic141": __version__, "device": device,
            "free_memory": available_bytes(device), "loaded_models": worker.loaded_models,
            "running": worker.current, "queue": queue.counts(), "paused": queue.paused,
        })

    async def models(request: Request) -> Response:
        from starlette.concurrency import run_in_threadpool

        from .families.catalog import catalog

        return JSONResponse(await run_in_threadpool(catalog))  # seconds the first time: off the loop

    async def submit(request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError as exc:
            return _refuse(400, InvalidInput(f"is not valid JSON: {exc}", field="body"))
        if not isinstance(body, dict) or not isinstance(body.get("spec"), dict):
            return _refuse(400, InvalidInput('must be {"spec": {...}, "id": ..., "priority": ...}',
                                             field="spec"))
        spec = dict(body["spec"])
        spec.setdefault("output_dir", str(default_output))
        priority = body.get("priority", 0)
        if isinstance(priority, bool) or not isinstance(priority, int):
            return _refuse(400, InvalidInput(f"must be a whole number, got {priority!r}", field="priority"))
        try:
            normalised = JobSpec.from_json(spec).to_json()
            job = queue.submit(normalised, job_id=body.get("id"), priority=priority)
        except InvalidInput as exc:
            return _refuse(400, exc)
        except JobConflict as exc:
            return _refuse(409, exc)
        if job.state == JobState.PENDING:
            hub.publish(job.id, EventType.QUEUED, priority=job.priority)
        return JSONResponse(job.to_json(), status_code=201)

    async def list_jobs(request: Request) -> Response:
        return JSONResponse({"jobs": [job.to_json() for job in queue.list()]})

    def _job_action(action):
        async def endpoint(request: Request) -> Response:
            try:
                job = action(request.path_params["job_id"])
            except JobNotFound as exc:
                return _refuse(404, exc)
            except (InvalidInput, JobConflict) as exc:
                return _refuse(409, exc)
            return JSONResponse(job.to_json())

        return endpoint

    def _cancel(job_id: str):
        job = queue.cancel(job_id)
        if job.state == JobState.CANCELLED:
            hub.publish(job_id, EventType.CANCELLED)
        return job

    def _retry(job_id: str):
        job = queue.retry(job_id)
        hub.publish(job_id, EventType.QUEUED, priority=job.priority)
        return job

    def _set_paused(paused: bool):
        async def endpoint(request: Request) -> Response:
            if paused:
                queue.pause()
            else:
                queue.resume()
            return JSONResponse({"paused": queue.paused})

        return endpoint

    async def events(request: Request) -> Response:
        job_id = request.query_params.get("job")
        try:
            after = int(request.query_params.get("after", "0"))
        except ValueError:
            return _refuse(400, InvalidInput("must be a whole number", field="after"))
        if job_id is not None:
            try:
                job = queue.get(job_id)
            except JobNotFound as exc:
                return _refuse(404, exc)
        else:
            job = None

        def stream():
            # A job that ended before this service saw it (e.g. before a restart) still gets its end.
            if job is not None and job.state in TERMINAL_STATES and not hub.has_ended(job.id):
                yield _sse(Event.ending(job.id, job.state, job.result, job.error))
                return
            activity.open_stream(+1)  # someone is watching: not idle
            try:
                for event in hub.follow(job_id, after=after):
                    if event is None:
                        yield ": keep-alive\n\n"
                        continue
                    yield _sse(event)
                    if job_id is not None and event.type.terminal:
                        return
            finally:
                activity.open_stream(-1)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store"})

    prefix = f"/v{API_VERSION}"
    routes = [
        Route(f"{prefix}/health", health),
        Route(f"{prefix}/models", models),
        Route(f"{prefix}/jobs", submit, methods=["POST"]),
        Route(f"{prefix}/jobs", list_jobs, methods=["GET"]),
        Route(f"{prefix}/jobs/{{job_id}}", _job_action(queue.get), methods=["GET"]),
        Route(f"{prefix}/jobs/{{job_id}}/cancel", _job_action(_cancel), methods=["POST"]),
        Route(f"{prefix}/jobs/{{job_id}}/retry", _job_action(_retry), methods=["POST"]),
        Route(f"{prefix}/queue/pause", _set_paused(True), methods=["POST"]),
        Route(f"{prefix}/queue/resume", _set_paused(False), methods=["POST"]),
        Route(f"{prefix}/events", events),
    ]
    app = Starlette(routes=routes)
    expected = f"Bearer {token}".encode()

    async def guard(scope, receive, send):
        # Checked before routing: a request without the token learns nothing, not even which paths exist.
        if scope["type"] == "http":
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, expected):
                await _error(401, "unauthorized")(scope, receive, send)
                return
            if not activity.touch():
                await _error(503, "the engine service is stopping")(scope, receive, send)
                return
        await app(scope, receive, send)

    return guard


def _sse(event: Event) -> str:
    return f"data: {json.dumps(event.to_json())}\n\n"


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def serve(root: Path, lock: home_dir.ServiceLock, *, device: str | None = None, port: int = 0,
          idle_exit: float = home_dir.IDLE_EXIT) -> None:
    """Run the service until interrupted or idle for ``idle_exit`` seconds (0: never). ``lock`` must be
    held (``magic141 serve`` takes it): only then are the queue's RUNNING jobs a dead engine's."""
    import uvicorn

    if not lock.held:
        raise ValueError("serve() needs the home's service lock held")
    logging.basicConfig(filename=root / "logs" / "service.log", level=logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    (root / "service.json").unlink(missing_ok=True)  # a dead service's address
    queue = JobQueue(root / "queue.db")
    recovered = queue.recover()
    for job in recovered:
        discard_unfinished(job)
    if recovered:
        log.info("recovered %d jobs after an unclean stop: %s", len(recovered),
                 ", ".join(f"{job.id} {job.state.value}" for job in recovered))
    hub = EventHub()
    worker = Worker(queue, hub, device=device)
    token = home_dir.new_token(root)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))  # loopback only: nothing listens on other interfaces
    address = sock.getsockname()
    stop = threading.Event()
    activity = Activity()
    app = build_app(queue, hub, worker, token, root / "outputs", activity)
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    threads = [threading.Thread(target=worker.run_forever, args=(stop,), name="magic141-worker", daemon=True)]
    if idle_exit > 0:
        threads.append(threading.Thread(target=_exit_when_idle, args=(server, queue, worker, activity,
                                                                     idle_exit, stop),
                                        name="magic141-idle", daemon=True))
    home_dir.write_service(root, {
        "pid": os.getpid(),
        "url": f"http://{address[0]}:{address[1]}", "started": time.time(), "magic141": __version__,
    })
    log.info("serving %s at %s:%d (pid %d)", root, *address, os.getpid())
    for thread in threads:
        thread.start()
    try:
        server.run(sockets=[sock])
    finally:
        stop.set()
        (root / "service.json").unlink(missing_ok=True)  # we hold the lock: the file is ours
        threads[0].join(timeout=1)  # a worker between jobs stops; a job left RUNNING is recovered
        queue.close()
        log.info("stopped")


def _exit_when_idle(server, queue: JobQueue, worker: Worker, activity: Activity, idle_exit: float,
                    stop: threading.Event) -> None:
    poll = min(1.0, idle_exit / 4)
    while not server.started:  # the idle clock starts once clients can be served
        if stop.wait(0.05):
            return
    activity.touch()
    while not stop.wait(poll):
        counts = queue.counts()
        if worker.current is not None or any(counts[state.value] for state in _BUSY):
            activity.touch()  # the idle clock starts when the last job ends
        elif activity.stop_if_idle(idle_exit):
            log.info("no job, request or event stream for %g s: stopping", idle_exit)
            server.should_exit = True
            return
