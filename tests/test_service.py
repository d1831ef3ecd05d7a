"""The engine service as a real subprocess: submit, stream, auth, crash recovery, cancel, load.

One service serves the whole module (starting one costs seconds); each test uses job ids and output
folders of its own. The kill -9 test starts and kills its own.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from fractions import Fraction
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from conftest import stop_service

from magic141 import home as home_dir
from magic141.engine import media
from magic141.engine.queue import JobQueue
from magic141.errors import EngineError
from magic141.plugin.client import EngineClient
from magic141.protocol import MODELS_VERSION, RESULT_VERSION, SPEC_VERSION, EventType, JobSpec, JobState

SAMPLE_IMAGE = Path(__file__).resolve().parents[1] / "resources" / "samples" / "first_frame.png"


def spec_json(out_dir: Path, seconds: str = "1", **extra) -> dict:
    return {"version": SPEC_VERSION, "source": {"kind": "image", "path": str(SAMPLE_IMAGE)},
            "prompt": "a red ball rolls", "seconds": seconds, "fps": "24000/1001", "height": 32, "width": 48,
            "output_dir": str(out_dir), "model": "tiny", **extra}


def spec(out_dir: Path, seconds: str = "1", **extra) -> JobSpec:
    return JobSpec.from_json(spec_json(out_dir, seconds, **extra))


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    root = tmp_path_factory.mktemp("service") / "home"
    client = EngineClient(root).connect()
    yield client
    stop_service(client.root)


def raw_request(client: EngineClient, method: str, path: str, body: bytes | None = None,
                token: str | None = None) -> tuple[int, bytes]:
    parts = urlsplit(home_dir.read_service(client.root)["url"])
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    connection.request(method, path, body=body, headers=headers)
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response.status, data


def final_state(client: EngineClient, job_id: str) -> dict:
    """The job's record once its event stream has ended (the stream ends with the job)."""
    for _ in client.events(job_id):
        pass
    return client.job(job_id)


def test_submit_stream_to_the_end_and_check_the_file(service, tmp_path):
    health = service.health()
    assert health["device"] == "cpu" and health["version"] == 1
    job = service.submit(spec(tmp_path / "renders"))
    events = list(service.events(job["id"]))  # each parsed by protocol.Event: versioned, or refused
    assert events[-1].type == EventType.FINISHED, events[-1]
    assert [e.type for e in events if e.type != EventType.STEP] == [EventType.QUEUED, EventType.STARTED,
                                                                    EventType.FINISHED]
    steps = [e for e in events if e.type == EventType.STEP]
    assert steps and all(e.total == 4 and e.eta >= 0 for e in steps)
    assert any(e.preview for e in steps)  # small step previews travel as PNG
    result = events[-1].result
    info = media.probe_video(result.path)
    assert info.frames == result.frames == 24 and info.fps == result.fps == Fraction(24000, 1001)
    assert Path(result.path).parent == tmp_path / "renders"
    record = service.job(job["id"])
    assert record["state"] == JobState.DONE and record["result"]["version"] == RESULT_VERSION
    assert record["result"]["fps"] == "24000/1001"
    # A second job on the same model pays no load time: the pipeline stays warm.
    second = service.submit(spec(tmp_path / "renders", seed=1))
    last = list(service.events(second["id"]))[-1]
    assert last.type == EventType.FINISHED and last.result.timings["load"] < 0.05
    assert "tiny (none)" in service.health()["loaded_models"]
    # A late follower of an ended job gets its end again.
    assert [e.type for e in service.events(job["id"])][-1] == EventType.FINISHED


def test_token_json_and_unknown_jobs(service, tmp_path):
    token = home_dir.read_token(service.root)
    assert (service.root / "token").stat().st_mode & 0o777 == 0o600
    for bad in (None, "wrong", token + "x"):
        status, body = raw_request(service, "GET", "/v1/jobs", token=bad)
        assert status == 401 and json.loads(body) == {"error": "unauthorized"}
    status, _ = raw_request(service, "GET", "/v1/no-such-route", token=None)
    assert status == 401  # nothing about routes without the token
    status, body = raw_request(service, "POST", "/v1/jobs", body=b"{not json", token=token)
    assert status == 400 and "not valid JSON" in json.loads(body)["error"]
    bad_spec = json.dumps({"spec": spec_json(tmp_path, seconds="-1")}).encode()
    status, body = raw_request(service, "POST", "/v1/jobs", body=bad_spec, token=token)
    # The field at fault, apart from the message: each front end names it its own way.
    assert status == 400 and json.loads(body) == {"error": "must be positive, got '-1'", "field": "seconds"}
    with pytest.raises(EngineError) as missing:
        service.job("nope")
    assert missing.value.status == 404 and "nope" in str(missing.value)
    with pytest.raises(EngineError) as conflict:
        service.retry(service.submit(spec(tmp_path), job_id="not-retryable")["id"])
    assert conflict.value.status == 409 and "only FAILED or CANCELLED" in str(conflict.value)
    service.cancel("not-retryable")
    assert final_state(service, "not-retryable")["state"] in ("CANCELLED", "DONE")
    assert home_dir.read_service(service.root)["url"].startswith("http://127.0.0.1:")


