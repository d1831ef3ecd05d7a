"""The SQLite queue on real files: ordering, idempotency, life cycles, kill -9, several processes."""

from __future__ import annotations

import itertools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from magic141.engine.queue import Job, JobQueue
from magic141.errors import InvalidInput, JobConflict, JobNotFound, SchemaTooNew
from magic141.protocol import JobState


@pytest.fixture
def queue(tmp_path):
    with JobQueue(tmp_path / "queue.db") as q:
        yield q


@pytest.fixture
def spawn(tmp_path):
    """Start child processes that open their own JobQueue on ``tmp_path / 'q.db'``; all reaped at the end."""
    children: list[subprocess.Popen] = []

    def start(code: str, *, wait_for_go: bool = False) -> subprocess.Popen:
        script = (f"import sqlite3, sys, time\nfrom magic141.engine.queue import JobQueue\n"
                  f"q = JobQueue({str(tmp_path / 'q.db')!r})\n"
                  + ('print("ready", flush=True)\nsys.stdin.readline()\n' if wait_for_go else "")
                  + textwrap.dedent(code))
        child = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)
        children.append(child)
        return child

    yield start
    for child in children:  # a test that failed half-way must not leave processes or open pipes
        if child.poll() is None:
            child.kill()
        child.wait()
        for pipe in (child.stdin, child.stdout):
            pipe.close()


def _kill_9(child: subprocess.Popen) -> None:
    os.kill(child.pid, signal.SIGKILL)  # no clean-up, no atexit, no close(): as in a crash
    child.wait()


def _start_together(children: list[subprocess.Popen]) -> list[str]:
    """Wait until every child has opened the queue, then say "go" to all at once; return their outputs."""
    for child in children:
        assert child.stdout.readline().strip() == "ready"
    for child in children:
        child.stdin.write("go\n")
        child.stdin.flush()
    return [child.communicate(timeout=60)[0] for child in children]


# Submitting and reading -------------------------------------------------------------------------


def test_list_runs_by_priority_then_age_and_the_rest_by_age(queue):
    old_and_low = queue.submit({"n": 0}, priority=-5)
    low = queue.submit({"n": 1})
    high = queue.submit({"n": 2}, priority=5)
    named = queue.submit({"n": 3}, job_id="shot-010")
    urgent = queue.submit({"n": 4}, priority=9)
    assert [j.id for j in queue.list()] == [urgent.id, high.id, low.id, "shot-010", old_and_low.id]
    queue.cancel(urgent.id)
    queue.cancel(old_and_low.id)
    # The ended ones follow by age alone: priority means nothing once a job will not run.
    assert [j.id for j in queue.list()] == [high.id, low.id, "shot-010", old_and_low.id, urgent.id]
    assert [j.id for j in queue.list(states=["PENDING"], limit=2)] == [high.id, low.id]
    assert [j.id for j in queue.list(states=[JobState.CANCELLED])] == [old_and_low.id, urgent.id]
    assert [j.id for j in queue.list(states=JobState.CANCELLED)] == [old_and_low.id, urgent.id]
    assert queue.list(limit=0) == []
    assert len(low.id) == 32 and named.id == "shot-010"
    assert queue.counts() == {"PENDING": 3, "RUNNING": 0, "CANCELLING": 0, "DONE": 0, "FAILED": 0,
                              "CANCELLED": 2}
    with pytest.raises(InvalidInput, match="states.*PENDING"):
        queue.list(states=["WAITING"])
    assert [queue.claim("w").id for _ in range(3)] == [high.id, low.id, "shot-010"]
    assert queue.claim("w") is None


def test_submission_is_idempotent_by_id_and_ids_are_checked(queue):
    first = queue.submit({"b": 1, "a": [1, 2]}, job_id="shot-010")
    # key order is not a change
    assert queue.submit({"a": [1, 2], "b": 1}, job_id="shot-010", priority=7) == first
    queue.claim("w")
    assert queue.submit({"a": [1, 2], "b": 1}, job_id="shot-010").state == JobState.RUNNING  # any state
    with pytest.raises(JobConflict, match="shot-010"):
        queue.submit({"a": [1, 2], "b": 2}, job_id="shot-010")
    for bad in ("", "x" * 65, "../etc", "a b", "shot\n", "é", 12):
        with pytest.raises(InvalidInput, match="^id"):
            queue.submit({}, job_id=bad)
    assert queue.submit({}, job_id="A-z_0.9" + "x" * 57).id == "A-z_0.9" + "x" * 57  # 64 characters
    for bad_spec in ([1], {"x": float("nan")}, {"x": {1, 2}}):
        with pytest.raises(InvalidInput, match="^spec"):
            queue.submit(bad_spec)
    for bad_priority in ("high", 1.5, True, 2**63):
        with pytest.raises(InvalidInput, match="priority"):
            queue.submit({}, priority=bad_priority)
    with pytest.raises(JobNotFound, match="ghost"):
        queue.get("ghost")
    with pytest.raises(JobNotFound, match="ghost"):
        queue.cancel("ghost")


