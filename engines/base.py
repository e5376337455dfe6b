"""The contract between the real-time server and every avatar engine.

Time model (shared by all engines and by ``realtime/``):

* Engines take mono float32 audio at ``SAMPLE_RATE`` (16 kHz) in [-1, 1].
* Video runs at ``FPS`` (25). Frame ``n`` shows the face for the audio samples
  ``[n * SAMPLES_PER_FRAME, (n + 1) * SAMPLES_PER_FRAME)`` of the stream fed so far.
* An engine may need ``lookahead_frames`` frames of audio *after* frame ``n``
  before it can emit frame ``n`` (feature context, motion windows). The server
  delays the returned audio by that amount so lips and sound line up.

``realtime/`` never imports torch; it only sees these dataclasses and protocols.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Protocol, Sequence, TypeVar, runtime_checkable

import numpy as np

if TYPE_CHECKING:  # engines.face imports this module
    from avatarstream.engines.face.landmarks import FaceLandmarks

SAMPLE_RATE = 16_000
FPS = 25
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640


class EngineError(Exception):
    """A problem the user can fix (bad image, missing weights, bad audio).

    The message is shown to the user as is; the HTTP layer maps it to 4xx.
    """


class NoFaceError(EngineError):
    """The portrait has no detectable face (human or animal)."""


class MissingWeightsError(EngineError):
    """A neural engine's checkpoint files are absent; the message names them."""


@dataclass(frozen=True)
class Portrait:
    """A source image as the engines receive it."""

    image: np.ndarray  # H x W x 3 uint8, RGB
    name: str = "portrait"
    kind: str = "auto"  # "human", "animal" or "auto"
    # The face in ``image`` when the caller already found it (``engines.face.detect_face`` run elsewhere, e.g. on
    # a machine with dlib): the lite and joyvasa engines then skip their own detection. None: they detect it.
    face: FaceLandmarks | None = None

    def __post_init__(self) -> None:
        img = self.image
        if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise EngineError("portrait image must be an H x W x 3 uint8 RGB array")
        if min(img.shape[:2]) < 64:
            raise EngineError(f"portrait image is too small ({img.shape[1]}x{img.shape[0]}); need at least 64x64")
        if self.face is not None:
            points = np.asarray(getattr(self.face, "points", None))
            if points.shape != (68, 2) or getattr(self.face, "kind", None) not in ("human", "animal"):
                raise EngineError("portrait face must be an engines.face.FaceLandmarks (68 points, kind human or animal)")
            size = np.array([img.shape[1], img.shape[0]], np.float64)  # (w, h)
            if not (np.isfinite(points).all() and (np.abs(points - size / 2) <= 1.5 * size).all()):
                raise EngineError(f"portrait face points lie far outside the {img.shape[1]}x{img.shape[0]} image; "
                                  "give them in the image's pixels")


@dataclass(frozen=True)
class AvatarFrame:
    """One rendered video frame on the session clock."""

    index: int  # frame number n on the stream clock (see module docstring)
    image: np.ndarray  # H x W x 3 uint8 RGB
    speaking: bool = False  # the engine judged this frame's audio to be speech
    mouth_open: float = 0.0  # engine's own mouth-opening estimate in [0, 1] (diagnostics)


@dataclass
class StageTimes:
    """Milliseconds spent per pipeline stage, accumulated by an engine stream."""

    ms: dict[str, float] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)

    def add(self, stage: str, ms: float) -> None:
        self.ms[stage] = self.ms.get(stage, 0.0) + ms
        self.calls[stage] = self.calls.get(stage, 0) + 1

    def mean_ms(self) -> dict[str, float]:
        return {k: self.ms[k] / max(1, self.calls[k]) for k in self.ms}


@runtime_checkable
class EngineStream(Protocol):
    """A per-session, stateful audio -> frames stream. Not thread-safe: one caller."""

    lookahead_frames: int
    size: int  # output frames are size x size

    def feed(self, audio: np.ndarray) -> list[AvatarFrame]:
        """Append audio (float32 mono 16 kHz, any length) and return the frames now complete.

        Frames come out in order, each index exactly once, indices starting at 0.
        """

    def flush(self) -> list[AvatarFrame]:
        """End of input: pad with silence as needed and return every remaining frame."""

    def interrupt(self) -> None:
        """Drop audio/motion not yet rendered; the face returns to idle motion.

        Frame indices keep counting: the clock never goes backwards.
        """

    def set_controls(self, controls: Mapping[str, Any]) -> dict[str, str]:
        """Apply live controls; return {name: reason} for those not supported."""

    def close(self) -> None:
        """Free resources."""


