"""The CLI contract, run as a user runs it: a real subprocess of the installed console script."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest

from magic141.engine import media
from magic141.engine.pipeline_output import CancelToken, cancelled_by


SAMPLE_IMAGE = Path(__file__).resolve().parents[1] / "resources" / "samples" / "first_frame.png"
MAGIC141 = [sys.executable, "-m", "magic141"]


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*MAGIC141, *args], capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})}
    )


def test_generate_writes_exact_frames_at_an_exact_rational_rate(tmp_path):
    out = tmp_path / "clip.mp4"
    done = run("generate", "--model", "tiny", "--image", str(SAMPLE_IMAGE), "--prompt", "a red ball rolls",
               "--seconds", "1.5", "--fps", "24000/1001", "--seed", "3", "--out", str(out))
    assert done.returncode == 0, done.stderr
    info = media.probe_video(out)
    assert info.fps == Fraction(24000, 1001)
    assert info.frames == round(Fraction(3, 2) * Fraction(24000, 1001)) == 36
    assert "wrote" in done.stdout and str(out) in done.stdout
    assert "window 2/2" in done.stderr and "4/4" in done.stderr  # progress bars (36 frames: two tiny windows)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]  # no temp files left


def test_same_seed_same_frames_and_prores(tmp_path):
    args = ["generate", "--model", "tiny", "--image", str(SAMPLE_IMAGE), "--prompt", "waves", "--seconds", "0.5",
            "--seed", "11"]
    a, b = tmp_path / "a.mov", tmp_path / "b.mov"
    assert run(*args, "--out", str(a)).returncode == 0
    assert run(*args, "--out", str(b), "--codec", "prores").returncode == 0
    assert media.probe_video(a).codec == "prores"
    assert (media.read_frames(a) == media.read_frames(b)).all()


def test_generate_without_image_runs_text_to_image_first(tmp_path):
    out = tmp_path / "t2v.mp4"
    done = run("generate", "--model", "tiny", "--prompt", "a blue square", "--seconds", "0.5", "--out", str(out),
               "--json")
    assert done.returncode == 0, done.stderr
    assert media.probe_video(out).frames == 12
    assert '"frames": 12' in done.stdout


def test_long_video_reports_windows(tmp_path):
    out = tmp_path / "long.mp4"
    done = run("generate", "--model", "tiny", "--image", str(SAMPLE_IMAGE), "--prompt", "drift", "--seconds", "3",
               "--fps", "25", "--height", "32", "--width", "48", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "window 1/3" in done.stderr and "window 3/3" in done.stderr
    assert media.probe_video(out).frames == 75


def test_info_describes_the_model():
    done = run("info", "--model", "tiny")
    assert done.returncode == 0, done.stderr
    for word in ("HunyuanVideoTransformer3DModel", "33", "parameters", "float32", "GiB"):
        assert word in done.stdout


@pytest.mark.parametrize(
    "args,message",
    [
        (["--image", "missing.png"], "missing.png"),
        (["--image", "{notimage}"], "notimage.png"),
        (["--seconds", "0"], "--seconds"),
        (["--seconds", "-2"], "--seconds"),
        (["--fps", "24/0"], "--fps"),
        (["--fps", "fast"], "--fps"),
        (["--height", "33"], "--height"),
        (["--width", "50", "--height", "32"], "--width"),
        (["--model", "nowhere/model"], "nowhere/model"),
    ],
)
def test_bad_input_is_one_clear_line_and_leaves_nothing(tmp_path, args, message):
    bad = tmp_path / "notimage.png"
    bad.write_bytes(b"this is not a png")
    args = [a.replace("{notimage}", str(bad)) for a in args]
    out = tmp_path / "out" / "x.mp4"
    out.parent.mkdir()
    base = {"--image": str(SAMPLE_IMAGE), "--prompt": "x", "--seconds": "0.5", "--out": str(out)}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    done = run("generate", *[item for pair in base.items() for item in pair])
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert "Traceback" not in done.stderr
    assert message in lines[-1]
    assert list(out.parent.iterdir()) == []


def test_source_media_is_never_overwritten(tmp_path):
    plate = tmp_path / "plate.mp4"
    assert run("generate", "--image", str(SAMPLE_IMAGE), "--prompt", "x", "--seconds", "0.5",
               "--out", str(plate)).returncode == 0
    before = plate.read_bytes()
    done = run("generate", "--image", str(plate), "--prompt", "x", "--seconds", "0.5", "--out", str(plate))
    assert done.returncode == 2 and "source" in done.stderr.splitlines()[-1]
    assert plate.read_bytes() == before


def test_interrupted_run_leaves_no_partial_file(tmp_path):
    """A run killed while writing leaves neither the output nor a temporary file in place."""
    out = tmp_path / "killed.mp4"
    proc = subprocess.Popen(
        [*MAGIC141, "generate", "--model", "tiny", "--image", str(SAMPLE_IMAGE), "--prompt", "x", "--seconds", "30",
         "--height", "32", "--width", "48", "--out", str(out)],
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
    assert subprocess.run([str(script), "--version"], capture_output=True, text=True).stdout.startswith("magic141")


def test_no_generic_top_level_names_are_installed():
    """engine/ui/plugin install as magic141.*: a host's `import engine` must not find ours."""
    probe = "import importlib.util as u; print([n for n in ('engine', 'ui', 'plugin') if u.find_spec(n)])"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=Path("/"))
    assert done.stdout.strip() == "[]"


def test_job_that_cannot_fit_is_refused_with_the_figures(tmp_path):
    out = tmp_path / "big.mp4"
    done = run("generate", "--model", "tiny", "--image", str(SAMPLE_IMAGE), "--prompt", "x", "--seconds", "1",
               "--out", str(out), env={"MAGIC141_MEMORY_LIMIT_GB": "0.01"})
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: this job needs about") and "GiB" in last and "MAGIC141_MEMORY_LIMIT_GB" in last
    assert list(tmp_path.iterdir()) == []


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
        failing = run("queue", "add", "--image", str(tmp_path / "gone.png"), "--prompt", "x", "--seconds", "1",
                      "--height", "32", "--width", "48", env=env).stdout.strip()
        watched = run("queue", "watch", failing, env=env)
        assert watched.returncode == 1 and "gone.png" in watched.stderr
        assert run("queue", "cancel", "nope", env=env).returncode == 2
    finally:
        from magic141 import home as home_dir
        info = home_dir.read_service(tmp_path / "home")
        if info:
            os.kill(info["pid"], 9)


def test_queue_run_drains_without_a_service(tmp_path):
    from magic141.engine.queue import JobQueue

    home = tmp_path / "home"
    home.mkdir()
    with JobQueue(home / "queue.db") as queue:
        for seed in range(2):
            queue.submit({"version": 1, "source": {"kind": "image", "path": str(SAMPLE_IMAGE)}, "prompt": "x",
                          "seconds": "1/2", "height": 32, "width": 48, "seed": seed, "output_dir": str(tmp_path)})
    done = run("queue", "run", env={"MAGIC141_HOME": str(home)})
    assert done.returncode == 0 and "ran 2 jobs; 2 done" in done.stdout
    assert len(list(tmp_path.glob("magic141_*.mp4"))) == 2


def test_the_panel_side_never_imports_torch():
    """Every module of magic141.plugin and magic141.ui (but the add-ons that run inside a host's own
    Python, e.g. Blender's), and the engine modules they use."""
    probe = """
import importlib, pkgutil, sys
import magic141.plugin, magic141.ui
names = ["magic141.cli", "magic141.engine.jobspec", "magic141.engine.queue", "magic141.engine.events",
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
