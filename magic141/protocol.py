"""The wire contract: every JSON that crosses a process boundary, its version and its migrations.
Stdlib only, so the panel, a host's Python and the OTIO markers hook import it for free.

Formats (each a JSON object with a ``"version"``; ``CHANGELOG.md`` lists every change):

    job spec      JobSpec.to_json()       panel/CLI/markers -> engine (HTTP body, queue row, farm file)
    job result    JobResult.to_json()     engine -> queue row, event, ``--json`` output
    event         Event.to_json()         engine -> clients (server-sent events)
    clip record   clip_record()           ``metadata["magic141"]`` of a generated clip in a timeline
    service file  home.write_service()    ``$MAGIC141_HOME/service.json``
    models        families.catalog()      engine -> panel: each family's needs per mode, installed copies

Reading: ``from_json`` upgrades older versions through ``_MIGRATIONS`` (each step takes version
n to n+1), refuses a newer version with ``SchemaTooNew`` and any bad field with ``InvalidInput``
whose ``field`` names it ("seconds", "source.path"). Times and rates are exact rationals written
as text ("24000/1001", "5/2"); a float fps never crosses a boundary.

A spec::

    {
      "version": 1,
      "source": {"kind": "image", "path": "/shots/010/frame.png"}
              | {"kind": "media", "path": "/shots/010/plate.mov", "time": "1001/24"}   # seconds, exact
              | {"kind": "none"},                                                      # text-to-video
      "prompt": "the camera pushes in", "seconds": "5", "fps": "24000/1001", "seed": 0,
      "model": "world", "steps": null, "quant": "none", "height": null, "width": null,
      "codec": "h264", "output_dir": "/renders", "output_name": null, ...
    }

Paths are explicit and absolute: the engine may run on another machine that mounts the same
storage, and nothing assumes it shares the submitter's working directory.

Job states (the queue's record) and event types (the live stream) are two views of one life::

    PENDING --> RUNNING --> DONE         events: queued, started, step..., finished
                   |   \\-> FAILED                                          failed
                   \\-> CANCELLING --> CANCELLED                            cancelled
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from enum import Enum
from fractions import Fraction
from pathlib import Path, PurePath
from typing import Any

from .errors import InvalidInput, SchemaTooNew
from .rational import parse_rate, parse_rational, rational_text

SPEC_VERSION = 4  # 2: color_match and match_source; 3: ambience; 4: loras (older specs read as they meant)
RESULT_VERSION = 1  # unversioned results (before 0.2) are version 0: fps was written "24/1"
EVENT_VERSION = 1
CLIP_RECORD_VERSION = 3  # 2: native_size, color_match, ambience and handles; 3: family and loras
EXTEND_REPORT_VERSION = 1  # what ``magic141 extend --json`` prints
SERVICE_FILE_VERSION = 1
MODELS_VERSION = 1  # GET /v1/models and ``magic141 info --families --json``: engine.families.catalog
API_VERSION = 1  # the service's URL prefix is /v{API_VERSION}

SOURCE_KINDS = ("image", "media", "none")
QUANTS = ("none", "int8", "fp8")
CODECS = {"h264": ".mp4", "prores": ".mov"}  # codec -> file suffix (encoders: engine/media.py)
MAX_SECONDS = 3600
MAX_AMBIENCE_SECONDS = 10  # the longest ambience carried under an extension (as Adobe's Generative Extend)
DEFAULT_AMBIENCE_SECONDS = float(MAX_AMBIENCE_SECONDS)  # a spec's ambience when it does not say
SIZE_MULTIPLE = 16  # height and width in a spec; a model may need a coarser multiple (it says so)
# Built into the engine; any other model is a path, or a repository id found in the Hugging Face cache.
BUILTIN_MODELS = ("world", "tiny", "tiny-wan", "tiny-hv15", "tiny-ltx2")
DEFAULT_MODEL = "world"  # trained on the procedural world (resources/world); "tiny" is random weights
LORA_TARGETS = ("transformer", "transformer_2")  # a LoRA goes into the DiT, or Wan 2.2's second expert
CONDITIONINGS = ("magic141", "diffusers", "world")  # engine/conditioning.py says what each is


def model_field(model: str) -> str:
    """A built-in model's name as is; a model folder or file as an absolute path (the engine has its own
    working directory)."""
    path = Path(model).expanduser()
    if model in BUILTIN_MODELS or (not path.exists() and _REPO_ID.fullmatch(model)):
        return model
    return str(path.resolve())


_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # "Wan-AI/Wan2.2-I2V-A14B-Diffusers"


def codec_for(path: str | PurePath, codec: str | None = None) -> str:
    """The codec asked for, else the one an output path's suffix implies (.mov: ProRes)."""
    if codec is not None:
        return codec
    return "prores" if PurePath(path).suffix.lower() == ".mov" else "h264"


