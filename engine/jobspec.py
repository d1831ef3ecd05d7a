"""The job spec: what crosses the process boundary from panel/CLI to the engine. No torch here.

Versioned JSON (``"version": 1``), validated on arrival; a bad spec is refused with a message
naming the field. Times and rates are exact rationals written as strings ("24000/1001", "5/2").

    {
      "version": 1,
      "source": {"kind": "image", "path": "/shots/010/frame.png"}
              | {"kind": "media", "path": "/shots/010/plate.mov", "time": "1001/24"}   # seconds, exact
              | {"kind": "none"},                                                      # text-to-video
      "prompt": "the camera pushes in", "seconds": "5", "fps": "24000/1001", "seed": 0,
      "model": "world", "steps": null, "quant": "none", "height": null, "width": null,
      "codec": "h264", "output_dir": "/renders", "output_name": null
    }

Paths are explicit and absolute: the engine may run on another machine that mounts the same
storage, and nothing assumes it shares the submitter's working directory.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path, PurePath

from .errors import InvalidInput
from .media import CODECS

SPEC_VERSION = 1
SOURCE_KINDS = ("image", "media", "none")
QUANTS = ("none", "int8", "fp8")
CODEC_SUFFIX = {codec: suffix for codec, (_, _, suffix, _) in CODECS.items()}
MAX_SECONDS = 3600
BUILTIN_MODELS = ("world", "tiny")  # built into the engine (engine/models.py); any other model is a path
DEFAULT_MODEL = "world"  # trained on the procedural world (resources/world); "tiny" is random weights
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,120}$")


def model_field(model: str) -> str:
    """A built-in model's name as is; a model folder or file as an absolute path (the engine has its own cwd)."""
    return model if model in BUILTIN_MODELS else str(Path(model).expanduser().resolve())


