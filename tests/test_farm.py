"""Farm job bundles: validated by Open Job Description's own model, then run by its CLI as a node would."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from openjd.model import create_job, decode_job_template, preprocess_job_parameters

from magic141.engine import media
from magic141.errors import InvalidInput
from magic141.plugin import farm

PLATE = Path(__file__).resolve().parents[1] / "resources" / "samples" / "plate.mp4"
BIN = Path(sys.executable).parent


def spec(**extra) -> dict:
    return {"version": 1, "source": {"kind": "media", "path": "/studio/plates/010.mp4", "time": "1001/24"},
            "prompt": "the camera pushes in", "seconds": "1/2", "fps": "24000/1001", "seed": 3, "model": "tiny",
            "output_dir": "/studio/renders", **extra}


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "magic141", *args], capture_output=True, text=True, timeout=300, check=False)


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
        "Magic141Command": "magic141", "SourceMedia": "/studio/plates/010.mp4", "OutputDir": "/studio/renders",
        "Device": "auto"}
    step = job.steps[0]
    assert step.hostRequirements is None  # the tiny model needs no GPU
    embedded = json.loads(step.script.embeddedFiles[0].data)
    assert embedded == spec()  # the node runs exactly the queued spec
    assert step.script.actions.onRun.args[:3] == ["farm", "run", "{{Task.File.Spec}}"]


def test_real_models_ask_for_a_gpu_and_bad_text_is_refused(tmp_path):
    template, _ = farm.job_template(spec(model="/models/magic141"), "j1")
    assert template["steps"][0]["hostRequirements"] == {"amounts": [{"name": "amount.worker.gpu", "min": 1}]}
    decode_job_template(template=template)
    with pytest.raises(farm.FarmError, match="format string"):
        farm.job_template(spec(prompt="a {{Param.X}} sign"), "j1")
    with pytest.raises(InvalidInput, match="seconds"):
        farm.job_template(spec(seconds="-1"), "j1")


@pytest.mark.slow
def test_openjd_runs_the_bundle_like_a_farm_node_with_its_own_paths(tmp_path):
    """Submit side: /studio/...; the node mounts the same storage at tmp_path/node/... (path mapping)."""
    spec_file = tmp_path / "job.json"
    spec_file.write_text(json.dumps(spec(source={"kind": "media", "path": "/studio/plates/010.mp4", "time": "1"})))
    made = cli("farm", "template", "--spec", str(spec_file), "--out", str(tmp_path / "bundle"))
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
    assert (info.frames, info.fps) == (12, media.parse_fps("24000/1001"))
    assert not Path("/studio").exists()


def test_a_failing_job_exits_non_zero_with_one_line(tmp_path):
    spec_file = tmp_path / "job.json"
    spec_file.write_text(json.dumps(spec(output_dir=str(tmp_path))))
    done = cli("farm", "run", str(spec_file), "--source", str(tmp_path / "missing.mp4"), "--device", "cpu")
    assert done.returncode == farm.EXIT_FAILED
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "missing.mp4" in lines[-1]
    assert list(tmp_path.glob("*.mp4")) == []
