"""The CLI contract. Commands run in-process (``magic141.cli.main``, as the console script calls it)
where the process itself is not the point; Ctrl-C, the console script and the service run as real
subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest
from conftest import stop_service

from magic141.cli import main
from magic141.engine import media
from magic141.engine.pipeline_output import CancelToken, cancelled_by
from magic141.protocol import RESULT_VERSION

SAMPLE_IMAGE = Path(__file__).resolve().parents[1] / "resources" / "samples" / "first_frame.png"
MAGIC141 = [sys.executable, "-m", "magic141"]


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*MAGIC141, *args], capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})}
    )


@pytest.fixture
def cli(capsys):
    """``magic141 ARGS`` in this process: (exit status, stdout, stderr)."""

    def invoke(*args: str) -> tuple[int, str, str]:
        try:
            status = main(list(args))
        except SystemExit as exc:  # argparse's refusals
            status = exc.code
        out, err = capsys.readouterr()
        return status, out, err

    return invoke


def test_generate_writes_exact_frames_at_an_exact_rational_rate(tmp_path, cli):
    out = tmp_path / "clip.mp4"
    status, stdout, stderr = cli("generate", "--model", "tiny", "--image", str(SAMPLE_IMAGE), "--prompt",
                                 "a red ball rolls", "--seconds", "1.5", "--fps", "24000/1001", "--seed", "3",
                                 "--height", "32", "--width", "48", "--out", str(out))
    assert status == 0, stderr
    info = media.probe_video(out)
    assert info.fps == Fraction(24000, 1001)
    assert info.frames == round(Fraction(3, 2) * Fraction(24000, 1001)) == 36
    assert "wrote" in stdout and str(out) in stdout and "24000/1001 fps" in stdout
    assert "window 2/2" in stderr and "4/4" in stderr  # progress bars (36 frames: two tiny windows)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]  # no temp files left


def test_same_seed_same_frames_and_prores(tmp_path, cli):
    # The default 64x96: prores_ks encodes 48x32 frames differently from run to run (seen with PyAV 18).
    args = ["generate", "--model", "tiny", "--image", str(SAMPLE_IMAGE), "--prompt", "waves",
            "--seconds", "0.25", "--seed", "11"]
    a, b = tmp_path / "a.mov", tmp_path / "b.mov"
    assert cli(*args, "--out", str(a))[0] == 0
    assert cli(*args, "--out", str(b), "--codec", "prores")[0] == 0
    assert media.probe_video(a).codec == "prores"
    assert (media.read_frames(a) == media.read_frames(b)).all()


def test_generate_without_image_runs_text_to_image_first(tmp_path, cli):
    out = tmp_path / "t2v.mp4"
    status, stdout, stderr = cli("generate", "--model", "tiny", "--prompt", "a blue square",
                                 "--seconds", "0.5", "--height", "32", "--width", "48", "--out", str(out),
                                 "--json")
    assert status == 0, stderr
    assert media.probe_video(out).frames == 12
    result = json.loads(stdout)  # the versioned result JSON
    assert (result["version"], result["frames"], result["fps"], result["path"]) == (RESULT_VERSION, 12, "24",
                                                                                   str(out))


@pytest.mark.slow
def test_long_video_reports_windows(tmp_path, cli):
    out = tmp_path / "long.mp4"
    status, _, stderr = cli("generate", "--model", "tiny", "--image", str(SAMPLE_IMAGE), "--prompt", "drift",
                            "--seconds", "3", "--fps", "25", "--height", "32", "--width", "48",
                            "--out", str(out))
    assert status == 0, stderr
    assert "window 1/3" in stderr and "window 3/3" in stderr
    assert media.probe_video(out).frames == 75


def test_info_describes_the_model(cli):
    status, stdout, stderr = cli("info", "--model", "tiny")
    assert status == 0, stderr
    for word in ("HunyuanVideoTransformer3DModel", "33", "parameters", "float32", "GiB"):
        assert word in stdout


def test_info_says_the_world_model_runs_its_teacher(cli):
    """The shipped world model samples like a distilled one (4 steps, no CFG) but its transformer/ is
    the teacher (its magic141.json says so): info must say what runs."""
    status, stdout, stderr = cli("info", "--model", "world")
    assert status == 0, stderr
    model = stdout.splitlines()[0]
    assert "teacher weights, not distilled" in model and "distilled weights" not in model
    assert "4 steps, CFG 1" in stdout


@pytest.mark.parametrize(
    "args,message",
    [
        (["--image", "missing.png"], "missing.png"),
        (["--image", "{notimage}"], "notimage.png"),
        (["--seconds", "0"], "--seconds"),
        (["--seconds", "-2"], "--seconds"),
        (["--fps", "24/0"], "--fps"),
        (["--fps", "fast"], "--fps"),
        (["--height", "33"], "error: --height: must be a multiple of 16"),
        (["--height", "24"], "error: --height: must be a multiple of 16"),  # as the README says: not 8
        (["--width", "50", "--height", "32"], "error: --width: "),
        (["--cfg", "0.5"], "error: --cfg: must be a number >= 1"),  # the field is "guidance"
        (["--model", "nowhere/model"], "error: --model: 'nowhere/model' is neither"),
        (["--out", "{nowhere}"], "error: --out: the folder {nowhere_folder} does not exist"),
    ],
)
def test_bad_input_is_one_clear_line_and_leaves_nothing(tmp_path, cli, args, message):
    bad = tmp_path / "notimage.png"
    bad.write_bytes(b"this is not a png")
    nowhere = tmp_path / "no" / "such" / "x.mp4"
    fill = {"{notimage}": str(bad), "{nowhere}": str(nowhere), "{nowhere_folder}": str(nowhere.parent)}
    for key, value in fill.items():
        args = [a.replace(key, value) for a in args]
        message = message.replace(key, value)
    out = tmp_path / "out" / "x.mp4"
    out.parent.mkdir()
    base = {"--model": "tiny", "--image": str(SAMPLE_IMAGE), "--prompt": "x", "--seconds": "0.5",
            "--out": str(out)}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value
    status, _, stderr = cli("generate", *[item for pair in base.items() for item in pair])
    assert status == 2
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr
    assert message in lines[-1]
    assert list(out.parent.iterdir()) == []
    assert not (tmp_path / "no").exists()  # a mistyped folder is refused, never made


def test_source_media_is_never_overwritten(tmp_path, cli):
    plate = tmp_path / "plate.mp4"
    job = ["generate", "--model", "tiny", "--prompt", "x", "--seconds", "0.25", "--height", "32",
           "--width", "48"]
    assert cli(*job, "--image", str(SAMPLE_IMAGE), "--out", str(plate))[0] == 0
    before = plate.read_bytes()
    status, _, stderr = cli(*job, "--image", str(plate), "--out", str(plate))
    assert status == 2 and "source" in stderr.splitlines()[-1]
    assert plate.read_bytes() == before


@pytest.mark.slow
def test_interrupted_run_leaves_no_partial_file(tmp_path):
    """A run killed while writing leaves neither the output nor a temporary file in place."""
    out = tmp_path / "killed.mp4"
    proc = subprocess.Popen(
        [*MAGIC141, "generate", "--model", "tiny", "--image", str(SAMPLE_IMAGE), "--prompt", "x",
         "--seconds", "30", "--height", "32", "--width", "48", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    # Wait for the second window to start: by then the first window's frames are being written.
    for line in iter(proc.stderr.readline, ""):
        if "window 2/" in line:
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "nothing was written" in err.splitlines()[-1]
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_cancels_the_job_and_a_second_one_interrupts_at_once():
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in `magic141` (pytest may differ)
    try:
        token = CancelToken()
        with cancelled_by(signal.SIGINT, token):
            signal.raise_signal(signal.SIGINT)  # the job sees the token at its next step
            assert token.cancelled
            with pytest.raises(KeyboardInterrupt):
                signal.raise_signal(signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, outer)


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "magic141"
    done = subprocess.run([str(script), "--version"], capture_output=True, text=True)
    assert done.stdout.startswith("magic141")


def test_no_generic_top_level_names_are_installed():
    """engine/ui/plugin install as magic141.*: a host's `import engine` must not find ours."""
    probe = "import importlib.util as u; print([n for n in ('engine', 'ui', 'plugin') if u.find_spec(n)])"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=Path("/"))
    assert done.stdout.strip() == "[]"