@pytest.mark.slow
def test_kill_9_mid_job_then_restart_completes_it_and_keeps_the_queue(tmp_path):
    root = tmp_path / "home"
    client = EngineClient(root).connect()
    try:
        long_job = client.submit(spec(tmp_path / "out", seconds="12"), job_id="long")
        queued = [client.submit(spec(tmp_path / "out", seed=i), job_id=f"after-{i}")["id"] for i in range(3)]
        for event in client.events("long"):
            if event.type == EventType.STEP:
                break
        stop_service(root)  # kill -9 while the job runs; returns once the process is gone
        restarted = EngineClient(root).connect()
        jobs = {job["id"]: job for job in restarted.jobs()}
        assert set(jobs) == {"long", *queued}
        assert list(restarted.events("long"))[-1].type == EventType.FINISHED
        final = restarted.job("long")
        assert final["state"] == "DONE" and final["attempts"] == 2
        assert media.probe_video(final["result"]["path"]).frames == round(12 * Fraction(24000, 1001))
        for job_id in queued:
            assert final_state(restarted, job_id)["state"] == "DONE"
        assert long_job["id"] == "long"
        assert not list((tmp_path / "out").glob(".*.partial*"))  # the killed write was cleaned up
    finally:
        stop_service(root)


def test_cancel_stops_within_one_step_and_leaves_no_file(service, tmp_path):
    out = tmp_path / "cancelled"
    other = service.submit(spec(tmp_path / "kept", seed=5), job_id="other", priority=-1)
    job = service.submit(spec(out, seconds="20"), job_id="victim", priority=5)
    steps_after_cancel = []
    cancelled_at = None
    for event in service.events("victim"):
        if event.type == EventType.STEP:
            if cancelled_at is None and event.window == 2:
                service.cancel("victim")
                cancelled_at = event.seq
            elif cancelled_at is not None:
                steps_after_cancel.append(event)
    assert event.type == EventType.CANCELLED
    assert len(steps_after_cancel) <= 1  # the step in flight may finish; no more
    assert service.job(job["id"])["state"] == "CANCELLED"
    assert not out.exists() or list(out.iterdir()) == []
    assert final_state(service, other["id"])["state"] == "DONE"  # untouched


def test_200_jobs_from_4_clients_are_recorded_once(service, tmp_path):
    service.request("POST", "/v1/queue/pause")
    try:
        _submit_200_from_4_clients(service, tmp_path)
    finally:  # the service is shared: leave it with nothing pending
        for job in service.jobs():
            if job["state"] == "PENDING":
                service.cancel(job["id"])
        service.request("POST", "/v1/queue/resume")


