"""Media: rational rates, conforming, image loading, atomic BT.709 writing (real PyAV encode/decode)."""

from __future__ import annotations

import os
from fractions import Fraction

import numpy as np
import PIL.Image
import pytest

from magic141.engine import media
from magic141.errors import InvalidInput
from magic141.rational import frame_count, parse_rate

H, W = 48, 64
PATCHES = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "grey": (128, 128, 128)}


def pattern(n: int = 8) -> np.ndarray:
    """Solid primaries in the top half (they expose a wrong matrix), moving gradients below."""
    frames = np.zeros((n, H, W, 3), np.uint8)
    for i, colour in enumerate(PATCHES.values()):
        frames[:, : H // 2, i * 16 : (i + 1) * 16] = colour
    x = np.arange(W)
    for t in range(n):
        frames[t, H // 2 :, :, 0] = (x * 4 + t * 8) % 256
        frames[t, H // 2 :, :, 1] = 100
        frames[t, H // 2 :, :, 2] = 255 - (x * 4) % 256
    return frames


@pytest.mark.parametrize(
    "text,expected",
    [("24", Fraction(24)), ("25", Fraction(25)), ("24000/1001", Fraction(24000, 1001)),
     ("23.976", Fraction(24000, 1001)), ("29.97", Fraction(30000, 1001)), ("59.94", Fraction(60000, 1001)),
     ("12.5", Fraction(25, 2))],
)
def test_typed_rates_are_exact(text, expected):
    assert parse_rate(text) == expected


@pytest.mark.parametrize("text", ["", "fast", "0", "-24", "24/0", "5000"])
def test_bad_rates_are_refused_naming_the_field(text):
    with pytest.raises(InvalidInput) as refused:
        parse_rate(text)
    assert refused.value.field == "fps" and "--" not in refused.value.message


def test_frame_count_and_conforming():
    assert frame_count(Fraction(2), Fraction(24000, 1001)) == 48
    assert frame_count(Fraction("1.1"), Fraction(30)) == 33
    with pytest.raises(InvalidInput) as refused:
        frame_count(Fraction(0), Fraction(24))
    assert refused.value.field == "seconds"
    assert media.conform_indices(5, Fraction(24), Fraction(24)) == [0, 1, 2, 3, 4]
    to_25 = media.conform_indices(50, Fraction(25), Fraction(24))
    assert to_25[0] == 0 and to_25[-1] == 47
    assert all(b - a in (0, 1) for a, b in zip(to_25, to_25[1:], strict=False))
    ntsc = media.conform_indices(60, Fraction(30000, 1001), Fraction(24))
    assert ntsc[-1] == round(59 * Fraction(24) / Fraction(30000, 1001)) == 47
    assert media.native_frames_needed(60, Fraction(30000, 1001), Fraction(24)) == 48


@pytest.mark.parametrize("codec,suffix", [("h264", ".mp4"), ("prores", ".mov")])
def test_encode_then_decode_keeps_picture_colours_and_rate(tmp_path, codec, suffix):
    frames = pattern()
    path = tmp_path / f"clip{suffix}"
    fps = Fraction(24000, 1001)
    with media.VideoWriter(path, fps=fps, codec=codec, width=W, height=H) as writer:
        writer.write(frames[:3])
        writer.write(frames[3:])  # chunked writes make one continuous video
    info = media.probe_video(path)
    assert (info.fps, info.frames, info.width, info.height) == (fps, 8, W, H)
    assert (info.color_primaries, info.color_trc, info.colorspace, info.color_range) == (1, 1, 1, 1)
    back = media.read_frames(path)
    # Lossy coding with chroma subsampling: a few code values on average (edges cost most).
    assert np.abs(back.astype(int) - frames).mean() < 4
    for i, colour in enumerate(PATCHES.values()):
        # Centre of each solid patch. BT.601 decoding of BT.709 red gives about (255, 24, 0) and
        # green (0, 242, 18): an 18+ code-value error, far outside this bound.
        got = back[:, H // 4, i * 16 + 8].astype(int)
        assert np.abs(got - colour).max() <= 4, (colour, got[0])


@pytest.mark.parametrize("fps", [Fraction(30000, 1001), Fraction(25), Fraction(60)])
def test_long_streams_keep_every_frame_at_an_exact_rate(tmp_path, fps):
    """Long enough that the encoder emits packets while frames still arrive (the muxer then
    changes the stream's time base, which once collapsed later frames onto pts 0)."""
    path = tmp_path / "long.mp4"
    with media.VideoWriter(path, fps=fps, codec="h264", width=W, height=H) as writer:
        for _ in range(10):
            writer.write(pattern(9))
    info = media.probe_video(path)
    assert info.fps == fps and info.frames == 90


def moving_ball(n: int, width: int, height: int) -> np.ndarray:
    """A gradient plate with a ball crossing it: the kind of picture a placed clip holds."""
    y, x = np.mgrid[:height, :width]
    frames = np.empty((n, height, width, 3), np.uint8)
    for t in range(n):
        frames[t] = np.stack([x * 255 // width, y * 255 // height, np.full_like(x, 90)], -1)
        ball = (x - 10 - t * width // n) ** 2 + (y - height // 2) ** 2 < (height // 5) ** 2
        frames[t][ball] = (220, 30, 30)
    return frames


@pytest.mark.parametrize(
    "codec,suffix,frames",
    [
        # 48x32 (the world model's size) with noise: threaded swscale gave wrong chroma at its slice
        # seams for rgb24 -> yuv422p10le at this width, so 10 ProRes takes made up to 9 different files.
        ("h264", ".mp4", np.random.default_rng(1).integers(0, 256, (12, 32, 48, 3), dtype=np.uint8)),
        ("prores", ".mov", np.random.default_rng(1).integers(0, 256, (12, 32, 48, 3), dtype=np.uint8)),
        # A moving picture at a placed clip's size: x264's macroblock tree made 7 bitstreams of 30 takes.
        ("h264", ".mp4", moving_ball(24, 192, 128)),
    ],
    ids=["h264-noise", "prores-noise", "h264-moving"],
)
def test_the_same_frames_always_make_the_same_file(tmp_path, codec, suffix, frames):
    takes = set()
    for take in range(12):
        path = tmp_path / f"take{take}{suffix}"
        with media.VideoWriter(path, fps=Fraction(24), codec=codec, width=frames.shape[2],
                               height=frames.shape[1]) as writer:
            writer.write(frames)
        takes.add(path.read_bytes())
    assert len(takes) == 1


def test_failed_write_leaves_nothing_and_keeps_an_existing_file(tmp_path):
    path = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError):
        with media.VideoWriter(path, fps=Fraction(24), codec="h264", width=W, height=H) as writer:
            writer.write(pattern(4))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    path.write_bytes(b"previous take")
    with pytest.raises(InvalidInput, match="uint8"):
        with media.VideoWriter(path, fps=Fraction(24), codec="h264", width=W, height=H) as writer:
            writer.write(pattern(2).astype(np.float32))
    assert path.read_bytes() == b"previous take"
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]


@pytest.mark.parametrize(
    "name,codec,size,word",
    [("a.mov", "h264", (W, H), ".mp4"), ("a.mp4", "prores", (W, H), ".mov"),
     ("a.mp4", "h264", (63, 48), "even"), ("file.txt/a.mp4", "h264", (W, H), "not a writable folder")],
)
def test_bad_output_is_refused_before_writing(tmp_path, name, codec, size, word):
    (tmp_path / "file.txt").write_text("a file, not a folder")
    with pytest.raises(InvalidInput, match=word):
        media.VideoWriter(tmp_path / name, fps=Fraction(24), codec=codec, width=size[0], height=size[1])
    assert [p.name for p in tmp_path.iterdir()] == ["file.txt"]


def test_a_missing_output_folder_is_refused_by_name_and_not_made(tmp_path):
    path = tmp_path / "renders" / "shot 010" / "take.mp4"
    with pytest.raises(InvalidInput) as refused:
        media.VideoWriter(path, fps=Fraction(24), codec="h264", width=W, height=H)
    assert refused.value.field == "out" and str(tmp_path / "renders" / "shot 010") in refused.value.message
    assert list(tmp_path.iterdir()) == []


def test_written_files_get_the_usual_permissions(tmp_path):
    path = tmp_path / "take.mp4"
    with media.VideoWriter(path, fps=Fraction(24), codec="h264", width=W, height=H) as writer:
        writer.write(pattern(2))
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not a temporary file's 0600
    assert [p.name for p in tmp_path.iterdir()] == ["take.mp4"]


def test_load_image_handles_alpha_16_bit_palette_and_exif(tmp_path):
    rgba = PIL.Image.new("RGBA", (20, 10), (255, 0, 0, 0))
    rgba.save(tmp_path / "alpha.png")
    assert media.load_image(tmp_path / "alpha.png").getpixel((0, 0)) == (0, 0, 0)  # transparent -> black
    PIL.Image.fromarray(np.full((10, 20), 65535, np.uint16)).save(tmp_path / "deep.png")
    assert media.load_image(tmp_path / "deep.png").getpixel((0, 0)) == (255, 255, 255)
    PIL.Image.new("RGB", (20, 10), (0, 0, 255)).convert("P").save(tmp_path / "pal.gif")
    assert media.load_image(tmp_path / "pal.gif").getpixel((5, 5)) == (0, 0, 255)
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    PIL.Image.new("RGB", (20, 10), (0, 200, 0)).save(tmp_path / "rot.jpg", exif=exif)
    image = media.load_image(tmp_path / "rot.jpg")
    assert image.mode == "RGB" and image.size == (10, 20)


def test_load_image_names_bad_files(tmp_path):
    with pytest.raises(InvalidInput, match="nope.png"):
        media.load_image(tmp_path / "nope.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(InvalidInput, match="bad.png"):
        media.load_image(tmp_path / "bad.png")
