"""Farm job bundles: validated by Open Job Description's own model, then run by its CLI as a node would."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest
import yaml
from openjd.model import create_job, decode_job_template, preprocess_job_parameters

from magic141.cli import main
from magic141.engine import media
from magic141.errors import InvalidInput
from magic141.plugin import farm
from magic141.protocol import JobSpec, Source

PLATE = Path(__file__).resolve().parents[1] / "resources" / "samples" / "plate.mp4"
BIN = Path(sys.executable).parent


def spec(**changes) -> JobSpec:
    return JobSpec(source=Source("media", "/studio/plates/010.mp4", Fraction(1001, 24)),
                   prompt="the camera pushes in", seconds=Fraction(1, 2), fps=Fraction(24000, 1001), seed=3,
                   model="tiny", output_dir="/studio/renders").replace(**changes)


def spec_file(path: Path, job: JobSpec) -> Path:
    path.write_text(json.dumps(job.to_json()))
    return path


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "magic141", *args], capture_output=True, text=True,
                          timeout=300, check=False)


def values(bundle: Path) -> dict[str, str]:
    data = yaml.safe_load((bundle / "parameter_values.yaml").read_text())
    return {item["name"]: item["value"] for item in data["parameterValues"]}


def test_the_bundle_is_a_valid_openjd_job_with_this_jobs_paths(tmp_path):
    bundle = farm.write_bundle(*farm.job_template(spec(), "mk-0123"), tmp_path / "bundle")
    template = decode_job_template(template=yaml.safe_load((bundle / "template.yaml").read_text()))
    parameters = preprocess_job_parameters(job_template=template, job_parameter_values=values(bundle),
                                           job_template_dir=bundle, current_working_dir=tmp_path)
    job = create_job(job_template=template, job_parameter_values=parameters)
    assert job.name == "magic141 mk-0123: the camera pushes in"
    assert {name: value.value for name, value in parameters.items()} == {
        "Magic141Command": "magic141", "SourceMedia": "/studio/plates/010.mp4",
        "OutputDir": "/studio/renders", "Device": "auto"}
    step = job.steps[0]
    assert step.hostRequirements is None  # the tiny model needs no GPU
    embedded = json.loads(step.script.embeddedFiles[0].data)
    assert JobSpec.from_json(embedded) == spec()  # the node runs exactly the queued spec
    assert step.script.actions.onRun.args[:3] == ["farm", "run", "{{Task.File.Spec}}"]


def test_real_models_ask_for_a_gpu_and_bad_text_is_refused(tmp_path, capsys):
    template, _ = farm.job_template(spec(model="/models/magic141"), "j1")
    assert template["steps"][0]["hostRequirements"] == {"amounts": [{"name": "amount.worker.gpu", "min": 1}]}
    decode_job_template(template=template)
    with pytest.raises(InvalidInput, match="format string") as caught:
        farm.job_template(spec(prompt="a {{Param.X}} sign"), "j1")
    assert caught.value.field == "prompt"
    with pytest.raises(InvalidInput, match="format string") as caught:
        farm.job_template(spec(source=Source("image", "/studio/{{x}}.png")), "j1")
    assert caught.value.field == "source.path"
    # a bad spec file is refused here, not on the farm an hour later
    bad = json.loads((spec_file(tmp_path / "job.json", spec())).read_text()) | {"seconds": "-1"}
    (tmp_path / "job.json").write_text(json.dumps(bad))
    assert main(["farm", "template", "--spec", str(tmp_path / "job.json"), "--out", str(tmp_path / "b")]) == 2
    assert "seconds: must be positive" in capsys.readouterr().err and not (tmp_path / "b").exists()


@pytest.mark.slow
def test_openjd_runs_the_bundle_like_a_farm_node_with_its_own_paths(tmp_path):
    """Submit side: /studio/...; the node mounts the same storage at tmp_path/node/... (path mapping)."""
    one_second_in = Source("media", "/studio/plates/010.mp4", Fraction(1))
    job = spec_file(tmp_path / "job.json", spec(source=one_second_in))
    made = cli("farm", "template", "--spec", str(job), "--out", str(tmp_path / "bundle"))
    assert made.returncode == 0, made.stderr
    bundle = Path(made.stdout.strip())
    node = tmp_path / "node"
    (node / "plates").mkdir(parents=True)
    shutil.copy(PLATE, node / "plates" / "010.mp4")
    rules = {"version": "pathmapping-1.0", "path_mapping_rules": [
        {"source_path_format": "POSIX", "source_path": "/studio", "destination_path": str(node)}]}
    params = [f"-p{name}={value}" for name, value in values(bundle).items()]
    done = subprocess.run(
        [str(BIN / "openjd"), "run", str(bundle / "template.yaml"), "--path-mapping-rules", json.dumps(rules),
         f"-pMagic141Command={BIN / 'magic141'}", *params],
        capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "MAGIC141_HOME": str(tmp_path / "home")})
    assert done.returncode == 0 and "Session ended successfully" in done.stdout, done.stdout[-3000:]
    out = node / "renders" / "magic141_job.mp4"
    info = media.probe_video(out)
    assert (info.frames, info.fps) == (12, Fraction(24000, 1001))
    assert not Path("/studio").exists()


@pytest.mark.slow  # loads torch and the tiny model
def test_a_failing_job_exits_non_zero_with_one_line(tmp_path, capsys):
    job = spec_file(tmp_path / "job.json", spec(output_dir=str(tmp_path)))
    status = main(["farm", "run", str(job), "--source", str(tmp_path / "missing.mp4"), "--device", "cpu"])
    assert status == farm.EXIT_FAILED
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("error: ") and "missing.mp4" in lines[-1]
    assert list(tmp_path.glob("*.mp4")) == []
