"""The SQLite queue on real files: ordering, idempotency, life cycle, crash recovery, concurrency."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from magic141.engine.errors import InvalidInput
from magic141.engine.queue import JobConflict, JobNotFound, JobQueue, JobState


@pytest.fixture
def queue(tmp_path):
    with JobQueue(tmp_path / "queue.db") as q:
        yield q


def test_run_order_ids_and_idempotent_submission(queue):
    low = queue.submit({"n": 1})
    high = queue.submit({"n": 2}, priority=5)
    same = queue.submit({"n": 3}, job_id="shot-010")
    assert [j.id for j in queue.list()] == [high.id, low.id, "shot-010"]
    assert queue.submit({"n": 3}, job_id="shot-010") == same
    with pytest.raises(JobConflict, match="shot-010"):
        queue.submit({"n": 4}, job_id="shot-010")
    with pytest.raises(InvalidInput, match="id"):
        queue.submit({}, job_id="../etc")
    with pytest.raises(JobNotFound, match="ghost"):
        queue.get("ghost")
    assert queue.claim("w").id == high.id


def test_life_cycle_and_cancel_touches_one_job(queue):
    a, b, c = (queue.submit({"n": i}, job_id=x) for i, x in enumerate("abc"))
    assert queue.claim("w").id == "a"
    assert queue.cancel("c").state == JobState.CANCELLED  # pending: at once
    assert queue.cancel("a").state == JobState.CANCELLING and queue.is_cancel_requested("a")
    assert queue.get("b").state == JobState.PENDING
    assert queue.complete("a", {"path": "x"}).state == JobState.CANCELLED  # result after cancel: not DONE
    assert queue.claim("w").id == "b"
    failed = queue.fail("b", "out of memory")
    assert failed.state == JobState.FAILED and failed.error == "out of memory"
    again = queue.retry("b")
    assert again.state == JobState.PENDING and again.attempts == 0 and again.error is None
    assert queue.claim("w").id == "b"
    done = queue.complete("b", {"path": "/r/b.mp4"})
    assert done.state == JobState.DONE and done.result == {"path": "/r/b.mp4"}
    with pytest.raises(InvalidInput, match="FAILED or CANCELLED"):
        queue.retry("b")


def test_pause_persists_and_stops_claims(tmp_path):
    with JobQueue(tmp_path / "q.db") as q:
        q.submit({})
        q.pause()
    with JobQueue(tmp_path / "q.db") as q:
        assert q.paused and q.claim("w") is None
        q.resume()
        assert q.claim("w") is not None


def _child(db, code: str) -> subprocess.Popen:
    script = f"from magic141.engine.queue import JobQueue\nq = JobQueue({str(db)!r})\n" + textwrap.dedent(code)
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)


def test_killed_engine_gives_the_job_back_until_its_attempts_are_spent(tmp_path):
    db = tmp_path / "q.db"
    with JobQueue(db, max_attempts=2) as q:
        q.submit({"kind": "long"}, job_id="long")
        q.submit({"kind": "next"}, job_id="next", priority=-1)
    for attempt in (1, 2):
        child = _child(db, "job = q.claim('engine'); print(job.id, flush=True)\nimport time; time.sleep(60)")
        assert child.stdout.readline().strip() == "long"
        child.kill()  # SIGKILL: no clean-up runs
        child.wait()
        child.stdout.close()
        with JobQueue(db, max_attempts=2) as q:
            assert q.get("long").state == JobState.RUNNING
            changed = q.recover()
            assert [j.id for j in changed] == ["long"]
            expected = JobState.PENDING if attempt == 1 else JobState.FAILED
            assert q.get("long").state == expected and q.get("long").attempts == attempt
            assert q.get("next").state == JobState.PENDING  # nothing queued is lost
    with JobQueue(db) as q:
        assert "stopped during this job 2 times" in q.get("long").error


def test_two_processes_never_claim_the_same_job(tmp_path):
    db = tmp_path / "q.db"
    with JobQueue(db) as q:
        for i in range(40):
            q.submit({"i": i})
    code = """
    claimed = []
    while (job := q.claim('w')) is not None:
        claimed.append(job.id)
    print(' '.join(claimed))
    """
    children = [_child(db, code) for _ in range(2)]
    outputs = [child.communicate(timeout=120)[0].split() for child in children]
    claimed = outputs[0] + outputs[1]
    assert len(claimed) == len(set(claimed)) == 40


def test_wait_for_change_sees_another_connection(tmp_path):
    with JobQueue(tmp_path / "q.db") as a, JobQueue(tmp_path / "q.db") as b:
        job = a.submit({})
        assert not b.wait_for_change(job.updated, timeout=0.3)
        a.cancel(job.id)
        assert b.wait_for_change(job.updated, timeout=2)
