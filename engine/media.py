"""Media I/O without torch: rational frame rates, images in, atomic BT.709 video out, video back in.

Time is a ``Fraction`` throughout (24000/1001 never becomes 23.976). What we write is converted
RGB -> YUV with the BT.709 matrix into limited (MPEG) range and tagged so; what we read is
converted back with the same matrix, explicitly, rather than trusting a decoder default.
"""

from __future__ import annotations

import os
from contextlib import ExitStack
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import av
import numpy as np
import PIL.Image
import PIL.ImageOps

from magic141 import atomic
from magic141.errors import InvalidInput
from magic141.protocol import CODECS
from magic141.rational import rational_text

if TYPE_CHECKING:
    from .ambience import SourceAudio

# Why h264 encodes with ``no-mbtree``: measured with PyAV 18.1 / FFmpeg 8 (libavcodec 62.28), the same
# 24 moving frames encoded 30 times in one process gave 7 different bitstreams at 192x128 even with
# threads=1 (2 of 40 at 48x32), so one job rendered twice made different files. Frames, resize and
# swscale were bit-identical; x264's macroblock-tree rate control was not. Without it: 1 of 40 at
# 48x32, 192x128 and 640x384. (rc-lookahead=0 or bframes=0 also fixed it; weightp=0 and b-adapt=0 did not.)
ENCODERS = {
    # codec (protocol.CODECS names it and its suffix): (encoder, pixel format, encoder options)
    "h264": ("libx264", "yuv420p",
             {"crf": "16", "preset": "medium", "movflags": "+faststart", "x264-params": "no-mbtree=1"}),
    "prores": ("prores_ks", "yuv422p10le", {"profile": "3", "vendor": "apl0"}),  # 3 = 422 HQ
}
assert ENCODERS.keys() == CODECS.keys(), "every codec of the protocol needs an encoder here"
# Sound beside the picture: AAC in .mp4 (FFmpeg's own encoder, 192 kb/s), 24-bit PCM in .mov (as a
# ProRes master carries it).
AUDIO_ENCODERS = {"h264": ("aac", {"b": "192k"}), "prores": ("pcm_s24le", {})}
assert AUDIO_ENCODERS.keys() == CODECS.keys()
BT709 = 1  # the ITU-T H.273 code for BT.709 primaries, transfer and matrix
RANGE_LIMITED = 1  # AVCOL_RANGE_MPEG


def reformat(frame: av.VideoFrame, **options: Any) -> av.VideoFrame:
    """``frame.reformat(**options)`` on one thread.

    The trap: swscale's default (``threads=0``, one slice per CPU) races where slices meet. Measured
    with PyAV 18 / FFmpeg 8: rgb24 -> yuv422p10le at 48x32 (the world model's ProRes size) gave wrong
    chroma in the first 8 columns of a row at a slice boundary (rows 11 and 22 with 3 slices) in 99 of
    120 conversions of the same frame, up to 228/1023 off, so the same frames made different files.
    (PyAV 17 made all CPUs the default.) One thread was exact in 1200 of 1200 and costs little: 0.02 ms
    a frame at 48x32, 2 ms at 960x544, against the seconds each frame takes to sample.
    """
    return frame.reformat(threads=1, **options)


def conform_indices(n_out: int, out_fps: Fraction, native_fps: Fraction) -> list[int]:
    """For output frame i (at i/out_fps), the nearest native frame, rounding halves up."""
    ratio = Fraction(native_fps) / Fraction(out_fps)
    return [int(i * ratio + Fraction(1, 2)) for i in range(n_out)]


def native_frames_needed(n_out: int, out_fps: Fraction, native_fps: Fraction) -> int:
    return conform_indices(n_out, out_fps, native_fps)[-1] + 1