# States and events ---------------------------------------------------------------------------------


class JobState(str, Enum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    CANCELLING = "CANCELLING"
    DONE = "DONE"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


class EventType(str, Enum):
    QUEUED = "queued"
    STARTED = "started"
    STEP = "step"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_EVENTS

    @classmethod
    def ending(cls, state: JobState) -> EventType:
        """The event that a job ending in ``state`` sends last."""
        return _ENDING[JobState(state)]


TERMINAL_STATES = frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELLED})
ACTIVE_STATES = frozenset({JobState.RUNNING, JobState.CANCELLING})
_ENDING = {JobState.DONE: EventType.FINISHED, JobState.FAILED: EventType.FAILED,
           JobState.CANCELLED: EventType.CANCELLED}
TERMINAL_EVENTS = frozenset(_ENDING.values())


# Versions -------------------------------------------------------------------------------------------


def _upgrade(data: object, kind: str, current: int, migrations: dict[int, Callable[[dict], dict]],
             *, unversioned: int | None = None) -> dict:
    """``data`` brought to version ``current``: older versions migrate one step at a time, a
    newer one is refused. ``unversioned`` is the version of data written without a version field."""
    if not isinstance(data, dict):
        raise InvalidInput(f"must be a JSON object, got {type(data).__name__}", field=kind)
    version = data.get("version", unversioned)
    if isinstance(version, bool) or not isinstance(version, int):
        raise InvalidInput(f"must be a whole number up to {current}, got {version!r}", field="version")
    if version > current:
        raise SchemaTooNew(f"this {kind} is version {version}, but this Magic141 reads up to version "
                           f"{current}: upgrade Magic141")
    data = dict(data)
    while version < current:
        if version not in migrations:
            raise InvalidInput(f"version {version} {kind}s can no longer be read", field="version")
        data = migrations[version](data)
        version += 1
    data["version"] = current
    return data


def _result_from_0(data: dict) -> dict:
    # Before versions: fps was written "24/1"; parse_rational reads that, so nothing else changes.
    return data


_RESULT_MIGRATIONS: dict[int, Callable[[dict], dict]] = {0: _result_from_0}
def _spec_from_1(data: dict) -> dict:
    # Version 2 added match_source and color_match; a version 1 spec keeps what it meant then.
    return {**data, "match_source": False, "color_match": 0.0}


def _spec_from_2(data: dict) -> dict:
    # Version 3 added ambience; a version 2 spec made video only.
    return {**data, "ambience": 0.0}


def _spec_from_3(data: dict) -> dict:
    # Version 4 added loras (a version 3 spec ran none, the default) and the "world" conditioning: the
    # world model's "magic141" was what "world" is now.
    if data.get("conditioning") == "magic141" and data.get("model", DEFAULT_MODEL) == "world":
        return {**data, "conditioning": "world"}
    return data


_SPEC_MIGRATIONS: dict[int, Callable[[dict], dict]] = {1: _spec_from_1, 2: _spec_from_2, 3: _spec_from_3}
_EVENT_MIGRATIONS: dict[int, Callable[[dict], dict]] = {}


# Field readers (each error names its field) ---------------------------------------------------------


def loras_json(loras) -> list[dict]:
    """(path, scale, into) tuples as the spec, result and clip record write them."""
    return [{"path": path, "scale": scale, "into": into} for path, scale, into in loras]