def _submit_200_from_4_clients(service: EngineClient, tmp_path: Path) -> None:
    errors = []

    def submit_many(client_number: int) -> None:
        client = EngineClient(service.root).connect(start=False)
        for i in range(50):
            try:
                job_id = f"c{client_number}-{i}"
                client.submit(spec(tmp_path, seed=i), job_id=job_id)
                if i % 10 == 0:  # a retried submission must not duplicate
                    client.submit(spec(tmp_path, seed=i), job_id=job_id)
            except EngineError as exc:
                errors.append(exc)

    threads = [threading.Thread(target=submit_many, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    ids = [job["id"] for job in service.jobs() if job["id"].startswith(("c0-", "c1-", "c2-", "c3-"))]
    assert len(ids) == len(set(ids)) == 200
    assert service.health()["queue"]["PENDING"] == 200  # the other tests' jobs have all ended


# One service per home ---------------------------------------------------------------------------

MAGIC141 = [sys.executable, "-m", "magic141"]


def serve_processes(root: Path) -> list[int]:
    """Pids of the live `magic141 serve` processes of ``root`` (from /proc: the test runs on Linux)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if b"serve" in argv and str(root).encode() in argv and state != "Z":
            found.append(int(entry.name))
    return found


def test_the_service_lock_names_its_holder_and_dies_with_it(tmp_path):
    root = home_dir.home(tmp_path / "home")
    assert home_dir.service_pid(root) is None
    with home_dir.ServiceLock(root) as lock:
        assert lock.acquire()
        assert not home_dir.ServiceLock(root).acquire(patience=0)  # another descriptor, as another process
        assert home_dir.service_pid(root) == os.getpid()
    assert home_dir.service_pid(root) is None
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from magic141 import home
        assert home.ServiceLock(Path({str(root)!r})).acquire()
        print("held", flush=True)
        time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert home_dir.service_pid(root) == holder.pid
        holder.kill()  # kill -9: no clean-up runs, and still the OS drops the lock
        holder.wait()
        assert home_dir.service_pid(root) is None and home_dir.ServiceLock(root).acquire(patience=0)
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()


def test_a_client_waits_for_a_starting_service_instead_of_starting_another(tmp_path):
    root = home_dir.home(tmp_path / "home")
    with home_dir.ServiceLock(root) as starting:  # held, as by a service still loading
        assert starting.acquire()
        with pytest.raises(EngineError, match="did not start within"):
            EngineClient(root).connect(wait=0.5)
        assert serve_processes(root) == [] and not (root / "logs" / "service.out").exists()


def test_a_second_serve_exits_0_naming_the_pid_and_leaves_the_running_job_alone(service, tmp_path):
    # Long enough to outlast the second serve on a fast machine (8 s of tiny video took 0.7 s here).
    job = service.submit(spec(tmp_path / "out", seconds="60"), job_id="not-recovered", priority=9)
    for event in service.events(job["id"]):
        if event.type == EventType.STEP:
            break
    pid = home_dir.read_service(service.root)["pid"]
    second = subprocess.run([*MAGIC141, "serve", "--home", str(service.root)], capture_output=True,
                            text=True, timeout=60)
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == f"the engine service for {service.root} is already running (pid {pid})"
    record = service.job(job["id"])
    assert record["state"] == "RUNNING" and record["attempts"] == 1  # not recovered by the second one
    assert home_dir.read_service(service.root)["pid"] == pid
    service.cancel(job["id"])
    assert final_state(service, job["id"])["state"] == "CANCELLED"


@pytest.mark.slow
def test_clients_racing_to_start_a_service_start_exactly_one(tmp_path):
    root = tmp_path / "home"
    code = ("import sys\nfrom magic141.plugin.client import EngineClient\nsys.stdin.readline()\n"
            f"client = EngineClient({str(root)!r}).connect()\n"
            "print(client.health()['magic141'], client._url, flush=True)\n")
    clients = [subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True) for _ in range(3)]
    try:
        for client in clients:  # each has imported the client: now "go" at once
            client.stdin.write("go\n")
            client.stdin.flush()
        urls = {client.communicate(timeout=120)[0].split()[-1] for client in clients}
        assert all(client.returncode == 0 for client in clients)
        assert len(urls) == 1 and serve_processes(root) == [home_dir.service_pid(root)]
        assert "already running" not in (root / "logs" / "service.out").read_text()  # none started in vain
    finally:
        for client in clients:
            client.kill()
            client.wait()
        stop_service(root)


# Idle shutdown ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_an_idle_service_stops_by_itself_but_never_while_a_job_runs(tmp_path):
    root = home_dir.home(tmp_path / "home")
    process = subprocess.Popen([*MAGIC141, "serve", "--home", str(root), "--idle-exit", "1"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while home_dir.service_pid(root) != process.pid and time.monotonic() < deadline:
            time.sleep(0.02)  # until it holds the lock; then a client waits for it to serve
        client = EngineClient(root).connect(start=False, wait=120)
        job = client.submit(spec(tmp_path / "out", seconds="4"))  # runs for longer than 1 s
        # No request and no event stream from here on: only the running job keeps the service up.
        assert process.wait(timeout=120) == 0, process.stderr.read()
        with JobQueue(root / "queue.db") as queue:
            assert queue.get(job["id"]).state == JobState.DONE
        assert not (root / "service.json").exists() and home_dir.service_pid(root) is None
        log = (root / "logs" / "service.log").read_text()
        assert "no job, request or event stream for 1 s: stopping" in log
    finally:
        process.kill()
        process.wait()
        process.stderr.close()


def test_idle_exit_takes_seconds_or_0_and_refuses_the_rest_in_one_line(capsys):
    from magic141.cli import build_parser, main

    assert build_parser().parse_args(["serve"]).idle_exit == home_dir.IDLE_EXIT
    assert build_parser().parse_args(["serve", "--idle-exit", "0"]).idle_exit == 0
    with pytest.raises(SystemExit) as refused:
        main(["serve", "--idle-exit", "-5"])
    assert refused.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "must be 0 (never) or a number of seconds, got '-5'" in err


def test_queue_run_refuses_a_queue_that_a_service_runs(tmp_path, capsys):
    from magic141.cli import main

    root = home_dir.home(tmp_path / "home")
    with JobQueue(root / "queue.db") as queue:
        queue.submit(spec_json(tmp_path), job_id="theirs")
        queue.claim("the service")
    with home_dir.ServiceLock(root) as lock:
        assert lock.acquire()
        assert main(["queue", "--home", str(root), "run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: the engine service (pid {os.getpid()}) runs this queue; "
                   "stop it first, or let it run the jobs")
    with JobQueue(root / "queue.db") as queue:
        assert queue.get("theirs").state == JobState.RUNNING  # not taken back from the service


def test_the_service_lists_every_family_and_what_it_needs(service):
    catalog = service.models()
    assert catalog["version"] == MODELS_VERSION and catalog["modes"][0] == "bf16"
    families = {family["name"]: family for family in catalog["families"]}
    assert set(families) == {"hunyuan", "wan", "hv15", "ltx2"} and families["ltx2"]["audio"] is True
    for family in families.values():  # fp8 needs less than bf16, and each way of offloading less again
        needs = family["needs_bytes"]
        offloaded = [n for mode, n in needs.items() if "offload" in mode]
        assert needs["bf16"] > needs["fp8"] >= max(offloaded) and min(offloaded) > 2**30
