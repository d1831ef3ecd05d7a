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
