"""Ray scale-out on a local Ray instance, on the CPU: jobs complete, a dead actor's job is re-queued."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from magic141.engine import media
from magic141.engine.queue import JobQueue
from magic141.protocol import SPEC_VERSION, JobState

SAMPLE_IMAGE = Path(__file__).resolve().parents[1] / "resources" / "samples" / "first_frame.png"


def spec(out: Path, seconds: str, seed: int) -> dict:
    return {"version": SPEC_VERSION, "source": {"kind": "image", "path": str(SAMPLE_IMAGE)},
            "prompt": "a ball", "seconds": seconds, "height": 32, "width": 48, "seed": seed,
            "output_dir": str(out)}


@pytest.fixture(scope="module")
def ray():
    """A local Ray instance (the [ray] extra; the [test] extra includes it), imported only when used."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow  # a local Ray cluster takes seconds to start, and its actors load the model
def test_jobs_run_on_actors_and_a_dead_actor_gives_its_job_back(tmp_path, ray):
    from magic141.engine.ray_dispatch import RayDispatcher

    with JobQueue(tmp_path / "queue.db") as queue:
        queue.submit(spec(tmp_path, "8", 0), job_id="long", priority=1)
        for seed in range(3):
            queue.submit(spec(tmp_path, "1/2", seed), job_id=f"short-{seed}")
        dispatcher = RayDispatcher(queue, actors=2)
        killed = []

        def kill_the_long_jobs_actor() -> None:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not killed:
                for actor, job_id in list(dispatcher.running.values()):
                    if job_id == "long" and queue.get("long").attempts == 1:
                        time.sleep(3)  # let it load and start denoising
                        ray.kill(actor)
                        killed.append(job_id)
                        return
                time.sleep(0.1)

        killer = threading.Thread(target=kill_the_long_jobs_actor)
        killer.start()
        dispatcher.drain()
        killer.join()
        assert killed == ["long"]
        jobs = {job.id: job for job in queue.list()}
        states = {j.id: (j.state, j.error) for j in jobs.values()}
        assert all(job.state == JobState.DONE for job in jobs.values()), states
        assert jobs["long"].attempts == 2  # re-queued once, then completed on a fresh actor
        assert media.probe_video(jobs["long"].result["path"]).frames == 192