def test_caller_dicts_are_never_shared_with_the_queue(queue):
    spec = {"prompt": "a cat", "size": [640, 360]}
    job = queue.submit(spec, job_id="j")
    spec["size"].append(1)
    job.spec["prompt"] = "a dog"
    assert queue.get("j").spec == {"prompt": "a cat", "size": [640, 360]}
    queue.claim("w")
    result = {"path": "/r/j.mp4"}
    done = queue.complete("j", result)
    result["path"] = "elsewhere"
    assert queue.get("j").result == {"path": "/r/j.mp4"} == done.result
    data = done.to_json()
    assert data["state"] == "DONE" and json.loads(json.dumps(data, allow_nan=False)) == data
    assert set(data) == set(Job.__dataclass_fields__)


def test_updated_strictly_increases_within_one_clock_tick(queue, monkeypatch):
    monkeypatch.setattr(time, "time", lambda: 2000.0)
    jobs = [queue.submit({"i": i}) for i in range(10)]
    monkeypatch.setattr(time, "time", lambda: 1000.0)  # and when the clock steps back
    queue.claim("w")
    for step in range(10):
        queue.report_progress(jobs[0].id, {"step": step, "total": 10})
    monkeypatch.undo()
    stamps = [j.updated for j in jobs] + [queue.get(jobs[0].id).updated]
    assert all(a < b for a, b in itertools.pairwise(stamps))
    assert queue.get(jobs[0].id).progress == {"step": 9, "total": 10}


# Life cycles ------------------------------------------------------------------------------------


def test_done_failed_and_retried(queue):
    queue.submit({"n": 1}, job_id="a")
    running = queue.claim("w")
    assert running.state == JobState.RUNNING and running.attempts == 1 and running.started == running.updated
    done = queue.complete("a", {"path": "/r/a.mp4"})
    assert done.state == JobState.DONE and done.result == {"path": "/r/a.mp4"} and done.finished is not None
    queue.submit({"n": 2}, job_id="b")
    queue.claim("w")
    queue.report_progress("b", {"step": 3, "total": 8})
    failed = queue.fail("b", "out of memory on the device")
    assert failed.state == JobState.FAILED and failed.error == "out of memory on the device"
    assert queue.claim("w") is None  # a failure is not retried by itself
    again = queue.retry("b")
    assert again.state == JobState.PENDING and again.attempts == 0 and again.error is None
    assert again.progress is None and again.finished is None
    assert queue.claim("w").id == "b"
    with pytest.raises(JobConflict, match="FAILED or CANCELLED"):
        queue.retry("b")
    with pytest.raises(JobConflict, match="FAILED or CANCELLED"):
        queue.retry("a")


def test_cancel_touches_one_job_only(queue):
    for name in ("running", "victim", "pending"):
        queue.submit({"name": name}, job_id=name)
    assert queue.claim("w").id == "running" and queue.claim("w").id == "victim"
    assert queue.cancel("victim").state == JobState.CANCELLING
    assert queue.is_cancel_requested("victim") and not queue.is_cancel_requested("running")
    assert queue.cancel("victim").state == JobState.CANCELLING  # asking twice changes nothing
    assert queue.get("running").state == JobState.RUNNING and queue.get("pending").state == JobState.PENDING
    queue.report_progress("victim", {"step": 2})  # the step in flight may still report
    cancelled = queue.mark_cancelled("victim")
    assert cancelled.state == JobState.CANCELLED and cancelled.result is None
    assert queue.cancel("victim") == cancelled  # terminal: returned as is
    assert queue.cancel("pending").state == JobState.CANCELLED  # never ran: at once
    assert queue.get("running").state == JobState.RUNNING
    assert queue.retry("pending").state == JobState.PENDING


