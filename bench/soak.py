"""Soak: kill -9 the engine service at random moments while two clients submit; nothing may be lost.

    python bench/soak.py [--jobs 30] [--kills 20] [--seed 0]

A fresh ``MAGIC141_HOME``; two client threads submit the jobs (tiny model, 32x48 clips of 0.5 to
1.5 s, random priorities; every sixth is cancelled a moment after it is queued) and restart the
service whenever it is gone, as the panel does. Meanwhile the service is killed with SIGKILL
``--kills`` times: some while it boots, the rest at random moments while it serves. Each kill holds
``start.lock`` (no client can start a service) until the dead service's RUNNING jobs are noted:
those, and only those, may run again. At the end it prints, all of which must be 0:

    jobs lost        acknowledged submissions missing from the queue, or never ended
    jobs run twice   attempts (claims, and "attempt" log lines) beyond 1 + the claims a kill cut short
    partial files    hidden ``.*.partial*`` files left in the output folders
    orphaned media   media whose job is not DONE, or a DONE job without its media
    extra services   moments when more than one service process ran for the home

This is a benchmark, not a test: it takes a few minutes on two cores.
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import re
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from contextlib import closing
from fractions import Fraction
from pathlib import Path

from magic141 import home as home_dir
from magic141.errors import EngineError
from magic141.plugin.client import EngineClient
from magic141.protocol import TERMINAL_STATES, JobSpec, Source

IMAGE = Path(__file__).resolve().parents[1] / "resources" / "samples" / "first_frame.png"
SECONDS = (Fraction(1, 2), Fraction(1), Fraction(3, 2))


def patiently(action, client: EngineClient, tries: int = 20):
    """Do ``action(client)``; if the service is gone (killed), connect (start one) and do it again."""
    for _ in range(tries):
        try:
            return action(client)
        except EngineError:
            try:
                client.connect(wait=120)
            except EngineError:
                time.sleep(0.2)  # the one we waited for was killed while starting: again
    raise SystemExit("soak: a client gave up after 20 tries")


class Soak:
    def __init__(self, root: Path, out: Path, jobs: int, kills: int, rng: random.Random) -> None:
        self.root, self.out, self.jobs, self.kills, self.rng = root, out, jobs, kills, rng
        self.acknowledged: set[str] = set()
        self.cancelled: set[str] = set()
        self.interrupted: set[tuple[str, int]] = set()  # (job, attempt) claims a kill cut short
        self.most_services = 0
        self.submitting = True

    # The two clients ---------------------------------------------------------------------------

    def client(self, number: int) -> None:
        client = EngineClient(self.root)
        rng = random.Random(self.rng.random())
        for i in range(number, self.jobs, 2):
            job_id = f"soak-{i:02d}"
            spec = JobSpec(Source("image", str(IMAGE)), "a red ball rolls", str(self.out / f"c{number}"),
                           seconds=rng.choice(SECONDS), height=32, width=48, seed=i, model="tiny")
            time.sleep(rng.uniform(0, 1.5))  # a user's pace, not a loop's
            patiently(lambda c, s=spec, j=job_id: c.submit(s, job_id=j, priority=rng.randint(0, 2)), client)
            self.acknowledged.add(job_id)
            if i % 6 == 3:
                time.sleep(rng.uniform(0, 2))
                patiently(lambda c, j=job_id: c.cancel(j), client)
                self.cancelled.add(job_id)

    # The killer -------------------------------------------------------------------------------

    def kill_loop(self) -> None:
        watcher = EngineClient(self.root)
        for kill in range(self.kills):
            at_boot = kill % 7 == 3  # a few kills while the service recovers and loads
            if at_boot:  # start one, and kill it once it holds the lock, before it serves
                threading.Thread(target=patiently, args=(lambda c: c.health(), EngineClient(self.root)),
                                 daemon=True).start()
                deadline = time.monotonic() + 60
                while not home_dir.service_pid(self.root) and time.monotonic() < deadline:
                    time.sleep(0.01)
                time.sleep(self.rng.uniform(0, 1.0))
            else:
                patiently(lambda c: c.health(), watcher)  # a serving service (started if none)
                time.sleep(self.rng.uniform(0.3, 4.0))
            self.note_services()
            with home_dir.starting(self.root, time.monotonic() + 300):
                pid = home_dir.service_pid(self.root)
                if pid:
                    os.kill(pid, signal.SIGKILL)
                    wait_gone(pid)
                    # What the dead service was running (a kill at boot finds the last one's still
                    # RUNNING, not recovered yet: the same claims, counted once).
                    self.interrupted.update(self.active_claims())
            print(f"kill {kill + 1:2d}/{self.kills}: pid {pid or '-'}"
                  f"{' (booting)' if at_boot else ''}", file=sys.stderr, flush=True)

    def active_claims(self) -> list[tuple[str, int]]:
        with closing(sqlite3.connect(self.root / "queue.db", timeout=30)) as db:
            sql = "SELECT id, attempts FROM jobs WHERE state IN ('RUNNING', 'CANCELLING')"
            return db.execute(sql).fetchall()

    def note_services(self) -> None:
        self.most_services = max(self.most_services, len(serve_processes(self.root)))

    # The verdict -------------------------------------------------------------------------------

    def report(self, seconds: float) -> int:
        client = EngineClient(self.root)
        deadline = time.monotonic() + 300
        while True:
            self.note_services()
            jobs = {job["id"]: job for job in patiently(lambda c: c.jobs(), client)}
            if all(jobs.get(i, {}).get("state") in TERMINAL_STATES for i in self.acknowledged):
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
        log = (self.root / "logs" / "service.log").read_text()
        logged = collections.Counter(re.findall(r"job (\S+): attempt \d+", log))
        lost = [i for i in self.acknowledged if jobs.get(i, {}).get("state") not in TERMINAL_STATES]
        cut = collections.Counter(job_id for job_id, _ in self.interrupted)
        twice = [i for i, job in jobs.items() if max(job["attempts"], logged[i]) > cut[i] + 1]
        partial = sorted(self.out.rglob(".*.partial*"))
        media = {path for path in self.out.rglob("*") if path.is_file() and not path.name.startswith(".")}
        done_media = {Path(job["result"]["path"]) for job in jobs.values() if job["state"] == "DONE"}
        orphaned = sorted(media - done_media) + sorted(done_media - media)
        states = collections.Counter(job["state"] for job in jobs.values())
        print(f"soak: {len(self.acknowledged)} jobs from 2 clients, {self.kills} kill -9 "
              f"({len(self.interrupted)} cut a job short), {seconds:.0f} s")
        print("final states      " + ", ".join(f"{n} {s}" for s, n in sorted(states.items())))
        reasons = collections.Counter(job["error"] for job in jobs.values() if job["state"] == "FAILED")
        for reason, count in reasons.items():
            print(f"  FAILED x{count}: {reason}")
        print(f"cancel requests   {len(self.cancelled)}; reruns after a kill: "
              f"{sum(job['attempts'] - 1 for job in jobs.values() if job['attempts'] > 1)}")
        for name, found in (("jobs lost", lost), ("jobs run twice", twice), ("partial files", partial),
                            ("orphaned media", orphaned)):
            print(f"{name:<17} {len(found)}" + (f"  {[str(f) for f in found][:5]}" if found else ""))
        print(f"extra services    {max(0, self.most_services - 1)}")
        bad = lost or twice or partial or orphaned or self.most_services > 1
        return 1 if bad else 0


def serve_processes(root: Path) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if b"serve" in argv and str(root).encode() in argv and state != "Z":
            found.append(int(entry.name))
    return found


def wait_gone(pid: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.01)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=30)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root, out = Path(tmp) / "home", Path(tmp) / "out"
        soak = Soak(home_dir.home(root), out, args.jobs, args.kills, random.Random(args.seed))
        start = time.monotonic()
        clients = [threading.Thread(target=soak.client, args=(n,)) for n in range(2)]
        for thread in clients:
            thread.start()
        soak.kill_loop()
        for thread in clients:
            thread.join()
        try:
            return soak.report(time.monotonic() - start)
        finally:
            pid = home_dir.service_pid(root)
            if pid:
                os.kill(pid, signal.SIGTERM)
                wait_gone(pid)


if __name__ == "__main__":
    sys.exit(main())
