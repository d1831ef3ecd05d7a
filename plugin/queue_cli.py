"""``magic141 queue ...``: the render queue from the command line, through the engine service.

``add``, ``list``, ``cancel``, ``retry``, ``pause``, ``resume`` and ``watch`` talk to the service
(started if none is running); ``run`` drains the queue in this process and exits;
``from-timeline`` queues one job per ``magic141:`` clip marker (see ``markers.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from magic141.protocol import JobSpec

EXIT_JOB_FAILED = 1


def register(commands: argparse._SubParsersAction) -> None:
    from magic141 import cli_args
    from magic141.cli_args import QUANT_CHOICES
    from magic141.engine.cli import add_job_options, add_lora_option
    from magic141.protocol import DEFAULT_MODEL, SPEC_VERSION

    queue = commands.add_parser("queue", help="the persistent render queue")
    queue.add_argument("--home", help="state directory (default: $MAGIC141_HOME or the user data folder)")
    actions = queue.add_subparsers(dest="action", required=True, metavar="ACTION")

    add = actions.add_parser("add",
                             help="queue a job (the options of generate, or --spec FILE); prints its id")
    add.add_argument("--spec", type=Path,
                     help=f"a job spec JSON file (version {SPEC_VERSION} or older) instead of the options")
    add.add_argument("--id", help="job id (submitting the same id and spec again is a no-op)")
    add.add_argument("--priority", type=int, default=0)
    add.add_argument("--model", default=DEFAULT_MODEL)
    add.add_argument("--quant", choices=QUANT_CHOICES, default="none")
    add.add_argument("--media", type=Path, help="a video to start from, with --at")
    add.add_argument("--at", help="time in --media, in seconds (exact: 1001/24 or 2.5)")
    add_job_options(add, out_required=False)
    add_lora_option(add)
    for action in add._actions:  # with --spec, the prompt comes from the file
        if action.dest == "prompt":
            action.required = False
    add.set_defaults(handler=run_add)

    actions.add_parser("list", help="one line per job: id, state, progress").set_defaults(handler=run_list)
    for name, helptext in (("cancel", "cancel a job"), ("retry", "queue a failed or cancelled job again")):
        sub = actions.add_parser(name, help=helptext)
        sub.add_argument("id")
        sub.set_defaults(handler=run_job_action, verb=name)
    actions.add_parser("pause", help="finish the running job, start no new one").set_defaults(
        handler=run_pause, paused=True)
    actions.add_parser("resume", help="start jobs again").set_defaults(handler=run_pause, paused=False)
    watch = actions.add_parser("watch", help="live progress; with an ID, exit 0 when it is done, 1 otherwise")
    watch.add_argument("id", nargs="?")
    watch.set_defaults(handler=run_watch)
    run = actions.add_parser("run", help="run queued jobs in this process until none is left, then exit")
    run.add_argument("--device")
    run.add_argument("--ray", metavar="auto|ADDRESS", help="spread jobs over Ray actors, one GPU each")
    run.add_argument("--actors", type=int, help="with --ray: how many actors (default: one per GPU)")
    run.set_defaults(handler=run_drain)
    marks = actions.add_parser("from-timeline",
                               help="queue one job per clip marker named 'magic141: <prompt>'")
    marks.add_argument("timeline", help=".otio, .otioz, .otiod or any timeline OTIO's adapters read")
    marks.add_argument("--apply", action="store_true",
                       help="wait, then put every result right after its marked clip and save the timeline")
    marks.add_argument("--out", help="with --apply: save here (default: in place, keeping NAME.bak)")
    marks.add_argument("--mode", choices=("insert", "overwrite", "newtrack"), default="insert")
    marks.add_argument("--seconds", type=cli_args.seconds, default=Fraction(5),
                       help="where a marker has no seconds=")
    marks.add_argument("--seed", type=cli_args.seed, default=0, help="where a marker has no seed=")
    marks.add_argument("--model", default=DEFAULT_MODEL)
    marks.add_argument("--quant", choices=QUANT_CHOICES, default="none")
    marks.add_argument("--steps", type=cli_args.positive("steps"))
    marks.add_argument("--priority", type=int, default=0)
    marks.set_defaults(handler=run_from_timeline)


def _client(args):
    from .client import EngineClient

    return EngineClient(args.home).connect()


def read_spec(path: Path) -> JobSpec:
    """A job spec JSON file (``--spec``); its errors name the file, then the field at fault."""
    from magic141.errors import InvalidInput
    from magic141.protocol import JobSpec

    try:
        return JobSpec.from_json(json.loads(Path(path).read_text()))
    except (OSError, ValueError) as exc:  # InvalidInput is a ValueError
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise InvalidInput(f"{path}: {reason}", field="spec") from exc


def spec_from_args(args: argparse.Namespace) -> JobSpec:
    """The job ``queue add`` asks for: the ``--spec`` file, or the options (output: ``--out``, else the
    engine's ``outputs/`` folder)."""
    from magic141 import home as home_dir
    from magic141.engine.cli import spec_loras
    from magic141.errors import InvalidInput
    from magic141.protocol import JobSpec, Source, codec_for, model_field
    from magic141.rational import parse_rational

    if args.spec is not None:
        return read_spec(args.spec)
    if args.prompt is None:
        raise InvalidInput("is required (or give a job spec file)", field="prompt")
    if args.media is not None:
        if args.at is None:
            raise InvalidInput("is required with a video to start from: seconds into it", field="at")
        source = Source("media", str(args.media.resolve()), parse_rational(args.at, "at", minimum=0))
    elif args.image is not None:
        source = Source("image", str(args.image.resolve()))
    else:
        source = Source("none")
    if args.out is not None:
        out = args.out.resolve()
        where = {"output_dir": str(out.parent), "output_name": out.name, "codec": codec_for(out, args.codec)}
    else:
        where = {"output_dir": str(home_dir.home(args.home) / "outputs"), "codec": args.codec or "h264"}
    return JobSpec(
        source=source, prompt=args.prompt, seconds=args.seconds, fps=args.fps, seed=args.seed,
        model=model_field(args.model), quant=args.quant, steps=args.steps, height=args.height,
        width=args.width, shift=args.shift, guidance=args.cfg, negative_prompt=args.negative_prompt,
        conditioning=args.conditioning, window_overlap=args.window_overlap, loras=spec_loras(args), **where)


def run_add(args) -> int:
    job = _client(args).submit(spec_from_args(args), job_id=args.id, priority=args.priority)
    print(job["id"])
    return 0


def _line(job: dict) -> str:
    progress = job.get("progress") or {}
    where = ""
    if job["state"] in ("RUNNING", "CANCELLING") and progress:
        where = f" step {progress['step']}/{progress['total']}"
        if progress.get("windows", 1) > 1:
            where += f" window {progress['window']}/{progress['windows']}"
    detail = job.get("error") or (job.get("result") or {}).get("path") or job["spec"].get("prompt", "")
    return f"{job['id']}  {job['state']:<10}{where}  {detail}"


def run_list(args) -> int:
    for job in _client(args).jobs():
        print(_line(job))
    return 0


def run_job_action(args) -> int:
    from magic141.errors import EngineError

    try:
        job = getattr(_client(args), args.verb)(args.id)
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(_line(job))
    return 0


def run_pause(args) -> int:
    client = _client(args)
    state = client.request("POST", "/v1/queue/pause" if args.paused else "/v1/queue/resume")
    print("paused" if state["paused"] else "running")
    return 0


def run_watch(args) -> int:
    from tqdm import tqdm

    from magic141.errors import EngineError
    from magic141.protocol import EventType

    client = _client(args)
    bars: dict[str, tqdm] = {}
    try:
        if args.id:
            job = client.job(args.id)  # 404 -> a clear error
            print(_line(job), file=sys.stderr)
        for event in client.events(args.id):
            key = event.job
            if event.type == EventType.STEP:
                label = f"{key[:8]} window {event.window}/{event.windows}"
                bar = bars.get(key)
                if bar is None or bar.desc != label:
                    if bar is not None:
                        bar.close()
                    bar = bars[key] = tqdm(total=event.total, desc=label, unit="step", file=sys.stderr)
                bar.n = event.step or 0
                bar.refresh()
                continue
            if key in bars and event.type != EventType.STARTED:
                bars.pop(key).close()
            detail = event.reason or (event.result.path if event.result else "")
            print(f"{key}  {event.type.value}  {detail}".rstrip(), file=sys.stderr)
            if args.id and event.type.terminal:
                return 0 if event.type == EventType.FINISHED else EXIT_JOB_FAILED
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


def run_from_timeline(args) -> int:
    from .markers import queue_from_timeline

    report = queue_from_timeline(
        args.timeline, lambda: _client(args), apply=args.apply, out=args.out, mode=args.mode,
        seconds=args.seconds, seed=args.seed, model=args.model, quant=args.quant, steps=args.steps,
        priority=args.priority, say=lambda line: print(line, file=sys.stderr if args.apply else sys.stdout))
    if args.apply:
        for ident, reason in report.failed.items():
            print(f"error: job {ident} did not finish: {reason}", file=sys.stderr)
        where = f"; timeline saved to {report.saved}" if report.saved else "; timeline unchanged"
        print(f"{len(report.added)} clips added, {len(report.skipped)} already in the timeline, "
              f"{len(report.failed)} failed{where}")
    return EXIT_JOB_FAILED if report.failed else 0


def run_drain(args) -> int:
    from magic141 import home as home_dir
    from magic141.engine.queue import JobQueue
    from magic141.engine.worker import Worker
    from magic141.errors import EngineError

    root = home_dir.home(args.home)
    lock = home_dir.ServiceLock(root)
    if not lock.acquire():  # a service runs this queue: recovering would take its running jobs
        raise EngineError(f"the engine service (pid {home_dir.service_pid(root) or 'unknown'}) runs this "
                          "queue; stop it first, or let it run the jobs")
    with lock, JobQueue(root / "queue.db") as queue:
        queue.recover()  # jobs a dead engine left RUNNING
        if args.ray:
            from magic141.engine.ray_dispatch import RayDispatcher

            ran = RayDispatcher(queue, address=args.ray, actors=args.actors).drain()
        else:
            ran = Worker(queue, device=args.device, previews=False).drain()
        counts = queue.counts()
    print(f"ran {ran} jobs; {counts['DONE']} done, {counts['FAILED']} failed, {counts['CANCELLED']} "
          "cancelled in all")
    return 0