class InvalidSpec(InvalidInput):
    """A job spec field is missing or wrong; ``field`` names it."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


def rational_text(value: Fraction) -> str:
    return f"{value.numerator}/{value.denominator}" if value.denominator != 1 else str(value.numerator)


def _rational(data: dict, name: str, *, positive: bool = True, minimum_zero: bool = False) -> Fraction:
    raw = data.get(name)
    if isinstance(raw, bool) or not isinstance(raw, (str, int)):
        raise InvalidSpec(name, f"must be an exact number as a string such as \"24000/1001\", got {raw!r}")
    try:
        value = Fraction(str(raw).strip())
    except (ValueError, ZeroDivisionError):
        raise InvalidSpec(name, f"is not a number: {raw!r}") from None
    if (positive and value <= 0) or (minimum_zero and value < 0):
        raise InvalidSpec(name, f"must be {'positive' if positive else 'zero or more'}, got {raw!r}")
    return value


def _optional_int(data: dict, name: str, minimum: int) -> int | None:
    raw = data.get(name)
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < minimum:
        raise InvalidSpec(name, f"must be a whole number >= {minimum} or null, got {raw!r}")
    return raw


def _choice(data: dict, name: str, choices: tuple[str, ...], default: str) -> str:
    raw = data.get(name, default)
    if raw not in choices:
        raise InvalidSpec(name, f"must be one of {', '.join(choices)}, got {raw!r}")
    return raw


def _absolute_path(raw, name: str) -> str:
    if not isinstance(raw, str) or not raw or not PurePath(raw).is_absolute():
        raise InvalidSpec(name, f"must be an absolute path, got {raw!r}")
    return raw


@dataclass(frozen=True)
class Source:
    kind: str  # "image" | "media" | "none"
    path: str | None = None
    time: Fraction | None = None  # seconds into the media file, exact

    def to_json(self) -> dict:
        data: dict = {"kind": self.kind}
        if self.path is not None:
            data["path"] = self.path
        if self.time is not None:
            data["time"] = rational_text(self.time)
        return data


@dataclass(frozen=True)
class JobSpec:
    source: Source
    prompt: str
    output_dir: str
    seconds: Fraction = Fraction(5)
    fps: Fraction = Fraction(24)
    seed: int = 0
    model: str = DEFAULT_MODEL
    steps: int | None = None
    quant: str = "none"
    height: int | None = None
    width: int | None = None
    codec: str = "h264"
    output_name: str | None = None
    shift: float = 5.0
    guidance: float | None = None
    negative_prompt: str = ""
    conditioning: str | None = None
    window_overlap: int = 2

    @classmethod
    def from_json(cls, data: object) -> JobSpec:
        if not isinstance(data, dict):
            raise InvalidSpec("spec", f"must be a JSON object, got {type(data).__name__}")
        version = data.get("version")
        if version != SPEC_VERSION:
            raise InvalidSpec("version", f"must be {SPEC_VERSION}, got {version!r}")
        known = {"version", "source", "prompt", "seconds", "fps", "seed", "model", "steps", "quant", "height",
                 "width", "codec", "output_dir", "output_name", "shift", "guidance", "negative_prompt",
                 "conditioning", "window_overlap"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidSpec(unknown[0], f"is not a field of a version {SPEC_VERSION} job spec")
        source = cls._source(data.get("source"))
        prompt = data.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise InvalidSpec("prompt", "must be a non-empty string")
        seconds = _rational(data, "seconds") if "seconds" in data else Fraction(5)
        if seconds > MAX_SECONDS:
            raise InvalidSpec("seconds", f"must be at most {MAX_SECONDS}, got {data['seconds']!r}")
        fps = _rational(data, "fps") if "fps" in data else Fraction(24)
        if fps > 1000:
            raise InvalidSpec("fps", f"must be at most 1000, got {data['fps']!r}")
        seed = data.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
            raise InvalidSpec("seed", f"must be a whole number from 0 to 2**63-1, got {seed!r}")
        model = data.get("model", DEFAULT_MODEL)
        if not isinstance(model, str) or not model:
            raise InvalidSpec("model", f"must be {' or '.join(BUILTIN_MODELS)} or a model path, got {model!r}")
        codec = _choice(data, "codec", tuple(CODEC_SUFFIX), "h264")
        name = data.get("output_name")
        if name is not None and (not isinstance(name, str) or not _NAME.match(name)):
            raise InvalidSpec("output_name", f"must be a plain file name without folders, got {name!r}")
        height, width = _optional_int(data, "height", 16), _optional_int(data, "width", 16)
        for label, value in (("height", height), ("width", width)):
            if value is not None and value % 16:
                raise InvalidSpec(label, f"must be a multiple of 16, got {value}")
        shift = data.get("shift", 5.0)
        if isinstance(shift, bool) or not isinstance(shift, (int, float)) or shift <= 0:
            raise InvalidSpec("shift", f"must be a positive number, got {shift!r}")
        guidance = data.get("guidance")
        if guidance is not None and (isinstance(guidance, bool) or not isinstance(guidance, (int, float))
                                     or guidance < 1):
            raise InvalidSpec("guidance", f"must be a number >= 1 (1 = no CFG) or null, got {guidance!r}")
        negative = data.get("negative_prompt", "")
        if not isinstance(negative, str):
            raise InvalidSpec("negative_prompt", f"must be a string, got {negative!r}")
        overlap = _optional_int(data, "window_overlap", 1) or 2
        return cls(
            shift=float(shift),
            guidance=None if guidance is None else float(guidance),
            negative_prompt=negative,
            conditioning=_choice(data, "conditioning", ("magic141", "diffusers"), None)
            if data.get("conditioning") is not None else None,
            window_overlap=overlap,
            source=source,
            prompt=prompt,
            output_dir=_absolute_path(data.get("output_dir"), "output_dir"),
            seconds=seconds,
            fps=fps,
            seed=seed,
            model=model,
            steps=_optional_int(data, "steps", 1),
            quant=_choice(data, "quant", QUANTS, "none"),
            height=height,
            width=width,
            codec=codec,
            output_name=name,
        )

    @staticmethod
    def _source(raw) -> Source:
        if not isinstance(raw, dict):
            raise InvalidSpec("source", f"must be an object with a kind ({', '.join(SOURCE_KINDS)}), got {raw!r}")
        kind = raw.get("kind")
        if kind not in SOURCE_KINDS:
            raise InvalidSpec("source.kind", f"must be one of {', '.join(SOURCE_KINDS)}, got {kind!r}")
        if kind == "none":
            return Source("none")
        path = _absolute_path(raw.get("path"), "source.path")
        if kind == "image":
            return Source("image", path)
        return Source("media", path, _rational(raw, "time", positive=False, minimum_zero=True))

    def to_json(self) -> dict:
        data = asdict(self)
        data.update(
            version=SPEC_VERSION,
            source=self.source.to_json(),
            seconds=rational_text(self.seconds),
            fps=rational_text(self.fps),
        )
        return data

    def output_path(self, job_id: str) -> str:
        name = self.output_name or f"magic141_{job_id}"
        stem = name[: -len(CODEC_SUFFIX[self.codec])] if name.endswith(CODEC_SUFFIX[self.codec]) else name
        return str(PurePath(self.output_dir) / f"{stem}{CODEC_SUFFIX[self.codec]}")