def test_a_result_arriving_after_cancel_ends_cancelled(queue):
    queue.submit({}, job_id="a")
    queue.claim("w")
    queue.cancel("a")
    final = queue.complete("a", {"path": "/r/a.mp4"})
    assert final.state == JobState.CANCELLED and final.result is None  # the caller deletes the media


def test_late_calls_from_a_worker_cannot_rewrite_an_ended_job(queue):
    queue.submit({}, job_id="a")
    with pytest.raises(JobConflict, match="'a' is PENDING"):
        queue.complete("a", {"path": "x"})
    queue.report_progress("a", {"step": 1})  # ignored, not an error
    assert queue.get("a").progress is None
    queue.claim("w")
    queue.complete("a", {"path": "x"})
    for late in (lambda: queue.fail("a", "boom"), lambda: queue.mark_cancelled("a"),
                 lambda: queue.complete("a", {"path": "y"})):
        with pytest.raises(JobConflict, match="DONE"):
            late()
    assert queue.get("a").result == {"path": "x"}
    with pytest.raises(JobNotFound, match="ghost"):
        queue.is_cancel_requested("ghost")


def test_pause_persists_and_stops_claims(tmp_path):
    with JobQueue(tmp_path / "q.db") as q:
        q.submit({})
        assert not q.paused
        q.pause()
    with JobQueue(tmp_path / "q.db") as q:
        assert q.paused and q.claim("w") is None
        q.resume()
        assert not q.paused and q.claim("w") is not None


def test_a_newer_schema_is_refused_with_a_clear_error(tmp_path):
    db = tmp_path / "q.db"
    JobQueue(db).close()
    with sqlite3.connect(db) as raw:
        raw.execute("PRAGMA user_version=99")
    raw.close()
    with pytest.raises(SchemaTooNew, match="schema version 99.*upgrade Magic141"):
        JobQueue(db)
    with pytest.raises(InvalidInput, match="max_attempts"):
        JobQueue(tmp_path / "other.db", max_attempts=0)


# Crashes ----------------------------------------------------------------------------------------


def test_kill_9_mid_job_gives_it_back_until_its_attempts_are_spent(tmp_path, spawn):
    db = tmp_path / "q.db"
    with JobQueue(db) as q:
        q.submit({"kind": "long"}, job_id="long", priority=1)
        for i in range(3):
            q.submit({"kind": "next", "i": i}, job_id=f"next-{i}")
    for attempt in (1, 2, 3):
        child = spawn("job = q.claim('engine')\nprint('claimed', job.id, flush=True)\ntime.sleep(60)\n")
        assert child.stdout.readline().split() == ["claimed", "long"]
        _kill_9(child)
        with JobQueue(db) as q:
            assert q.get("long").state == JobState.RUNNING  # nobody told the queue
            assert [j.id for j in q.recover()] == ["long"]
            long = q.get("long")
            assert long.attempts == attempt
            assert long.state == (JobState.FAILED if attempt == 3 else JobState.PENDING)
            assert [q.get(f"next-{i}").state for i in range(3)] == [JobState.PENDING] * 3  # nothing lost
            assert q.recover() == []  # nothing left to recover
    with JobQueue(db) as q:
        assert q.get("long").error == "the engine stopped during this job 3 times"
        assert q.retry("long").attempts == 0


def test_recover_ends_a_cancelling_job_cancelled(queue):
    queue.submit({}, job_id="a")
    queue.submit({}, job_id="b")
    queue.claim("w")
    queue.cancel("a")
    assert [(j.id, j.state) for j in queue.recover()] == [("a", JobState.CANCELLED)]
    assert queue.get("b").state == JobState.PENDING
    queue.claim("w")
    assert queue.give_back("b").state == JobState.PENDING  # one dead worker, not a whole engine


def test_kill_9_right_after_submit_or_mid_transaction_loses_nothing(tmp_path, spawn):
    db = tmp_path / "q.db"
    child = spawn("q.submit({'x': 1}, job_id='durable')\nprint('submitted', flush=True)\ntime.sleep(60)\n")
    assert child.stdout.readline().strip() == "submitted"
    _kill_9(child)
    # A writer killed inside a transaction: its change is rolled back and its lock released by the OS.
    child = spawn(f"""
    raw = sqlite3.connect({str(db)!r}, isolation_level=None)
    raw.execute("BEGIN IMMEDIATE")
    raw.execute("UPDATE jobs SET state = 'DONE'")
    print("holding", flush=True)
    time.sleep(60)
    """)
    assert child.stdout.readline().strip() == "holding"
    _kill_9(child)
    with JobQueue(db) as q:
        assert q.get("durable").spec == {"x": 1} and q.get("durable").state == JobState.PENDING
        q.submit({}, job_id="after")  # not locked out
        assert q.counts()["PENDING"] == 2