@runtime_checkable
class ClosedMouthRerender(Protocol):
    """An ``EngineStream`` that can render its newest frames again with the mouth closed (optional).

    A server sends frames some time after rendering them (its lip-sync delay); after ``interrupt()`` it
    asks for the frames already rendered but not yet sent again, so the mouth closes at once instead of
    after those frames. Only the mouth changes (closing within 2 frames); head motion and blinks are the
    frames' own, so nothing jumps.
    """

    def rerender_closed(self, since: int) -> list[AvatarFrame]:
        """Frames ``since`` .. the newest one returned, rendered again with the mouth closing; frames the
        stream no longer keeps are left out (it keeps at least ``RERENDER_KEEP_FRAMES``). Cheap (no model
        inference beyond the renderer); call after ``interrupt()``, on the stream's one thread."""


RERENDER_KEEP_FRAMES = 16  # the newest frames a ``ClosedMouthRerender`` stream can render again (640 ms)


@runtime_checkable
class AvatarEngine(Protocol):
    """An engine family (lite, joyvasa, ...): prepares portraits, opens streams."""

    name: str

    def open_stream(self, portrait: Portrait, *, size: int = 512, controls: Mapping[str, Any] | None = None) -> EngineStream:
        ...


@runtime_checkable
class OfflineRenderer(Protocol):
    """An engine that renders a whole audio file at once (``avatar render`` lets it write the MP4 itself)."""

    output_size: int  # the square frame size render_file writes

    def render_file(self, portrait: Portrait, audio16k: np.ndarray, out_path: str | Path,
                    progress: Any = True, *, size: int | None = None) -> Path:
        """Render mono float32 16 kHz ``audio16k`` spoken by ``portrait`` into the MP4 ``out_path``: one frame per
        ``SAMPLES_PER_FRAME`` samples (the last one may be partial), H.264 25 fps with the audio track.

        ``progress``: True shows a bar, False nothing, an object with ``update(n)`` is advanced by the frames made.
        ``size``: the square frame size to write (None: ``output_size``); EngineError for a size it cannot write."""


@dataclass(frozen=True)
class EngineCapabilities:
    """What an engine family does, declared without importing it (``engines.registry.engine_capabilities``).

    ``sizes``: the square frame sizes ``open_stream`` renders, e.g. ``(256, 512)`` or ``range(64, 2049)``;
    empty for an engine whose output size is fixed by its weights (``OfflineRenderer.output_size``).
    ``controls``: the live controls ``set_controls`` accepts, each with its inclusive (low, high) range.
    """

    name: str
    sizes: Sequence[int] = ()
    default_size: int | None = None
    streams: bool = True  # open_stream gives an EngineStream (False: files only)
    exported_stages: bool = False  # stages can run on exported runtimes (--backend / --engines-dir)
    offline_render: bool = False  # the engine is an OfflineRenderer
    needs_weights: bool = False  # --weights DIR is required
    controls: Mapping[str, tuple[float, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "controls", types.MappingProxyType(
            {k: (float(lo), float(hi)) for k, (lo, hi) in dict(self.controls).items()}))
        if self.default_size is not None and self.default_size not in self.sizes:
            raise ValueError(f"{self.name}: default_size {self.default_size} is not one of its sizes")
        if self.streams and not self.sizes:
            raise ValueError(f"{self.name}: a streaming engine declares the sizes it renders")

    def describe_sizes(self) -> str:
        """``"256 or 512"``, ``"64..2048"``, or the weights' resolution."""
        s = self.sizes
        if not s:
            return "the resolution of its weights"
        if isinstance(s, range) and len(s) > 2:
            return f"{s[0]}..{s[-1]}" if s.step == 1 else f"{s[0]}..{s[-1]} in steps of {s.step}"
        return ", ".join(map(str, s[:-1])) + (" or " if len(s) > 1 else "") + str(s[-1])

    def check_size(self, size: Any) -> int:
        """``size`` as an int if the engine renders it, else EngineError naming the sizes it does render."""
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or int(size) not in self.sizes:
            raise EngineError(f"the {self.name} engine renders {self.describe_sizes()} pixel frames, got {size!r}")
        return int(size)

    def validate_controls(self, controls: Mapping[str, Any]) -> tuple[dict[str, float], dict[str, str]]:
        """``validate_controls`` against this engine's ``controls``."""
        return validate_controls(controls, self.controls, self.name)


_O = TypeVar("_O", bound="EngineOptions")


def _coerce(value: Any, hint: Any) -> Any:
    """``value`` converted to the type ``hint`` (int, float, bool, str, Path, a class, ``X | None``, Any); TypeError if not."""
    if hint is Any or hint is object:
        return value
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        for arm in typing.get_args(hint):
            try:
                return _coerce(value, arm)
            except TypeError:
                continue
        raise TypeError(" or ".join(_type_name(a) for a in typing.get_args(hint) if a is not type(None)))
    if hint is type(None):
        if value is None:
            return None
        raise TypeError("None")
    if hint is bool:
        if isinstance(value, (bool, np.bool_)):
            return bool(value)
    elif hint is int:
        if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
            return int(value)
    elif hint is float:
        if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_)):
            return float(value)
    elif hint is Path:
        if isinstance(value, (str, os.PathLike)):
            return Path(value)
    elif isinstance(hint, type):
        if isinstance(value, hint):
            return value
    else:
        raise TypeError(f"unsupported option type {hint!r}")
    raise TypeError(_type_name(hint))