def _loras(data: dict) -> tuple[tuple[str, float, str], ...]:
    raw = data.get("loras", [])
    if not isinstance(raw, list):
        raise InvalidInput(f"must be a list of {{path, scale, into}}, got {raw!r}", field="loras")
    loras = []
    for item in raw:
        if not isinstance(item, dict) or set(item) - {"path", "scale", "into"}:
            raise InvalidInput(f"must be {{path, scale, into}} objects, got {item!r}", field="loras")
        path = _absolute_path(item.get("path"), "loras.path")
        if not path.endswith(".safetensors"):
            raise InvalidInput(f"must be a .safetensors file, got {path!r}", field="loras.path")
        scale = item.get("scale", 1.0)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not abs(scale) <= 100:
            raise InvalidInput(f"must be a number from -100 to 100, got {scale!r}", field="loras.scale")
        into = item.get("into", "transformer")
        if into not in LORA_TARGETS:
            raise InvalidInput(f"must be one of {', '.join(LORA_TARGETS)}, got {into!r}", field="loras.into")
        loras.append((path, float(scale), into))
    return tuple(loras)


def _optional_int(data: dict, name: str, minimum: int) -> int | None:
    raw = data.get(name)
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < minimum:
        raise InvalidInput(f"must be a whole number >= {minimum} or null, got {raw!r}", field=name)
    return raw


def _int(data: dict, name: str, minimum: int, default: int) -> int:
    value = _optional_int(data, name, minimum)
    return default if value is None else value


def _choice(data: dict, name: str, choices: tuple[str, ...] | dict, default: str | None) -> Any:
    raw = data.get(name, default)
    if raw is None and default is None:
        return None
    if raw not in choices:
        raise InvalidInput(f"must be one of {', '.join(choices)}, got {raw!r}", field=name)
    return raw


def _number(data: dict, name: str, default: float | None, *, minimum: float, inclusive: bool) -> float | None:
    raw = data.get(name, default)
    if raw is None:
        return None
    low_ok = raw >= minimum if inclusive else raw > minimum
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not low_ok:
        bound = f">= {minimum:g}" if inclusive else f"> {minimum:g}"
        raise InvalidInput(f"must be a number {bound}, got {raw!r}", field=name)
    return float(raw)


def _flag(data: dict, name: str, default: bool) -> bool:
    raw = data.get(name, default)
    if not isinstance(raw, bool):
        raise InvalidInput(f"must be true or false, got {raw!r}", field=name)
    return raw


def _fraction_of_one(data: dict, name: str, default: float) -> float:
    raw = data.get(name, default)
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not 0 <= raw <= 1:
        raise InvalidInput(f"must be a number from 0 to 1, got {raw!r}", field=name)
    return float(raw)


def _ambience(data: dict) -> float:
    value = _number(data, "ambience", DEFAULT_AMBIENCE_SECONDS, minimum=0, inclusive=True)
    assert value is not None
    if value > MAX_AMBIENCE_SECONDS:
        raise InvalidInput(f"must be at most {MAX_AMBIENCE_SECONDS} seconds, got {value:g}", field="ambience")
    return value


def _text(data: dict, name: str, default: str = "", *, required: bool = False) -> str:
    raw = data.get(name, default)
    if not isinstance(raw, str) or (required and not raw.strip()):
        raise InvalidInput("must be a non-empty string" if required else f"must be a string, got {raw!r}",
                           field=name)
    return raw


def _absolute_path(raw: object, name: str) -> str:
    if not isinstance(raw, str) or not raw or not PurePath(raw).is_absolute():
        raise InvalidInput(f"must be an absolute path, got {raw!r}", field=name)
    return raw


def _unknown(data: dict, known: set[str], kind: str, version: int) -> None:
    unknown = sorted(set(data) - known)
    if unknown:
        raise InvalidInput(f"is not a field of a version {version} {kind}", field=unknown[0])


# The job spec ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """What the job starts from: a still, a frame of a video (``time`` seconds in), or nothing."""

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

    @classmethod
    def from_json(cls, raw: object) -> Source:
        if not isinstance(raw, dict):
            raise InvalidInput(f"must be an object with a kind ({', '.join(SOURCE_KINDS)}), got {raw!r}",
                               field="source")
        kind = raw.get("kind")
        if kind not in SOURCE_KINDS:
            raise InvalidInput(f"must be one of {', '.join(SOURCE_KINDS)}, got {kind!r}", field="source.kind")
        if kind == "none":
            return cls("none")
        path = _absolute_path(raw.get("path"), "source.path")
        if kind == "image":
            return cls("image", path)
        return cls("media", path, parse_rational(raw.get("time"), "source.time", minimum=0))


