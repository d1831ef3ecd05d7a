"""Engine service: cold vs warm job latency (tiny model) and queue throughput.

    python bench/service.py [--jobs 40]

Starts a fresh service in a temporary MAGIC141_HOME. Cold = the first job, which loads the model;
warm = the median of the next five. Throughput: submissions per second with the queue paused
(HTTP + SQLite only), then completed jobs per second once resumed (tiny 0.5 s clips at 32x48).
CPU figures vary by machine: compare the ratios.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import tempfile
import time
from fractions import Fraction
from pathlib import Path

from magic141 import home as home_dir
from magic141.plugin.client import EngineClient
from magic141.protocol import EventType, JobSpec, Source

IMAGE = Path(__file__).resolve().parents[1] / "resources" / "samples" / "first_frame.png"


def job_spec(out: Path, seed: int) -> JobSpec:
    return JobSpec(Source("image", str(IMAGE)), "a red ball rolls", str(out), seconds=Fraction(1, 2),
                   height=32, width=48, seed=seed, model="tiny")


def run_job(client: EngineClient, out: Path, seed: int) -> float:
    start = time.perf_counter()
    job = client.submit(job_spec(out, seed))
    last = list(client.events(job["id"]))[-1]
    assert last.type == EventType.FINISHED, last
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root, out = Path(tmp) / "home", Path(tmp) / "out"
        start = time.perf_counter()
        client = EngineClient(root).connect()
        startup = time.perf_counter() - start
        try:
            cold = run_job(client, out, 0)
            warm = statistics.median(run_job(client, out, seed) for seed in range(1, 6))
            client.request("POST", "/v1/queue/pause")
            start = time.perf_counter()
            ids = [client.submit(job_spec(out, 100 + i))["id"] for i in range(args.jobs)]
            submit_rate = args.jobs / (time.perf_counter() - start)
            start = time.perf_counter()
            client.request("POST", "/v1/queue/resume")
            while any(client.job(i)["state"] != "DONE" for i in ids[-1:]):
                time.sleep(0.05)
            complete_rate = args.jobs / (time.perf_counter() - start)
        finally:
            os.kill(home_dir.read_service(root)["pid"], signal.SIGTERM)
    print(f"service start            {startup:8.2f} s")
    print(f"cold job (loads model)   {cold:8.2f} s")
    print(f"warm job (median of 5)   {warm:8.2f} s   cold/warm = {cold / warm:.1f}x")
    print(f"submit throughput        {submit_rate:8.1f} jobs/s (queue paused)")
    print(f"complete throughput      {complete_rate:8.2f} jobs/s (0.5 s 48x32 clips)")


if __name__ == "__main__":
    main()
