"""Studio farms: a queued job as an Open Job Description template, and the command a farm node runs.

``magic141 farm template ID --out DIR`` writes a job bundle, the layout AWS Deadline Cloud
submits (``deadline bundle submit DIR``) and any OpenJD tool reads::

    DIR/template.yaml          an OpenJD ``jobtemplate-2023-09`` template (``openjd check`` passes)
    DIR/parameter_values.yaml  this job's values: ``parameterValues: [{name, value}, ...]``

The template's one step runs ``magic141 farm run`` on a node::

    parameterDefinitions  Magic141Command (STRING: the executable on the node)
                          SourceMedia     (PATH, FILE, dataFlow IN: the plate or image)
                          OutputDir       (PATH, DIRECTORY, dataFlow OUT: where the clip lands)
                          Device          (STRING: auto, cuda, cuda:1, cpu)
    steps[0] Generate     embedded file Spec = the job spec JSON, onRun = magic141 farm run ...

Traps avoided:
- Submit-side and node-side paths differ (``/Volumes/show`` vs ``/mnt/show``). The media and output
  paths are PATH job parameters, so the scheduler's path mapping rewrites them; they reach the node
  as command arguments, never only inside the embedded JSON (a mapped Windows path with
  backslashes would not even be valid JSON there).
- OpenJD allows only *relative* defaults for PATH parameters (joined to the template's folder, and
  never above it), so absolute paths go in ``parameter_values.yaml``, not in the template.
- OpenJD reads ``{{ ... }}`` in names, arguments and embedded files as format strings; a prompt
  containing ``{{`` is refused rather than silently mangled.
- Cancelling on the farm sends SIGTERM (``NOTIFY_THEN_TERMINATE``): ``farm run`` turns it into
  the engine's cancel token, so the step loop stops within one step and no partial file is left.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from magic141 import atomic
from magic141.errors import InvalidInput
from magic141.protocol import BUILTIN_MODELS, JobSpec, JobState, Source

OPENJD_VERSION = "jobtemplate-2023-09"
STEP = "Generate"
EXIT_FAILED, EXIT_CANCELLED = 1, 130
NOTIFY_SECONDS = 30


def _check_text(field: str, text: str) -> str:
    if "{{" in text or "}}" in text:
        raise InvalidInput("contains '{{' or '}}', which Open Job Description reads as a format string",
                           field=field)
    return text


def job_template(spec: JobSpec, job_id: str, *, command: str = "magic141", gpus: int | None = None,
                 timeout_s: int = 6 * 3600) -> tuple[dict, dict[str, str]]:
    """The OpenJD job template (a plain dict, ready for YAML or JSON) that runs ``spec`` on a node,
    and the values of its PATH parameters for this job.

    ``gpus`` GPUs are required of the node (default: 1 unless the model is built in)."""
    job_id = _check_text("job_id", job_id)
    data = spec.to_json()
    for name, value in [*data.items(), *((f"source.{key}", value) for key, value in data["source"].items())]:
        if isinstance(value, str):
            _check_text(name, value)
    spec_text = json.dumps(data, indent=2, sort_keys=True)
    title = " ".join(spec.prompt.split())
    title = title if len(title) <= 60 else title[:57] + "..."
    name = f"magic141 {job_id}: {title}"
    parameters: list[dict] = [
        {"name": "Magic141Command", "type": "STRING", "default": command,
         "description": "The magic141 executable on the farm node (a path, or a name on its PATH)."},
        {"name": "OutputDir", "type": "PATH", "objectType": "DIRECTORY", "dataFlow": "OUT",
         "description": "Where the generated clip is written."},
        {"name": "Device", "type": "STRING", "default": "auto", "minLength": 1,
         "description": "auto (the node's GPU when it has one), cuda, cuda:1 or cpu."},
    ]
    args = ["farm", "run", "{{Task.File.Spec}}", "--id", job_id, "--output-dir", "{{Param.OutputDir}}",
            "--device", "{{Param.Device}}"]
    values = {"OutputDir": spec.output_dir}
    if spec.source.path is not None:
        parameters.insert(1, {"name": "SourceMedia", "type": "PATH", "objectType": "FILE", "dataFlow": "IN",
                              "description": "The plate or image the clip continues from."})
        values["SourceMedia"] = spec.source.path
        args += ["--source", "{{Param.SourceMedia}}"]
    step: dict = {
        "name": STEP,
        "script": {
            "embeddedFiles": [{"name": "Spec", "type": "TEXT", "filename": "magic141-job.json",
                               "data": spec_text}],
            "actions": {"onRun": {
                "command": "{{Param.Magic141Command}}", "args": args, "timeout": int(timeout_s),
                "cancelation": {"mode": "NOTIFY_THEN_TERMINATE", "notifyPeriodInSeconds": NOTIFY_SECONDS},
            }},
        },
    }
    gpus = (0 if spec.model in BUILTIN_MODELS else 1) if gpus is None else gpus
    if gpus:
        step["hostRequirements"] = {"amounts": [{"name": "amount.worker.gpu", "min": int(gpus)}]}
    template = {
        "specificationVersion": OPENJD_VERSION,
        "name": name,
        "description": f"Generated by magic141 from queue job {job_id}.",
        "parameterDefinitions": parameters,
        "steps": [step],
    }
    return template, values


def _yaml(data) -> str:
    import yaml  # PyYAML, a dependency of transformers

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper, value: str):  # the embedded spec stays readable: a literal block, not "\n" escapes
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, text)
    return yaml.dump(data, Dumper=Dumper, sort_keys=False, allow_unicode=True, width=100)


def write_bundle(template: dict, values: dict[str, str], folder: Path) -> Path:
    """Write ``template.yaml`` and ``parameter_values.yaml`` into ``folder`` (created; each file atomic)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InvalidInput(f"cannot write a job bundle to {folder}: it is a file", field="out")
    if not folder.parent.is_dir():
        raise InvalidInput(f"cannot write {folder}: folder {folder.parent} does not exist", field="out")
    folder.mkdir(exist_ok=True)
    atomic.write_text(folder / "template.yaml", _yaml(template))
    listed = [{"name": name, "value": value} for name, value in values.items()]
    atomic.write_text(folder / "parameter_values.yaml", _yaml({"parameterValues": listed}))
    return folder