def _type_name(hint: Any) -> str:
    return {type(None): "None", Path: "a path", bool: "true/false", int: "an integer", float: "a number",
            str: "text"}.get(hint, getattr(hint, "__name__", str(hint)))


class EngineOptions:
    """Base of each engine family's frozen options dataclass (``LiteOptions``, ``JoyVasaOptions`` ...).

    The dataclass lists exactly the options the engine accepts, with their types and defaults; ``parse``
    checks names and types. ``None`` stands for "not given": the option keeps its default.
    """

    engine: ClassVar[str] = "?"

    @classmethod
    def option_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]

    @classmethod
    def parse(cls: type[_O], options: Mapping[str, Any]) -> _O:
        """Options from keyword values: unknown names or wrong types -> EngineError naming them."""
        names = cls.option_names()
        given = {k: v for k, v in options.items() if v is not None}
        unknown = [k for k in given if k not in names]
        if unknown:
            raise EngineError(f"the {cls.engine} engine has no option {', '.join(map(repr, unknown))}; "
                              f"it accepts: {', '.join(names)}")
        hints = typing.get_type_hints(cls)
        values = {}
        for name, value in given.items():
            try:
                values[name] = _coerce(value, hints[name])
            except TypeError as exc:
                raise EngineError(f"the {cls.engine} engine's option {name!r} must be {exc}, "
                                  f"got {type(value).__name__} {value!r}") from None
        return cls(**values)

    @classmethod
    def build(cls: type[_O], options: "_O | None", overrides: Mapping[str, Any]) -> _O:
        """An engine constructor's options: an options object and/or keyword values (checked by ``parse``)."""
        if options is None:
            return cls.parse(overrides)
        if not isinstance(options, cls):
            raise EngineError(f"the {cls.engine} engine takes {cls.__name__}, got {type(options).__name__}")
        if not overrides:
            return options
        current = {name: getattr(options, name) for name in cls.option_names()}
        return cls.parse({**current, **overrides})


def check_audio(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Validate and normalise engine input audio; raise EngineError with a clear message."""
    if sample_rate != SAMPLE_RATE:
        raise EngineError(f"audio must be {SAMPLE_RATE} Hz, got {sample_rate} Hz (resample first)")
    a = np.asarray(audio)
    if a.ndim == 2 and 1 in a.shape:
        a = a.reshape(-1)
    if a.ndim != 1:
        raise EngineError(f"audio must be mono (1-D), got shape {a.shape}")
    if a.dtype == np.int16:
        a = a.astype(np.float32) / 32768.0
    elif a.dtype != np.float32:
        a = a.astype(np.float32)
    if a.size and not np.isfinite(a).all():
        raise EngineError("audio contains NaN or infinite samples")
    return a


def validate_controls(
    controls: Mapping[str, Any], supported: Mapping[str, tuple[float, float]], engine_name: str
) -> tuple[dict[str, float], dict[str, str]]:
    """Split live controls into accepted numeric values and {name: reason} for the rejected ones.

    ``supported`` maps each control an engine understands to its inclusive (low, high) range.
    """
    ok: dict[str, float] = {}
    rejected: dict[str, str] = {}
    for name, value in controls.items():
        if name not in supported:
            rejected[name] = f"not supported by the {engine_name} engine (supported: {', '.join(supported)})"
            continue
        lo, hi = supported[name]
        try:
            v = float(value)
        except (TypeError, ValueError):
            rejected[name] = f"must be a number in [{lo}, {hi}]"
            continue
        if not np.isfinite(v) or not lo <= v <= hi:
            rejected[name] = f"must be in [{lo}, {hi}], got {value!r}"
            continue
        ok[name] = v
    return ok, rejected
