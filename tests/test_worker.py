"""The job runner outlives any one job: out-of-memory and unexpected errors fail that job only."""

from __future__ import annotations

from pathlib import Path

import torch

from magic141.engine.events import EventHub
from magic141.engine.queue import JobQueue, JobState
from magic141.engine.worker import Worker

SAMPLE_IMAGE = Path(__file__).resolve().parents[1] / "resources" / "samples" / "first_frame.png"


def spec(out: Path, seed: int) -> dict:
    return {"version": 1, "source": {"kind": "image", "path": str(SAMPLE_IMAGE)}, "prompt": "x",
            "seconds": "1/2", "height": 32, "width": 48, "seed": seed, "output_dir": str(out)}


def test_out_of_memory_fails_that_job_and_the_worker_serves_the_next(tmp_path, monkeypatch):
    from magic141.engine.generate import Engine

    real_generate = Engine.generate
    calls = []

    def generate(self, request, **kwargs):
        calls.append(request.seed)
        if request.seed == 0:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real_generate(self, request, **kwargs)

    monkeypatch.setattr(Engine, "generate", generate)
    hub = EventHub()
    with JobQueue(tmp_path / "q.db") as queue:
        queue.submit(spec(tmp_path, 0), job_id="big")
        queue.submit(spec(tmp_path, 1), job_id="fine")
        worker = Worker(queue, hub)
        assert worker.drain() == 2
        big, fine = queue.get("big"), queue.get("fine")
    assert big.state == JobState.FAILED and big.error.startswith("out of memory on the device")
    assert "try quant fp8" in big.error
    assert fine.state == JobState.DONE and Path(fine.result["path"]).is_file()
    assert calls == [0, 1]
    events = hub.follow("big")
    assert [next(events)["type"], next(events)["type"]] == ["started", "failed"]
    assert not list(tmp_path.glob("magic141_big*"))
