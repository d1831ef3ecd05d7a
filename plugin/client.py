"""The engine client: finds (or starts) the local engine service and talks to it. Never imports torch.

The service's address is in ``$MAGIC141_HOME/service.json`` and its token in
``$MAGIC141_HOME/token``. ``EngineClient.connect()`` reuses a running service, waits for a starting
one, or starts one as a new process (spawned, never forked from a process that may hold CUDA) and
waits until it answers. A home has one service at most (``home.ServiceLock``).
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlencode, urlsplit

from magic141 import home as home_dir
from magic141.errors import EngineError
from magic141.protocol import Event, JobSpec, progress_fraction

__all__ = ["EngineClient", "EngineError", "progress_fraction"]  # the last two re-exported for the front ends


class EngineClient:
    def __init__(self, root: str | os.PathLike | None = None, *, timeout: float = 30.0,
                 python: str | None = None) -> None:
        self.root = home_dir.home(root)
        self.timeout = timeout
        # The Python that starts the service: this one, unless the client runs inside a host's own
        # Python (Blender's), which has magic141 on its path but not torch.
        self.python = python or sys.executable
        self._url: str | None = None
        self._token: str | None = None

    # Finding and starting the service ----------------------------------------------------------

    def connect(self, *, start: bool = True, wait: float = 120.0) -> EngineClient:
        """Reuse the home's service; wait for one that is starting (it holds the service lock but has
        not published ``service.json`` yet); else start one, unless ``start`` is False. Clients
        racing to start take turns on ``start.lock``: exactly one service starts."""
        if self._try_existing():
            return self
        deadline = time.monotonic() + wait
        process: subprocess.Popen | None = None
        if home_dir.service_pid(self.root) is None:
            if not start:
                raise EngineError(f"no engine service is running for {self.root}")
            with home_dir.starting(self.root, deadline) as ours:
                if ours and not self._try_existing() and home_dir.service_pid(self.root) is None:
                    process = self._start()
                    # Hold start.lock until the new service holds its lock (or gave up), so the next
                    # client in line finds it starting.
                    while (home_dir.service_pid(self.root) is None and process.returncode is None
                           and time.monotonic() < deadline):
                        time.sleep(0.02)
        while time.monotonic() < deadline:
            if self._try_existing():
                return self
            ours_running = process is not None and process.returncode is None
            if not ours_running and home_dir.service_pid(self.root) is None:  # no service, none coming
                if process is not None and process.returncode:
                    raise EngineError(f"the engine service exited with status {process.returncode}; "
                                      f"see {self.root / 'logs'}")
                return self.connect(start=start, wait=deadline - time.monotonic())  # it stopped: again
            time.sleep(0.05)
        raise EngineError(f"the engine service did not start within {wait:.0f} s; see {self.root / 'logs'}")

    def _start(self) -> subprocess.Popen:
        log = open(self.root / "logs" / "service.out", "ab")
        try:
            process = subprocess.Popen(
                [self.python, "-m", "magic141", "serve", "--home", str(self.root)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, close_fds=True,
            )
        except OSError as exc:  # a Python that is gone (a deleted venv), not executable, ...
            raise EngineError(f"cannot start the engine service with {self.python}: "
                              f"{exc.strerror or exc}") from exc
        finally:
            log.close()
        # The service outlives this client; a daemon thread reaps it if it exits while we run
        # (no zombie), and holds the Popen so it is never collected while the child still runs.
        threading.Thread(target=process.wait, name="magic141-service-reaper", daemon=True).start()
        return process

    def _try_existing(self) -> bool:
        info = home_dir.read_service(self.root)
        token = home_dir.read_token(self.root)
        if info is None or token is None or not _pid_alive(info.get("pid")):
            return False
        self._url, self._token = info["url"], token
        try:
            self.health()
        except EngineError:
            self._url = None
            return False
        return True

    # Requests ---------------------------------------------------------------------------------

    def _connection(self, timeout: float | None = None) -> http.client.HTTPConnection:
        if self._url is None:
            self.connect()
        parts = urlsplit(str(self._url))
        return http.client.HTTPConnection(parts.hostname or "localhost", parts.port,
                                          timeout=timeout or self.timeout)

    def request(self, method: str, path: str, body: dict | None = None) -> dict:
        try:
            return self._request(method, path, body)
        except EngineError as exc:
            if exc.status != 503:
                raise
        # Refused unread by a service stopping for idleness: wait for it to go, start one, ask again.
        self._url = None
        self.connect()
        return self._request(method, path, body)

    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        connection = self._connection()
        try:
            payload = json.dumps(body).encode() if body is not None else None
            headers = {"Authorization": f"Bearer {self._token}", "Content-Type": "application/json"}
            connection.request(method, path, body=payload, headers=headers)
            response = connection.getresponse()
            data = response.read()
        except OSError as exc:
            raise EngineError(f"cannot reach the engine service at {self._url}: {exc}") from exc
        finally:
            connection.close()
        try:
            decoded = json.loads(data) if data else {}
        except ValueError:
            decoded = {"error": data.decode(errors="replace")}
        if response.status >= 400:
            raise EngineError(decoded.get("error", f"HTTP {response.status}"), response.status,
                              field=decoded.get("field"))
        return decoded

    def health(self) -> dict:
        return self.request("GET", "/v1/health")

    def models(self) -> dict:
        """The model families and what each needs (``protocol.MODELS_VERSION``)."""
        return self.request("GET", "/v1/models")

    def submit(self, spec: JobSpec, *, job_id: str | None = None, priority: int = 0) -> dict:
        body: dict = {"spec": spec.to_json(), "priority": priority}
        if job_id is not None:
            body["id"] = job_id
        return self.request("POST", "/v1/jobs", body)

    def jobs(self) -> list[dict]:
        return self.request("GET", "/v1/jobs")["jobs"]

    def job(self, job_id: str) -> dict:
        return self.request("GET", f"/v1/jobs/{job_id}")

    def cancel(self, job_id: str) -> dict:
        return self.request("POST", f"/v1/jobs/{job_id}/cancel")

    def retry(self, job_id: str) -> dict:
        return self.request("POST", f"/v1/jobs/{job_id}/retry")

    def events(self, job_id: str | None = None, after: int = 0) -> Iterator[Event]:
        """Follow server-sent events (of one job until it ends, or of all jobs)."""
        query = {"after": after, **({"job": job_id} if job_id else {})}
        connection = self._connection(timeout=60.0)
        try:
            connection.request("GET", f"/v1/events?{urlencode(query)}",
                               headers={"Authorization": f"Bearer {self._token}"})
            response = connection.getresponse()
            if response.status >= 400:
                raise EngineError(json.loads(response.read() or b"{}").get("error", "error"), response.status)
            for raw in response:
                line = raw.decode().rstrip("\n")
                if line.startswith("data: "):
                    yield Event.from_json(json.loads(line[6:]))
        except OSError as exc:
            raise EngineError(f"lost the engine service's event stream: {exc}") from exc
        finally:
            connection.close()


def _pid_alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