def load_image(path: str | os.PathLike) -> PIL.Image.Image:
    """An RGB image with EXIF orientation applied; alpha is composited on black."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInput(f"image {path} does not exist or is not a file")
    try:
        with PIL.Image.open(path) as opened:
            image = PIL.ImageOps.exif_transpose(opened)
            image.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidInput(f"image {path} cannot be read: {exc}") from exc
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit greyscale: scale, do not clip
        image = PIL.Image.fromarray((np.asarray(image, dtype=np.float64) / 257).round().astype(np.uint8))
    if image.mode in ("P", "PA", "LA", "RGBA", "La") or "transparency" in image.info:
        image = image.convert("RGBA")
        background = PIL.Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = PIL.Image.alpha_composite(background, image)
    return image.convert("RGB")


@dataclass(frozen=True)
class VideoInfo:
    path: Path
    frames: int
    fps: Fraction
    codec: str
    width: int
    height: int
    color_primaries: int | None = None
    color_trc: int | None = None
    colorspace: int | None = None
    color_range: int | None = None

    def to_json(self) -> dict:
        return {
            "path": str(self.path),
            "frames": self.frames,
            "fps": rational_text(self.fps),
            "codec": self.codec,
            "width": self.width,
            "height": self.height,
        }


def check_output_path(path: str | os.PathLike, codec: str) -> Path:
    """Refuse a path we could not write before any work is done. The folder must exist: a
    mistyped folder is an error to report, never a tree to create."""
    path = Path(path)
    if codec not in CODECS:
        raise InvalidInput(f"must be one of {', '.join(CODECS)}, got {codec!r}", field="codec")
    suffix = CODECS[codec]
    if path.suffix.lower() != suffix:
        raise InvalidInput(f"{path} must end in {suffix} for {codec}", field="out")
    if path.is_dir():
        raise InvalidInput(f"{path} is a folder", field="out")
    folder = path.parent
    if not folder.exists():
        raise InvalidInput(f"the folder {folder} does not exist; create it first", field="out")
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise InvalidInput(f"{path}: {folder} is not a writable folder", field="out")
    return path


class VideoWriter:
    """Stream RGB frames into a video that appears at ``path`` only when complete.

    Frames go to a hidden temporary file beside ``path`` (``atomic.replacing``); a clean exit flushes
    the encoder, closes the container and renames it into place; any exception removes it. With
    ``audio``, its samples (from time 0) are written beside the frames, interleaved as they go.
    """

    def __init__(self, path: str | os.PathLike, *, fps: Fraction, codec: str, width: int, height: int,
                 metadata: dict | None = None, audio: SourceAudio | None = None,
                 sample_aspect: Fraction | None = None) -> None:
        self.path = check_output_path(path, codec)
        self.fps = Fraction(fps)
        if self.fps <= 0:
            raise InvalidInput(f"must be positive, got {fps}", field="fps")
        self.time_base = 1 / self.fps  # pts = frame index: exact at any rational rate
        self.codec, self.width, self.height = codec, int(width), int(height)
        self.encoder, self.pix_fmt, self.options = ENCODERS[codec]
        if width <= 0 or height <= 0 or (self.pix_fmt.startswith("yuv420") and (width % 2 or height % 2)):
            raise InvalidInput(f"{codec} needs a positive, even width and height, got {width}x{height}")
        self.metadata = dict(metadata or {})
        self.frames = 0
        self._muxed = 0
        self.info: VideoInfo | None = None
        self._replacing = ExitStack()  # holds atomic.replacing's temporary file until __exit__
        self._container: Any = None  # av's output container and stream, while open
        self._stream: Any = None
        self.sample_aspect = sample_aspect  # the pixel aspect ratio (None: square pixels, untagged)
        self.audio = audio
        self._audio_stream: Any = None
        self._audio_written = 0  # samples

    def __enter__(self) -> VideoWriter:
        try:
            temp = self._replacing.enter_context(atomic.replacing(self.path))
            self._container = av.open(str(temp), mode="w")
            self._container.metadata.update(self.metadata)
            stream = self._container.add_stream(self.encoder, rate=self.fps, options=dict(self.options))
            stream.width, stream.height, stream.pix_fmt = self.width, self.height, self.pix_fmt
            stream.time_base = self.time_base
            context = stream.codec_context
            context.color_primaries = context.color_trc = context.colorspace = BT709
            context.color_range = RANGE_LIMITED
            if self.sample_aspect is not None:
                context.sample_aspect_ratio = self.sample_aspect
            self._stream = stream
            if self.audio is not None:
                encoder, options = AUDIO_ENCODERS[self.codec]
                self._audio_stream = self._container.add_stream(
                    encoder, rate=self.audio.rate, layout=self.audio.layout, options=dict(options))
        except BaseException as exc:
            self._discard(exc)
            raise
        return self

    def write(self, frames: np.ndarray) -> None:
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1:] != (self.height, self.width, 3):
            raise InvalidInput(
                f"frames must be uint8 [n, {self.height}, {self.width}, 3] RGB, "
                f"got {frames.dtype} {frames.shape}"
            )
        for rgb in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            # Explicit BT.709 limited range: swscale's default matrix for unset colourspace is BT.601.
            yuv = reformat(
                frame, format=self.pix_fmt, dst_colorspace="ITU709", dst_color_range="MPEG",
                dst_color_trc=BT709, dst_color_primaries=BT709,
            )
            yuv.pts = self.frames
            # Our own time base, not the stream's: the muxer replaces the stream's (mp4: 1/12800) once
            # the header is written, and frames stamped with that would collapse to pts 0.
            yuv.time_base = self.time_base
            self._mux(self._stream.encode(yuv))
            self.frames += 1
            if self.audio is not None:
                self._write_audio(until=round(self.frames * self.audio.rate / self.fps))

    def _write_audio(self, until: int) -> None:
        """Encode the audio samples up to ``until`` (the time of the frames written so far)."""
        if self.audio is None or until <= self._audio_written:
            return
        start, self._audio_written = self._audio_written, min(until, self.audio.samples.shape[1])
        chunk = np.ascontiguousarray(self.audio.samples[:, start: self._audio_written], dtype=np.float32)
        if chunk.shape[1]:
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=self.audio.layout)
            frame.rate, frame.pts, frame.time_base = self.audio.rate, start, Fraction(1, self.audio.rate)
            for packet in self._audio_stream.encode(frame):
                self._container.mux(packet)

    def _mux(self, packets) -> None:
        for packet in packets:
            if self.codec == "prores":
                # prores_ks (FFmpeg 7/8 via PyAV 18) hands back every packet with pts 0, which the
                # mov muxer turns into a wrong rate; it is intra-only, so packet n is frame n.
                packet.pts = packet.dts = self._muxed
                packet.duration = 1
            self._container.mux(packet)
            self._muxed += 1

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is not None:
            self._discard(exc)
            return
        try:
            if self.audio is not None:
                self._write_audio(until=self.audio.samples.shape[1])
                for packet in self._audio_stream.encode(None):  # flush
                    self._container.mux(packet)
            self._mux(self._stream.encode())  # flush: the encoder holds frames back
            self._container.close()  # the trailer is written before the file is renamed into place
            self._container = None
        except BaseException as error:
            self._discard(error)
            raise
        self._replacing.close()  # fsync, then rename onto the path
        self.info = VideoInfo(self.path, self.frames, self.fps, self.codec, self.width, self.height,
                              BT709, BT709, BT709, RANGE_LIMITED)

    def _discard(self, exc: BaseException) -> None:
        if self._container is not None:
            try:
                self._container.close()
            except (av.FFmpegError, OSError, ValueError):
                pass  # the file is being thrown away; its trailer does not matter
            self._container = None
        # Hand the exception to atomic.replacing, which removes the temporary file (and re-raises
        # it, which ExitStack reports as not suppressed: the caller's raise carries on).
        self._replacing.__exit__(type(exc), exc, exc.__traceback__)


def _open_video(path):
    path = Path(path)
    if not path.is_file():
        raise InvalidInput(f"video {path} does not exist")
    try:
        return av.open(str(path))
    except av.FFmpegError as exc:
        raise InvalidInput(f"video {path} cannot be read: {exc}") from exc


@dataclass(frozen=True)
class PictureFormat:
    """What a conform keeps from a source, read from its header (no decoding)."""

    bit_depth: int  # bits per sample of the first component: 8, 10, 12...
    sample_aspect: Fraction | None  # the pixel aspect ratio; None when square or not tagged


def picture_format(path) -> PictureFormat:
    with _open_video(path) as container:
        stream = container.streams.video[0]
        context = stream.codec_context
        bits = av.VideoFormat(context.format.name).components[0].bits if context.format else 8
        aspect = stream.sample_aspect_ratio or context.sample_aspect_ratio
        square = aspect is None or aspect == 1 or aspect == 0
        return PictureFormat(int(bits), None if square else Fraction(aspect))


def probe_video(path) -> VideoInfo:
    """Frame count by decoding (exact), rate as a Fraction, size, codec and colour tags."""
    with _open_video(path) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        context = stream.codec_context
        return VideoInfo(
            Path(path), frames, Fraction(stream.average_rate), context.name, context.width, context.height,
            int(context.color_primaries), int(context.color_trc), int(context.colorspace),
            int(context.color_range),
        )


def read_frames(path) -> np.ndarray:
    """All frames as uint8 [n, H, W, 3] RGB, converted from YUV with BT.709 limited range explicitly."""
    with _open_video(path) as container:
        out = [
            reformat(frame, format="rgb24", src_colorspace="ITU709", src_color_range="MPEG").to_ndarray()
            for frame in container.decode(video=0)
        ]
    return np.stack(out)


def grab_frame(path, seconds: Fraction) -> PIL.Image.Image:
    """The frame shown at ``seconds`` (exact) into a video: seek to the keyframe before, decode forward.

    Colour is converted explicitly with the stream's tagged matrix and range; untagged streams are
    taken as BT.709 from 720 lines up and BT.601 below (what players assume).
    """
    seconds = Fraction(seconds)
    if seconds < 0:
        raise InvalidInput(f"time {seconds} s is before the start of {path}")
    with _open_video(path) as container:
        stream = container.streams.video[0]
        time_base = Fraction(stream.time_base)
        start = stream.start_time or 0
        target = start + seconds / time_base  # in stream ticks, exact
        container.seek(int(target), stream=stream, backward=True, any_frame=False)
        chosen = None
        try:
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                if frame.pts > target and chosen is not None:
                    break
                chosen = frame
        except av.FFmpegError as exc:
            raise InvalidInput(f"video {path} cannot be decoded at {seconds} s: {exc}") from exc
        if chosen is None:
            raise InvalidInput(f"video {path} has no frame at {seconds} s")
        frame_ticks = Fraction(1) / (Fraction(stream.average_rate or 24) * time_base)
        last = chosen.pts + (chosen.duration or frame_ticks)
        if chosen.pts > target or target >= last:  # past the end of the last frame
            raise InvalidInput(f"time {float(seconds):.3f} s is outside {path}")
        tagged = int(chosen.colorspace)
        matrix = tagged if tagged in (1, 5, 6) else (1 if chosen.height >= 720 else 5)
        full = int(chosen.color_range) == 2  # AVCOL_RANGE_JPEG
        rgb = reformat(
            chosen, format="rgb24",
            src_colorspace="ITU709" if matrix == 1 else "ITU601",
            src_color_range="JPEG" if full else "MPEG",
        ).to_ndarray()
    return PIL.Image.fromarray(rgb)