# Command line ----------------------------------------------------------------------------------


def register(commands: argparse._SubParsersAction) -> None:
    farm = commands.add_parser("farm", help="run jobs on a render farm (Open Job Description)")
    actions = farm.add_subparsers(dest="action", required=True, metavar="ACTION")
    template = actions.add_parser("template",
                                  help="write a queued job (or a spec file) as an OpenJD job template")
    template.add_argument("id", nargs="?", help="a job id in the queue")
    template.add_argument("--spec", type=Path, help="a job spec JSON file instead of a queued job")
    template.add_argument("--home", help="state directory of the queue (default: $MAGIC141_HOME)")
    template.add_argument("--out", type=Path, required=True, help="job bundle folder (created)")
    template.add_argument("--command", default="magic141", help="the magic141 executable on the nodes")
    template.add_argument("--gpus", type=int, help="GPUs a node needs (default: 1, or 0 for the tiny model)")
    template.set_defaults(handler=run_template)

    run = actions.add_parser("run", help="run one job spec here and exit (what a farm node runs)")
    run.add_argument("spec", type=Path)
    run.add_argument("--id", default="farm", help="the job id (names the output when the spec does not)")
    run.add_argument("--source",
                     help="the source media or image here (replaces the spec's, after path mapping)")
    run.add_argument("--output-dir", help="the output folder here (replaces the spec's)")
    run.add_argument("--device", default="auto", help="auto, cuda, cuda:1 or cpu")
    run.set_defaults(handler=run_farm_job)


def run_template(args: argparse.Namespace) -> int:
    if (args.id is None) == (args.spec is None):
        raise InvalidInput("give a queued job's id or a job spec file (one of them)", field="id")
    if args.spec is not None:
        from .queue_cli import read_spec

        spec, job_id = read_spec(args.spec), args.spec.stem
    else:
        from .client import EngineClient

        job = EngineClient(args.home).connect().job(args.id)
        spec, job_id = JobSpec.from_json(job["spec"]), job["id"]
    template, values = job_template(spec, job_id, command=args.command, gpus=args.gpus)
    print(write_bundle(template, values, args.out.resolve()))
    return 0


def run_farm_job(args: argparse.Namespace) -> int:
    """Run one spec in this process; print the result JSON. Exit 0 done, 1 failed, 130 cancelled."""
    from magic141.engine.pipeline_output import CancelToken, cancelled_by
    from magic141.engine.worker import JobRunner

    from .queue_cli import read_spec

    spec = read_spec(args.spec)
    if args.source is not None:
        if spec.source.kind == "none":
            raise InvalidInput("is given, but the job spec has no source media", field="source")
        here = str(Path(args.source).resolve())
        spec = spec.replace(source=Source(spec.source.kind, here, spec.source.time))
    if args.output_dir is not None:
        spec = spec.replace(output_dir=str(Path(args.output_dir).resolve()))
    device = None if args.device == "auto" else args.device
    with cancelled_by(signal.SIGTERM, CancelToken()) as cancel:
        outcome = JobRunner(device, previews=False).execute(args.id, spec, cancel=cancel)
    if outcome.state == JobState.DONE and outcome.result is not None:
        print(json.dumps(outcome.result.to_json(), indent=2, sort_keys=True))
        return 0
    if outcome.state == JobState.CANCELLED:
        print("cancelled: nothing was written", file=sys.stderr)
        return EXIT_CANCELLED
    print(f"error: {outcome.error}", file=sys.stderr)
    return EXIT_FAILED