def test_job_that_cannot_fit_is_refused_with_the_figures(tmp_path, cli, monkeypatch):
    out = tmp_path / "big.mp4"
    monkeypatch.setenv("MAGIC141_MEMORY_LIMIT_GB", "0.01")
    status, _, stderr = cli("generate", "--model", "tiny", "--image", str(SAMPLE_IMAGE), "--prompt", "x",
                            "--seconds", "1", "--out", str(out))
    assert status == 2
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: this job needs about") and "GiB" in last
    assert "MAGIC141_MEMORY_LIMIT_GB" in last
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_queue_commands_through_the_service(tmp_path):
    env = {"MAGIC141_HOME": str(tmp_path / "home")}
    try:
        added = run("queue", "add", "--image", str(SAMPLE_IMAGE), "--prompt", "a ball", "--seconds", "0.5",
                    "--height", "32", "--width", "48", "--out", str(tmp_path / "q.mp4"), env=env)
        assert added.returncode == 0, added.stderr
        job_id = added.stdout.strip()
        watched = run("queue", "watch", job_id, env=env)
        assert watched.returncode == 0 and "finished" in watched.stderr
        assert media.probe_video(tmp_path / "q.mp4").frames == 12
        listed = run("queue", "list", env=env)
        assert f"{job_id}  DONE" in listed.stdout
        failing = run("queue", "add", "--image", str(tmp_path / "gone.png"), "--prompt", "x",
                      "--seconds", "1", "--height", "32", "--width", "48", env=env).stdout.strip()
        watched = run("queue", "watch", failing, env=env)
        assert watched.returncode == 1 and "gone.png" in watched.stderr
        assert run("queue", "cancel", "nope", env=env).returncode == 2
    finally:
        stop_service(tmp_path / "home")


