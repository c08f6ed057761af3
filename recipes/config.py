"""Typed recipe configs: a dataclass per recipe, YAML presets, ``key=value`` overrides.

Every recipe declares its config as a dataclass. :func:`parse_config` reads
``--config PRESET.yaml`` (optional) then ``key=value`` overrides from the
command line, coerces each value to the field's type, and rejects unknown keys
with a one-line :class:`signstream.SignstreamError`. The resolved config is
saved beside the outputs with :func:`save_config`. Lists are written
comma-separated on the command line (``writers=npy,signjoey``).

Fields may carry checks, so that every recipe refuses a bad value with one
line before it touches its output folder: ``Literal[...]`` choices,
``Annotated[int, Range(1)]`` bounds, ``Annotated[str, Choice(HEADS, "head")]``
names looked up in a registry. YAML values of the wrong kind (a number where
a list is expected, a list where a number is) are refused the same way.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

import signstream
from signstream import SignstreamError
from signstream.loaders import memory
from signstream.loaders.fileio import atomic_write
from signstream.loaders.remote import redact
from signstream.loaders.transform import MAX_INPUT_SIDE
from signstream.recipes.trackers import Available

C = TypeVar("C")


@dataclasses.dataclass(frozen=True)
class Range:
    """Bounds of a numeric config field: ``lo <= value`` (``<`` when ``open_lo``), same for ``hi``."""

    lo: float | None = None
    hi: float | None = None
    open_lo: bool = False
    open_hi: bool = False

    def check(self, name: str, value: Any) -> None:
        low = self.lo is not None and (value <= self.lo if self.open_lo else value < self.lo)
        high = self.hi is not None and (value >= self.hi if self.open_hi else value > self.hi)
        if low or high:
            raise SignstreamError(f"config key {name!r}: {value!r} is out of range ({self.describe()})")

    def describe(self) -> str:
        parts = []
        if self.lo is not None:
            parts.append(f"{'>' if self.open_lo else '>='} {self.lo:g}")
        if self.hi is not None:
            parts.append(f"{'<' if self.open_hi else '<='} {self.hi:g}")
        return " and ".join(parts)


@dataclasses.dataclass(frozen=True)
class Choice:
    """A name a table must hold: ``Choice(HEADS, "head")``, ``Choice(CLEANUPS, "cleanup")``."""

    table: dict
    what: str = "name"

    def check(self, name: str, value: Any) -> None:
        try:
            signstream.lookup(self.table, value, self.what)
        except SignstreamError as exc:
            raise SignstreamError(f"config key {name!r}: {exc}") from None


@dataclasses.dataclass(frozen=True)
class Matches:
    """A string that must fully match ``pattern`` (names that become file names)."""

    pattern: str
    meaning: str

    def check(self, name: str, value: Any) -> None:
        import re

        if not re.fullmatch(self.pattern, str(value)):
            raise SignstreamError(f"config key {name!r}: {value!r} is not {self.meaning}")


@dataclasses.dataclass(frozen=True)
class Renamed:
    """Older spellings of a choice, accepted and replaced by the current name before the checks run."""

    old: dict[str, str]

    def rename(self, value: Any) -> Any:
        return self.old.get(value, value) if isinstance(value, str) else value

    def check(self, name: str, value: Any) -> None:
        """Nothing to check: the renaming is done by :meth:`rename`."""


# Shorthands used by the recipe configs.
FileStem = typing.Annotated[str, Matches(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", "a plain file name (letters, digits, _ . -)")]
PositiveInt = typing.Annotated[int, Range(1)]
ImageSize = typing.Annotated[int, Range(1, MAX_INPUT_SIDE)]  # side of the square frames a backbone gets
NonNegativeInt = typing.Annotated[int, Range(0)]
PositiveFloat = typing.Annotated[float, Range(0, open_lo=True)]
NonNegativeFloat = typing.Annotated[float, Range(0)]
Probability = typing.Annotated[float, Range(0, 1, open_hi=True)]
Fraction = typing.Annotated[float, Range(0, 1)]
# Compute precision in every recipe: fp32 | bf16 | fp16 ("no", Accelerate's name for fp32, is read as fp32).
Precision = typing.Annotated[typing.Literal["fp32", "bf16", "fp16"], Renamed({"no": "fp32"})]
# Where a recipe computes: auto (CUDA when there is one, else the CPU), cpu, cuda, or cuda:N (GPU N).
Device = typing.Annotated[str, Matches(r"auto|cpu|cuda(:\d+)?", "a device (auto, cpu, cuda or cuda:N)")]
# A training step whose loss or gradient is NaN/inf: stop the run (one line naming it), or skip
# the step (no backward, no optimizer step) and count it in the metrics. See recipes/guards.py.
NonFinite = typing.Literal["stop", "skip"]
# Experiment trackers a recipe logs to (Accelerate's names), each checked to be installed; none: no tracker.
Trackers = list[typing.Annotated[str, Available()]] | None


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", tuple: "a list", bool: "a boolean"}.get(type(value), repr(value))


def _coerce(name: str, value: Any, tp: Any) -> Any:
    """Convert a YAML or command-line value to the field type ``tp`` and run its checks."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        base, *checks = typing.get_args(tp)
        for check in checks:
            value = check.rename(value) if hasattr(check, "rename") else value
        result = _coerce(name, value, base)
        if result is not None:
            for check in checks:
                for item in result if isinstance(result, list) else [result]:
                    check.check(name, item)
        return result
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        return _coerce(name, value, args[0])
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise SignstreamError(f"config key {name!r}: {value!r} is not one of {', '.join(map(str, choices))}")
        return value
    if origin in (list, tuple):
        (item,) = typing.get_args(tp)[:1] or (str,)
        if isinstance(value, str):
            items = value.split(",")
        elif isinstance(value, (list, tuple)):
            items = list(value)
        else:
            raise SignstreamError(f"config key {name!r}: expected a list, got {_kind(value)}")
        return [_coerce(name, v.strip() if isinstance(v, str) else v, item) for v in items if v != ""]
    if isinstance(value, (dict, list, tuple)):
        raise SignstreamError(f"config key {name!r}: expected {getattr(tp, '__name__', tp)}, got {_kind(value)}")
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if tp in (int, float) and isinstance(value, bool):
            raise ValueError(value)  # YAML `yes` is not a number
        if tp is int:
            number = float(value) if isinstance(value, float) else value
            if isinstance(number, float) and not number.is_integer():
                raise ValueError(value)
            return int(number)
        if tp is float:
            result = float(value)
            if result != result or result in (float("inf"), float("-inf")):
                raise ValueError(value)
            return result
        if tp is str:
            return str(value)
    except (TypeError, ValueError, OverflowError):
        raise SignstreamError(f"config key {name!r}: cannot read {value!r} as {tp.__name__}") from None
    return value