def _plain_file_name(name: object) -> bool:
    """A file name the engine may create in ``output_dir``: no folders, not hidden, any language."""
    return (isinstance(name, str) and 0 < len(name.encode("utf-8")) <= 200 and name == name.strip()
            and not name.startswith(".") and not any(c in name for c in '/\\\0') and name.isprintable())


@dataclass(frozen=True)
class JobSpec:
    """One job, as every producer builds it and the engine reads it. Validated on construction."""

    source: Source
    prompt: str
    output_dir: str
    seconds: Fraction = Fraction(5)
    fps: Fraction = Fraction(24)
    seed: int = 0
    model: str = DEFAULT_MODEL
    steps: int | None = None  # None: the model's default
    quant: str = "none"
    height: int | None = None  # None: the model's bucket for the source's aspect
    width: int | None = None
    codec: str = "h264"
    output_name: str | None = None  # None: magic141_<job id><suffix>
    shift: float = 5.0
    guidance: float | None = None  # None: the model's default (1 = no CFG)
    negative_prompt: str = ""
    conditioning: str | None = None  # None: what the weights expect
    window_overlap: int = 2  # latent frames each sliding window carries into the next
    match_source: bool = True  # a continued clip comes out at its source's size (model size otherwise)
    color_match: float = 1.0  # 0-1: how far a continued clip's colour is matched to its source frame
    # The most seconds of sound under a clip continued from a video with sound: its ambience, carried on
    # (0: video only). At most MAX_AMBIENCE_SECONDS.
    ambience: float = DEFAULT_AMBIENCE_SECONDS
    # LoRAs fused into the model's weights, as (absolute path of a .safetensors file, scale, the
    # component it goes into: "transformer", or Wan 2.2's low-noise expert "transformer_2").
    loras: tuple[tuple[str, float, str], ...] = ()

    def __post_init__(self) -> None:
        # One validation for every way in: built in code or read from JSON.
        for name in ("seconds", "fps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (Fraction, int)):
                raise InvalidInput(f"must be an exact Fraction, got {value!r}", field=name)
            object.__setattr__(self, name, Fraction(value))
        JobSpec.from_json(self.to_json())

    @classmethod
    def from_json(cls, data: object) -> JobSpec:
        data = _upgrade(data, "job spec", SPEC_VERSION, _SPEC_MIGRATIONS)
        _unknown(data, {f.name for f in fields(cls)} | {"version"}, "job spec", SPEC_VERSION)
        seconds = parse_rational(data.get("seconds", "5"), "seconds", positive=True)
        if seconds > MAX_SECONDS:
            raise InvalidInput(f"must be at most {MAX_SECONDS}, got {data['seconds']!r}", field="seconds")
        seed = data.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
            raise InvalidInput(f"must be a whole number from 0 to 2**63-1, got {seed!r}", field="seed")
        model = data.get("model", DEFAULT_MODEL)
        if not isinstance(model, str) or not model:
            raise InvalidInput(f"must be {' or '.join(BUILTIN_MODELS)} or a model path, got {model!r}",
                               field="model")
        name = data.get("output_name")
        if name is not None and not _plain_file_name(name):
            raise InvalidInput(f"must be a plain file name without folders, got {name!r}",
                               field="output_name")
        height = _optional_int(data, "height", SIZE_MULTIPLE)
        width = _optional_int(data, "width", SIZE_MULTIPLE)
        for label, value in (("height", height), ("width", width)):
            if value is not None and value % SIZE_MULTIPLE:
                raise InvalidInput(f"must be a multiple of {SIZE_MULTIPLE}, got {value}", field=label)
        spec = object.__new__(cls)  # fields are checked; skip __post_init__'s second round
        values = dict(
            source=Source.from_json(data.get("source")),
            prompt=_text(data, "prompt", required=True),
            output_dir=_absolute_path(data.get("output_dir"), "output_dir"),
            seconds=seconds,
            fps=parse_rate(data.get("fps", "24")),
            seed=seed,
            model=model,
            steps=_optional_int(data, "steps", 1),
            quant=_choice(data, "quant", QUANTS, "none"),
            height=height,
            width=width,
            codec=_choice(data, "codec", CODECS, "h264"),
            output_name=name,
            shift=_number(data, "shift", 5.0, minimum=0, inclusive=False),
            guidance=_number(data, "guidance", None, minimum=1, inclusive=True),
            negative_prompt=_text(data, "negative_prompt"),
            conditioning=_choice(data, "conditioning", CONDITIONINGS, None),
            window_overlap=_int(data, "window_overlap", 1, 2),
            match_source=_flag(data, "match_source", True),
            color_match=_fraction_of_one(data, "color_match", 1.0),
            ambience=_ambience(data),
            loras=_loras(data),
        )
        for key, value in values.items():
            object.__setattr__(spec, key, value)
        return spec

    def to_json(self) -> dict:
        data = asdict(self)
        data.update(version=SPEC_VERSION, source=self.source.to_json(), seconds=rational_text(self.seconds),
                    fps=rational_text(self.fps),
                    loras=loras_json(self.loras))
        return data

    def replace(self, **changes: Any) -> JobSpec:
        return replace(self, **changes)

    @property
    def suffix(self) -> str:
        return CODECS[self.codec]

    def output_path(self, job_id: str) -> str:
        name = self.output_name or f"magic141_{job_id}"
        stem = name[: -len(self.suffix)] if name.endswith(self.suffix) else name
        return str(PurePath(self.output_dir) / f"{stem}{self.suffix}")


# Output names: the format and its parser, side by side ----------------------------------------------

OUTPUT_KINDS = ("ext", "text")  # continued from a frame | made from the prompt alone
_JOB_ID = re.compile(r"[A-Za-z0-9-]{1,64}")  # ids that go into file names: no "_" so the name parses back
_OUTPUT = re.compile(r"_(?:ext|text)_(?P<id>[A-Za-z0-9-]{1,64})\.[A-Za-z0-9]+$")


def _file_stem(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._-")[:60] or "clip"


def output_name(clip: str, kind: str, job_id: str, codec: str) -> str:
    """``<clip>_<kind>_<job id><suffix>``: the media file of a generated clip; ``job_id_of`` reads it back
    (hosts such as Resolve drop clip metadata, but keep file names)."""
    if kind not in OUTPUT_KINDS:
        raise InvalidInput(f"must be one of {', '.join(OUTPUT_KINDS)}, got {kind!r}", field="kind")
    if not _JOB_ID.fullmatch(job_id):
        raise InvalidInput(f"must be 1-64 characters of A-Z a-z 0-9 -, got {job_id!r}", field="job_id")
    return f"{_file_stem(clip)}_{kind}_{job_id}{CODECS[codec]}"


def job_id_of(file_name: str) -> str | None:
    """The job id in a name ``output_name`` made, or None for any other file."""
    match = _OUTPUT.search(PurePath(file_name).name)
    return match.group("id") if match else None


# The job result -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobResult:
    """What a finished job made: the file, its format, every setting actually used, stage timings."""

    path: str
    frames: int
    fps: Fraction
    width: int
    height: int
    codec: str
    windows: int = 1
    settings: dict = field(default_factory=dict)  # defaults resolved: steps, guidance, size, model...
    timings: dict = field(default_factory=dict)  # seconds per stage: load, encode, denoise, decode, write...

    @property
    def sound_frames(self) -> int:
        """How many frames from the media's start have sound (the source's ambience; 0: video only)."""
        value = self.settings.get("ambience_frames", 0)
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0

    def to_json(self) -> dict:
        data = asdict(self)
        data.update(version=RESULT_VERSION, fps=rational_text(self.fps))
        return data

    @classmethod
    def from_json(cls, data: object) -> JobResult:
        data = _upgrade(data, "job result", RESULT_VERSION, _RESULT_MIGRATIONS, unversioned=0)
        _unknown(data, {f.name for f in fields(cls)} | {"version"}, "job result", RESULT_VERSION)
        for name in ("path", "frames", "fps", "width", "height", "codec"):
            if data.get(name) is None:
                raise InvalidInput("is missing", field=name)
        for name in ("settings", "timings"):
            if not isinstance(data.get(name, {}), dict):
                raise InvalidInput(f"must be an object, got {data[name]!r}", field=name)
        return cls(
            path=_absolute_path(data.get("path"), "path"),
            frames=_int(data, "frames", 1, 1),
            fps=parse_rate(data.get("fps")),
            width=_int(data, "width", 1, 1),
            height=_int(data, "height", 1, 1),
            codec=_choice(data, "codec", CODECS, None),
            windows=_int(data, "windows", 1, 1),
            settings=dict(data.get("settings") or {}),
            timings=dict(data.get("timings") or {}),
        )


# Events ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """One moment of a job's life on the event stream. ``step`` events carry progress (and, when
    asked for, ``preview``: a small PNG as base64); ``finished`` the result; ``failed`` the reason."""

    job: str
    type: EventType
    seq: int = 0  # increasing per service process; 0 for an end read back from the queue's record
    time: float = 0.0
    step: int | None = None  # 1-based, of ``total`` in this window
    total: int | None = None
    window: int | None = None  # 1-based, of ``windows``
    windows: int | None = None
    elapsed: float | None = None
    eta: float | None = None
    preview: str | None = None
    result: JobResult | None = None
    reason: str | None = None
    field: str | None = None  # with ``failed``: the spec field at fault, for the front end to phrase
    attempt: int | None = None  # with ``started``
    worker: str | None = None
    priority: int | None = None  # with ``queued``

    @property
    def fraction(self) -> float:
        """Progress over all windows, 0..1."""
        return progress_fraction(self.step or 0, self.total or 0, self.window or 1, self.windows or 1)

    def to_json(self) -> dict:
        data: dict = {"version": EVENT_VERSION}
        for item in fields(self):
            value = getattr(self, item.name)
            if value is None:
                continue
            data[item.name] = value.to_json() if isinstance(value, JobResult) else (
                value.value if isinstance(value, Enum) else value)
        return data

    @classmethod
    def from_json(cls, data: object) -> Event:
        data = _upgrade(data, "event", EVENT_VERSION, _EVENT_MIGRATIONS)
        known = {f.name for f in fields(cls)}
        values = {key: value for key, value in data.items() if key in known}  # newer minor fields: ignored
        try:
            values["type"] = EventType(values.get("type"))
        except ValueError:
            names = ", ".join(t.value for t in EventType)
            raise InvalidInput(f"must be one of {names}, got {data.get('type')!r}", field="type") from None
        if not isinstance(values.get("job"), str):
            raise InvalidInput(f"must be a job id, got {data.get('job')!r}", field="job")
        if values.get("result") is not None:
            values["result"] = JobResult.from_json(values["result"])
        return cls(**values)

    @classmethod
    def ending(cls, job: str, state: JobState, result: dict | None, reason: str | None) -> Event:
        """The last event of a job that ended in ``state``, rebuilt from the queue's record."""
        return cls(job, EventType.ending(state), result=JobResult.from_json(result) if result else None,
                   reason=reason)


def progress_fraction(step: int, total: int, window: int = 1, windows: int = 1) -> float:
    """A job's progress over all its windows, 0..1, from the step/window counts its events carry."""
    if not total:
        return 0.0
    done = max(window - 1, 0) * total + step
    return min(1.0, done / (max(windows, 1) * total))


# The generated clip's record in a timeline ----------------------------------------------------------


def clip_record(job_id: str, spec: JobSpec, result: JobResult, *, source_clip: str,
                source_frame: int | None, **extra: object) -> dict:
    """What a generated clip keeps under ``metadata["magic141"]``: enough to redo it or make a variation."""
    native = [result.settings.get("width"), result.settings.get("height")]
    return {
        "version": CLIP_RECORD_VERSION, "job_id": job_id, "prompt": spec.prompt, "seed": spec.seed,
        "model": spec.model, "quant": spec.quant, "steps": result.settings.get("steps", spec.steps),
        "source_clip": source_clip, "source_frame": source_frame,
        "source_time": None if spec.source.time is None else rational_text(spec.source.time),
        "seconds": rational_text(spec.seconds),
        # The model's own frame size (the media's is the source's when matched) and the colour match used.
        "native_size": native if all(isinstance(n, int) for n in native) else None,
        "color_match": result.settings.get("color_match", spec.color_match),
        "ambience": result.settings.get("ambience"),  # what the media's sound is, or why it has none
        "family": result.settings.get("family"),  # which model family made it (engine/families)
        "loras": loras_json(spec.loras),
        **extra,
    }