def test_queue_run_drains_without_a_service(tmp_path, cli, monkeypatch):
    from magic141.engine.queue import JobQueue
    from magic141.protocol import JobSpec, Source

    home = tmp_path / "home"
    home.mkdir()
    with JobQueue(home / "queue.db") as queue:
        for seed in range(2):
            spec = JobSpec(Source("image", str(SAMPLE_IMAGE)), "x", str(tmp_path), seconds=Fraction(1, 2),
                           height=32, width=48, seed=seed, model="tiny")
            queue.submit(spec.to_json())
    monkeypatch.setenv("MAGIC141_HOME", str(home))
    status, stdout, stderr = cli("queue", "run")
    assert status == 0 and "ran 2 jobs; 2 done" in stdout, stderr
    assert len(list(tmp_path.glob("magic141_*.mp4"))) == 2


def test_the_panel_side_never_imports_torch():
    """Every module of magic141.plugin and magic141.ui (but the add-ons that run inside a host's own
    Python, e.g. Blender's), and the engine modules they use."""
    probe = """
import importlib, pkgutil, sys
import magic141.plugin, magic141.ui
names = ["magic141.cli", "magic141.protocol", "magic141.engine.queue", "magic141.engine.events",
         "magic141.engine.media"]
for package in (magic141.plugin, magic141.ui):
    names += [m.name for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")
              if ".hosts.blender" not in m.name and ".hosts.resolve" not in m.name]
for name in names:
    importlib.import_module(name)
print(len(names), 'torch' in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    count, torch_loaded = done.stdout.split()
    assert torch_loaded == "False" and int(count) >= 10, done.stderr
