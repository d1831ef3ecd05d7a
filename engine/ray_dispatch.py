"""Scale-out: run the SQLite queue's jobs on Ray actors, each holding a warm pipeline on one GPU.

The driver (``magic141 queue run --ray auto|ADDRESS``) stays the only writer of the queue, which
remains the record: it claims a job, hands its spec to an idle actor, and records the outcome. An
actor that dies (node lost, process killed, CUDA fault) gives its job back to the queue (PENDING,
or FAILED once its attempts are spent) and is replaced. Cancelling a job kills its actor. Specs and
outcomes cross to the actors as their JSON. Output paths must be on storage every node mounts at the
same path.
"""

from __future__ import annotations

import logging

from magic141.protocol import EventType

from .events import EventHub
from .queue import JobQueue
from .worker import JobRunner, Outcome, record

log = logging.getLogger("magic141.ray")


class _PipelineActor:
    """A warm ``JobRunner`` on one device of a Ray node."""

    def __init__(self, device: str | None) -> None:
        self.runner = JobRunner(device, previews=False)

    def run(self, job_id: str, spec: dict) -> dict:
        return self.runner.execute(job_id, spec).to_json()

    def ready(self) -> bool:
        return True


class RayDispatcher:
    def __init__(self, queue: JobQueue, *, address: str = "auto", actors: int | None = None,
                 hub: EventHub | None = None) -> None:
        import ray

        self.ray = ray
        if not ray.is_initialized():
            # "auto": join a running cluster if this machine is part of one, else start a local one.
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False)
            except ConnectionError:
                if address != "auto":
                    raise
                ray.init(include_dashboard=False, log_to_driver=False)
        gpus = int(ray.cluster_resources().get("GPU", 0))
        self.use_gpus = gpus > 0
        self.size = actors or max(1, gpus)
        self.queue = queue
        self.hub = hub or EventHub()
        self.actors = [self._new_actor() for _ in range(self.size)]
        self.running: dict = {}  # object ref -> (actor, job id)

    def _new_actor(self):
        options = {"num_gpus": 1} if self.use_gpus else {"num_cpus": 1}
        cls = self.ray.remote(**options)(_PipelineActor)
        return cls.remote("cuda" if self.use_gpus else "cpu")

    def _dispatch(self, idle: list) -> None:
        while idle:
            job = self.queue.claim(f"ray:{len(self.running)}")
            if job is None:
                return
            actor = idle.pop()
            self.hub.publish(job.id, EventType.STARTED, attempt=job.attempts, worker="ray")
            self.running[actor.run.remote(job.id, job.spec)] = (actor, job.id)

    def drain(self, poll: float = 0.5) -> int:
        """Run until no job is pending or running; returns how many jobs ended here."""
        finished = 0
        idle = list(self.actors)
        self._dispatch(idle)
        while self.running:
            done, _ = self.ray.wait(list(self.running), num_returns=1, timeout=poll)
            for ref in done:
                actor, job_id = self.running.pop(ref)
                try:
                    data = self.ray.get(ref)
                except (self.ray.exceptions.RayActorError, self.ray.exceptions.WorkerCrashedError) as exc:
                    log.warning("actor running %s died: %s; the job goes back to the queue", job_id, exc)
                    self.queue.give_back(job_id)
                    self.actors.remove(actor)
                    actor = self._new_actor()
                    self.actors.append(actor)
                else:
                    record(self.queue, self.hub, job_id, Outcome.from_json(data))
                    finished += 1
                idle.append(actor)
            for actor, job_id in list(self.running.values()):
                if self.queue.is_cancel_requested(job_id):
                    # Stop now: the actor dies, its job ends CANCELLED via give_back, a new actor follows.
                    self.ray.kill(actor)
            self._dispatch(idle)
        return finished
