"""The job runner outlives any one job: out-of-memory and unexpected errors fail that job only."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import torch

from magic141.engine.events import EventHub
from magic141.engine.queue import JobQueue
from magic141.engine.worker import JobRunner, Worker
from magic141.protocol import RESULT_VERSION, EventType, JobSpec, JobState, Source

SAMPLE_IMAGE = Path(__file__).resolve().parents[1] / "resources" / "samples" / "first_frame.png"


def spec(out: Path, seed: int) -> JobSpec:
    return JobSpec(Source("image", str(SAMPLE_IMAGE)), "x", str(out), seconds=Fraction(1, 2), height=32,
                   width=48, seed=seed, model="tiny")


def test_out_of_memory_fails_that_job_and_the_worker_serves_the_next(tmp_path, monkeypatch):
    from magic141.engine.generate import Engine

    real_generate = Engine.generate
    calls = []

    def generate(self, job, out, **kwargs):
        calls.append(job.seed)
        if job.seed == 0:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real_generate(self, job, out, **kwargs)

    monkeypatch.setattr(Engine, "generate", generate)
    hub = EventHub()
    with JobQueue(tmp_path / "q.db") as queue:
        queue.submit(spec(tmp_path, 0).to_json(), job_id="big")
        queue.submit(spec(tmp_path, 1).to_json(), job_id="fine")
        worker = Worker(queue, hub)
        assert worker.drain() == 2
        big, fine = queue.get("big"), queue.get("fine")
    assert big.state == JobState.FAILED and big.error.startswith("out of memory on the device")
    assert "try quant fp8" in big.error
    assert fine.state == JobState.DONE and Path(fine.result["path"]).is_file()
    assert fine.result["version"] == RESULT_VERSION and fine.result["fps"] == "24"  # the result JSON
    assert calls == [0, 1]
    events = hub.follow("big")
    assert [next(events).type, next(events).type] == [EventType.STARTED, EventType.FAILED]
    assert not list(tmp_path.glob("magic141_big*"))


def test_a_bad_spec_or_output_folder_fails_naming_its_field(tmp_path):
    runner = JobRunner("cpu")
    bad = runner.execute("j", {**spec(tmp_path, 0).to_json(), "seconds": "0"})
    assert bad.state == JobState.FAILED and bad.field == "seconds"
    assert bad.error == "seconds: must be positive, got '0'"  # what the queue's record keeps
    (tmp_path / "file").write_text("not a folder")
    blocked = runner.execute("j", spec(tmp_path / "file" / "renders", 0))
    assert blocked.state == JobState.FAILED and blocked.field == "output_dir" and "file" in blocked.reason


def test_a_job_changed_by_someone_else_meanwhile_is_logged_and_left(tmp_path, monkeypatch, caplog):
    from magic141.engine.generate import Engine

    real_generate = Engine.generate

    def generate(self, job, out, **kwargs):
        result = real_generate(self, job, out, **kwargs)
        if job.seed == 0:  # meanwhile another process ended the job: recording it conflicts
            with JobQueue(tmp_path / "q.db") as other:
                other.fail("taken", "ended by someone else")
        return result

    monkeypatch.setattr(Engine, "generate", generate)
    with JobQueue(tmp_path / "q.db") as queue:
        queue.submit(spec(tmp_path, 0).to_json(), job_id="taken")
        queue.submit(spec(tmp_path, 1).to_json(), job_id="next")
        with caplog.at_level("WARNING", logger="magic141.worker"):
            assert Worker(queue).drain() == 2  # no JobConflict escapes: a service's thread lives on
        assert queue.get("taken").state == JobState.FAILED  # as the other process left it
        assert queue.get("taken").error == "ended by someone else"
        assert queue.get("next").state == JobState.DONE
    assert "job taken: left as it is" in caplog.text and "is FAILED" in caplog.text


def test_recovery_deletes_what_a_killed_engine_left_of_unfinished_jobs(tmp_path):
    from magic141 import atomic
    from magic141.engine.worker import discard_unfinished

    out = tmp_path / "renders"
    out.mkdir()
    kept = out / "someone_elses.mp4"
    kept.write_bytes(b"older than the job")
    with JobQueue(tmp_path / "q.db") as queue:
        for job_id in ("cut", "renamed", "done"):
            queue.submit(spec(out, 0).to_json(), job_id=job_id)
        queue.submit({**spec(out, 0).to_json(), "output_name": kept.name}, job_id="over")
        for _ in range(4):
            queue.claim("dead")
        paths = {job_id: Path(JobSpec.from_json(queue.get(job_id).spec).output_path(job_id))
                 for job_id in ("cut", "renamed", "done", "over")}
        partial = atomic.temporary_beside(paths["cut"])
        partial.write_bytes(b"half a movie")  # killed while writing
        paths["renamed"].write_bytes(b"whole, never recorded")  # killed between rename and record
        paths["done"].write_bytes(b"recorded")
        queue.complete("done", {"path": str(paths["done"])})
        recovered = queue.recover()
        assert {job.id for job in recovered} == {"cut", "renamed", "over"}
        deleted = [path for job in recovered for path in discard_unfinished(job)]
    assert sorted(deleted) == sorted([partial, paths["renamed"]])
    assert sorted(p.name for p in out.iterdir()) == sorted([paths["done"].name, kept.name])