def _apply(cfg: C, values: dict, source: str) -> C:
    hints = typing.get_type_hints(type(cfg), include_extras=True)
    known = {f.name for f in dataclasses.fields(cfg)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise SignstreamError(
            f"unknown config key(s) {', '.join(unknown)} in {source} (known: {', '.join(sorted(known))})"
        )
    return dataclasses.replace(cfg, **{k: _coerce(k, v, hints[k]) for k, v in values.items()})


def parse_config(cls: type[C], argv: list[str] | None = None) -> C:
    """Build a ``cls`` config from ``--config FILE`` and ``key=value`` arguments.

    Raises:
        SignstreamError: unreadable preset, unknown key, bad value, stray argument.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = cls()
    if "--help" in argv or "-h" in argv:
        print(describe(cls))
        raise SystemExit(0)
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise SignstreamError("--config needs a YAML file")
        path = Path(argv[i + 1])
        del argv[i : i + 2]
        cfg = _apply(cfg, load_yaml(path), str(path))
    overrides = {}
    for arg in argv:
        if "=" not in arg or arg.startswith("-"):
            raise SignstreamError(f"expected key=value, got {arg!r}")
        key, value = arg.split("=", 1)
        overrides[key.strip()] = value
    return _apply(cfg, overrides, "the command line")


def load_yaml(path: Path) -> dict:
    """Read a YAML preset (a mapping); missing or malformed files are one-line errors."""
    if not path.is_file():
        raise SignstreamError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SignstreamError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise SignstreamError(f"{path}: expected a mapping of config keys")
    return data


def save_config(cfg: Any, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML, atomically (secrets in URLs replaced by ``***``)."""
    with atomic_write(path, "w") as f:
        yaml.safe_dump(redact(dataclasses.asdict(cfg)), f, sort_keys=False)


def describe(cls: type) -> str:
    """A ``--help`` text listing the config keys, types and defaults."""
    hints = typing.get_type_hints(cls)
    lines = [
        f"{cls.__name__}: {(cls.__doc__ or '').strip().splitlines()[0]}",
        "usage: --config PRESET.yaml key=value ...",
        "",
    ]
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        tp = getattr(hints[f.name], "__name__", str(hints[f.name]))
        lines.append(f"  {f.name:<18} {tp:<14} default {default!r}")
    presets = list_presets(cls.__module__.rsplit(".", 1)[-1])
    if presets:
        lines += ["", f"presets (in {PRESETS.parent.name}/{PRESETS.name}/, pass with --config):"]
        lines += [f"  {name:<36} {header}" for name, header in presets]
    return "\n".join(lines)


PRESETS = Path(__file__).resolve().parent / "configs"


def list_presets(recipe: str, folder: Path = PRESETS) -> list[tuple[str, str]]:
    """The shipped presets of ``recipe`` as ``(file name, first header comment line)``.

    A preset belongs to a recipe when its name starts with the recipe's name or
    its first word and a dash (``finetune_ctc-*.yaml``, ``extract-*.yaml``).
    """
    prefixes = {recipe + "-", recipe.split("_")[0] + "-"}
    found = []
    for path in sorted(folder.glob("*.yaml")):
        if any(path.name.startswith(p) for p in prefixes):
            first = next((ln for ln in path.read_text().splitlines() if ln.strip()), "")
            found.append((path.name, first.lstrip("#").strip() if first.startswith("#") else ""))
    return found


def peak_rss_mb(children: bool = False) -> float:
    """Peak RSS (MB, i.e. MiB) of this process or of its largest waited-for child: :func:`memory.peak_rss_mib`."""
    return memory.peak_rss_mib(children)


def peak_memory() -> dict:
    """:func:`memory.peak_memory` under the recipes' output keys (``peak_rss_mb``, ``cuda_max_allocated_mb``)."""
    return {key.replace("_mib", "_mb"): value for key, value in memory.peak_memory().items()}