# Several processes and threads ------------------------------------------------------------------


def test_4_processes_submitting_at_once_record_each_job_once(tmp_path, spawn):
    JobQueue(tmp_path / "q.db").close()
    code = """
    n = {n}
    ids = [q.submit({{"shared": True}}, job_id="shared").id]  # the same job from every process
    for i in range(50):
        spec = {{"process": n, "i": i}}
        if i % 3 == 0:
            ids.append(q.submit(spec).id)  # a new uuid
        else:
            ids.append(q.submit(spec, job_id=f"p{{n}}-{{i}}").id)
            if i % 5 == 0:  # a client resending what it is unsure arrived
                assert q.submit(spec, job_id=f"p{{n}}-{{i}}").id == ids[-1]
    print(" ".join(ids))
    """
    outputs = _start_together([spawn(code.format(n=n), wait_for_go=True) for n in range(4)])
    ids = [job_id for out in outputs for job_id in out.split() if job_id != "shared"]
    assert len(ids) == len(set(ids)) == 200
    with JobQueue(tmp_path / "q.db") as q:
        jobs = q.list()
        assert len(jobs) == 201 and {j.id for j in jobs} == set(ids) | {"shared"}
        assert q.counts()["PENDING"] == 201
        assert sorted((j.spec["process"], j.spec["i"]) for j in jobs if j.id != "shared") == [
            (n, i) for n in range(4) for i in range(50)]


def test_2_processes_claiming_at_once_never_take_the_same_job(tmp_path, spawn):
    with JobQueue(tmp_path / "q.db") as q:
        for i in range(40):
            q.submit({"i": i})
    code = """
    claimed = []
    while (job := q.claim("w")) is not None:
        claimed.append(job.id)
        time.sleep(0.005)  # a little work, or the first process drains all 40 before the other wakes
    print(" ".join(claimed))
    """
    outputs = _start_together([spawn(code, wait_for_go=True) for _ in range(2)])
    assert all(out.split() for out in outputs)  # both took part: the race was really run
    claimed = outputs[0].split() + outputs[1].split()
    assert len(claimed) == len(set(claimed)) == 40
    with JobQueue(tmp_path / "q.db") as q:
        assert {j.attempts for j in q.list()} == {1} and q.counts()["RUNNING"] == 40


def test_threads_sharing_one_queue_never_take_the_same_job(queue):
    for i in range(60):
        queue.submit({"i": i})
    claimed: list[str] = []

    def drain() -> None:
        while (job := queue.claim("thread")) is not None:
            claimed.append(job.id)
            queue.report_progress(job.id, {"step": 1})

    threads = [threading.Thread(target=drain) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(claimed) == len(set(claimed)) == 60


@pytest.mark.slow
def test_2_worker_processes_never_run_the_same_job(tmp_path, spawn):
    """The whole worker loop (claim, run, record) in two processes at once: each job runs once."""
    with JobQueue(tmp_path / "q.db") as q:
        for i in range(30):
            q.submit({"i": i}, job_id=f"job-{i}")
    code = """
    import os
    from magic141.engine.worker import Outcome, Worker
    from magic141.protocol import JobState
    worker = Worker(q, name=str(os.getpid()))
    ran = []
    def execute(job_id, spec, progress=None, cancel=None):
        ran.append(job_id)
        time.sleep(0.01)  # a little work, so both processes take part
        return Outcome(JobState.FAILED, reason=f"ran by {worker.name}")
    worker.runner.execute = execute
    print("ready", flush=True)  # once torch is imported, or one process drains all before the other starts
    sys.stdin.readline()
    worker.drain()
    print(worker.name, " ".join(ran))
    """
    outputs = _start_together([spawn(code) for _ in range(2)])
    runs = {out.split()[0]: out.split()[1:] for out in outputs}
    assert len(runs) == 2 and all(runs.values())  # both took part
    ran = [job_id for ids in runs.values() for job_id in ids]
    assert sorted(ran) == sorted(f"job-{i}" for i in range(30))  # each exactly once
    with JobQueue(tmp_path / "q.db") as q:
        for pid, ids in runs.items():
            for job_id in ids:
                job = q.get(job_id)
                assert job.attempts == 1 and job.error == f"ran by {pid}"
