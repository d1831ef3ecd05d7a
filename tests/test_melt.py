"""Timelines we write play in MLT: ``melt`` (Debian's package) renders them, frame for frame.

The .mlt file goes through OTIO's plugin system (the ``magic141_mlt`` adapter), exactly as
``save_timeline(doc, "cut.mlt")`` or ``otioconvert -o cut.mlt`` would write it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path
from xml.etree import ElementTree as ET

import numpy as np
import opentimelineio as otio
import PIL.Image
import pytest

from magic141.engine import media
from magic141.errors import TimelineError
from magic141.plugin import mlt
from magic141.plugin import timeline as tl

PLATE = Path(__file__).resolve().parents[1] / "resources" / "samples" / "plate.mp4"
NTSC = Fraction(24000, 1001)
RT, TR = otio.opentime.RationalTime, otio.opentime.TimeRange


@pytest.fixture(scope="module")
def melt():
    path = shutil.which("melt")
    if path is None:
        if os.environ.get("MAGIC141_REQUIRE_MELT"):
            pytest.fail("melt is not installed, but MAGIC141_REQUIRE_MELT is set (.ci/run installs it)")
        pytest.skip("melt is not installed (apt-get install melt)")
    return path


def render(melt: str, document: Path, folder: Path) -> np.ndarray:
    """Every frame melt renders, as uint8 [n, H, W, 3] RGB (PNG: nothing lossy after MLT's decode)."""
    folder.mkdir()
    done = subprocess.run([melt, str(document), "-consumer", f"avformat:{folder}/%05d.png", "vcodec=png"],
                          capture_output=True, text=True, timeout=120, cwd="/", check=False)
    frames = sorted(folder.glob("*.png"))
    assert done.returncode == 0 and frames, done.stderr[-2000:]
    return np.stack([np.asarray(PIL.Image.open(path).convert("RGB")) for path in frames]).astype(np.int16)


def difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def ntsc_plate(folder: Path) -> Path:
    """The sample plate re-encoded at 24000/1001, so the whole chain runs at an NTSC rate."""
    path = folder / "plate 2398.mp4"  # a space: file URLs must be decoded, not passed on as %20
    with media.VideoWriter(path, fps=NTSC, codec="h264", width=96, height=64) as writer:
        writer.write(media.read_frames(PLATE))
    return path


def ntsc_timeline(folder: Path, plate: Path) -> Path:
    rate = float(NTSC)
    timeline = otio.schema.Timeline(name="ntsc", global_start_time=RT(86400, rate))  # 01:00:00:00
    track = otio.schema.Track(name="V1")
    for name, start in (("Plate A", 0), ("Plate B", 36)):
        reference = otio.schema.ExternalReference(target_url=plate.resolve().as_uri(),
                                                  available_range=TR(RT(0, rate), RT(72, rate)))
        track.append(otio.schema.Clip(name=name, media_reference=reference,
                                      source_range=TR(RT(start, rate), RT(36, rate))))
    timeline.tracks.append(track)
    path = folder / "ntsc.otio"
    otio.adapters.write_to_file(timeline, str(path))
    return path


@pytest.mark.slow
def test_melt_shows_the_generated_clip_exactly_where_the_timeline_puts_it(tmp_path, melt):
    from magic141.engine.worker import JobRunner
    from magic141.plugin.extend import extend_clip
    from magic141.protocol import JobResult, JobSpec, JobState

    plate = ntsc_plate(tmp_path)
    runner = JobRunner("cpu", previews=False)

    def run_job(job_id: str, spec: JobSpec) -> JobResult:
        outcome = runner.execute(job_id, spec)
        assert outcome.state == JobState.DONE and outcome.result is not None, outcome.reason
        return outcome.result

    result = extend_clip(ntsc_timeline(tmp_path, plate), "Plate A", prompt="a red ball rolls",
                         seconds=Fraction(1, 2), run_job=run_job, out=tmp_path / "cut.mlt", model="tiny")
    assert result.timeline == tmp_path / "cut.mlt" and result.start.to_frames() == 36
    document = ET.parse(result.timeline).getroot()
    profile = document.find("profile")
    rate = (profile.get("frame_rate_num"), profile.get("frame_rate_den"))
    assert rate == ("24000", "1001")  # exact, not 23.976
    generated = media.read_frames(result.media)
    assert len(generated) == 12  # round(1/2 s * 24000/1001)

    frames = render(melt, result.timeline, tmp_path / "frames")
    source = media.read_frames(plate)
    assert len(frames) == 36 + 12 + 36  # Plate A, the new clip, Plate B rippled after it
    # The frame at the new clip's start is the generated media's first frame (codec tolerance: the
    # YUV -> RGB conversions differ by a level or two), and clearly not a frame of the plate.
    assert difference(frames[36], generated[0]) < 3
    nearest = min(difference(frames[36], frame) for frame in source)
    assert nearest > 10 * difference(frames[36], generated[0]) + 5
    assert difference(frames[47], generated[11]) < 3  # ... through its last frame
    assert difference(frames[35], source[35]) < 3  # Plate A's last frame just before it
    assert difference(frames[48], source[36]) < 3  # and Plate B right after it


def test_melt_stacks_tracks_like_otio_and_shows_black_where_every_track_has_a_gap(tmp_path, melt):
    shutil.copy(PLATE, tmp_path / "plate.mp4")
    rate = 24.0

    def clip(start: int, frames: int) -> otio.schema.Clip:
        reference = otio.schema.ExternalReference(target_url="plate.mp4",
                                                  available_range=TR(RT(86400, rate), RT(72, rate)))
        return otio.schema.Clip(name=f"at {start}", media_reference=reference,
                                source_range=TR(RT(86400 + start, rate), RT(frames, rate)))  # timecoded media

    timeline = otio.schema.Timeline(name="stack")
    lower, upper = otio.schema.Track(name="V1"), otio.schema.Track(name="V2")
    lower.extend([clip(0, 10), otio.schema.Gap(source_range=TR(RT(0, rate), RT(5, rate))), clip(50, 10)])
    upper.extend([otio.schema.Gap(source_range=TR(RT(0, rate), RT(4, rate))), clip(30, 3)])
    timeline.tracks.extend([lower, upper])
    otio.adapters.write_to_file(timeline, str(tmp_path / "stack.otio"))
    # Saved as the product saves (atomically, through OTIO's adapter); relative media stays relative.
    document = tl.save_timeline(tl.open_timeline(tmp_path / "stack.otio"), tmp_path / "stack.mlt")
    profile = ET.parse(document).getroot().find("profile")
    assert (profile.get("width"), profile.get("height")) == ("96", "64")  # the plate's size, probed
    assert ">plate.mp4<" in document.read_text()
    frames = render(melt, document, tmp_path / "frames")
    source = media.read_frames(PLATE)
    assert len(frames) == 25
    assert difference(frames[2], source[2]) < 3  # the lower track where the upper has a gap
    assert difference(frames[5], source[31]) < 3  # the upper track over the lower one
    assert frames[12].max() <= 16  # both tracks empty: black (limited-range black after conversion)
    assert difference(frames[15], source[50]) < 3  # media timecode 01:00:00:00 is its first frame


def test_what_mlt_cannot_hold_is_refused_or_kept_as_time():
    rate = 24.0
    timeline = otio.schema.Timeline(name="nested", global_start_time=RT(0, rate))
    track = otio.schema.Track(name="V1")
    track.append(otio.schema.Clip(name="offline", media_reference=otio.schema.MissingReference(),
                                  source_range=TR(RT(0, rate), RT(7, rate))))
    timeline.tracks.append(track)
    text = mlt.to_mlt(timeline, width=96, height=64)
    assert '<blank length="7" />' in text and "offline or disabled: offline" in text
    track.append(otio.schema.Stack(name="compound"))
    with pytest.raises(TimelineError, match="nested Stack .*flatten"):
        mlt.to_mlt(timeline, width=96, height=64)
    with pytest.raises(TimelineError, match="no clips and no start time"):
        mlt.to_mlt(otio.schema.Timeline(name="empty"))


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_mlt_files_get_the_usual_permissions_like_every_other_file(tmp_path, umask):
    """``.mlt`` files were written 0600 (a temporary file's mode) while timelines were 0644."""
    shutil.copy(PLATE, tmp_path / "plate.mp4")
    timeline = otio.schema.Timeline(name="cut", global_start_time=RT(0, 24))
    track = otio.schema.Track(name="V1")
    track.append(otio.schema.Clip(name="A", source_range=TR(RT(0, 24), RT(10, 24)),
                                  media_reference=otio.schema.ExternalReference(target_url="plate.mp4")))
    timeline.tracks.append(track)
    otio.adapters.write_to_file(timeline, str(tmp_path / "cut.otio"))
    old = os.umask(umask)
    try:
        doc = tl.open_timeline(tmp_path / "cut.otio")
        written = [tl.save_timeline(doc, tmp_path / "saved.mlt"),
                   tl.save_timeline(doc, tmp_path / "saved.otio"),
                   mlt.write_mlt(timeline, tmp_path / "direct.mlt", width=96, height=64)]
        otio.adapters.write_to_file(timeline, str(tmp_path / "otioconvert.mlt"))
        written.append(tmp_path / "otioconvert.mlt")
    finally:
        os.umask(old)
    assert {path.name: path.stat().st_mode & 0o777 for path in written} == {
        path.name: 0o666 & ~umask for path in written}
    assert ">plate.mp4<" in (tmp_path / "saved.mlt").read_text()  # relative media stays relative
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
