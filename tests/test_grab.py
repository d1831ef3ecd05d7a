"""Frame-accurate grabs from the sources editors hand us: codecs, bit depths, rates, ranges, start times.

Each source is encoded here with PyAV, with a moving bar (so a neighbouring frame is never equal) and a
patch of known colour (so a wrong matrix or range shows). The reference is a plain sequential decode
converted with the matrix and range the test itself encoded with.
"""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest

from magic141.engine import media
from magic141.errors import InvalidInput

W, H, FRAMES = 64, 48, 14
PATCH = (200, 60, 30)
# name: encoder, container suffix, pixel format, rate, matrix (swscale name, tag), full range, first pts
SOURCES = {
    "h264-8bit-23.976": ("libx264", ".mp4", "yuv420p", Fraction(24000, 1001), ("ITU709", 1), False, 0),
    "h264-10bit-60": ("libx264", ".mp4", "yuv420p10le", Fraction(60), ("ITU709", 1), False, 0),
    "hevc-10bit-29.97": ("libx265", ".mp4", "yuv420p10le", Fraction(30000, 1001), ("ITU709", 1), False, 0),
    "prores-10bit-25": ("prores_ks", ".mov", "yuv422p10le", Fraction(25), ("ITU709", 1), False, 0),
    "h264-full-range-24": ("libx264", ".mp4", "yuvj420p", Fraction(24), ("ITU709", 1), True, 0),
    "h264-untagged-sd-25": ("libx264", ".mp4", "yuv420p", Fraction(25), ("ITU601", None), False, 0),
    "h264-late-start-24": ("libx264", ".mov", "yuv420p", Fraction(24), ("ITU709", 1), False, 1000),
}


def pictures() -> np.ndarray:
    frames = np.zeros((FRAMES, H, W, 3), np.uint8)
    frames[..., 2] = 90
    frames[:, :16, :16] = PATCH
    for i in range(FRAMES):
        frames[i, 20:, 3 * i: 3 * i + 3] = 255
    return frames


def encode(path, encoder, pix_fmt, rate, matrix, full, first_pts) -> None:
    name, tag = matrix
    with av.open(str(path), "w") as container:
        options = {"g": "6"} if encoder != "prores_ks" else {}
        stream = container.add_stream(encoder, rate=rate, options=options)
        stream.width, stream.height, stream.pix_fmt = W, H, pix_fmt
        if encoder == "libx265":
            stream.codec_context.options = {"x265-params": "log-level=none:keyint=6"}
        context = stream.codec_context
        if tag is not None:
            context.color_primaries = context.color_trc = context.colorspace = tag
        context.color_range = 2 if full else 1
        for i, rgb in enumerate(pictures()):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(
                format=pix_fmt, dst_colorspace=name, dst_color_range="JPEG" if full else "MPEG")
            frame.pts = first_pts + i
            frame.time_base = 1 / rate
            for packet in stream.encode(frame):
                if encoder == "prores_ks":  # intra-only; its packets come back with pts 0 (see media.py)
                    packet.pts = packet.dts = first_pts + i
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def reference(path, matrix, full) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.reformat(format="rgb24", src_colorspace=matrix[0],
                                    src_color_range="JPEG" if full else "MPEG").to_ndarray()
                         for f in container.decode(video=0)])


@pytest.mark.parametrize("name", list(SOURCES))
def test_grab_is_frame_accurate_with_correct_colour(tmp_path, name):
    encoder, suffix, pix_fmt, rate, matrix, full, first_pts = SOURCES[name]
    path = tmp_path / f"{name}{suffix}"
    encode(path, encoder, pix_fmt, rate, matrix, full, first_pts)
    frames = reference(path, matrix, full)
    assert len(frames) == FRAMES
    for i in (0, 1, 5, 6, 7, FRAMES - 1):  # across keyframe boundaries (a GOP is 6)
        exact = np.asarray(media.grab_frame(path, Fraction(i) / rate))
        inside = np.asarray(media.grab_frame(path, (Fraction(i) + Fraction(2, 3)) / rate))
        assert np.array_equal(exact, frames[i]) and np.array_equal(inside, frames[i]), i
    patch = np.asarray(media.grab_frame(path, Fraction(3) / rate))[2:14, 2:14].reshape(-1, 3).mean(0)
    assert np.abs(patch - PATCH).max() < 8, patch  # a wrong matrix or range is off by 15-40 here


def test_grab_refuses_times_outside_the_media(tmp_path):
    path = tmp_path / "a.mp4"
    encode(path, "libx264", "yuv420p", Fraction(24), ("ITU709", 1), False, 0)
    for seconds in (Fraction(-1, 24), Fraction(FRAMES, 24), Fraction(10)):
        with pytest.raises(InvalidInput, match="outside|before"):
            media.grab_frame(path, seconds)
