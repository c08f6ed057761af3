"""Tests for recipe configs: presets, overrides, type coercion, unknown keys."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from typing import Literal

import pytest
import yaml

from signstream import SignstreamError
from signstream.recipes.config import (
    NonNegativeInt,
    PositiveInt,
    Precision,
    Probability,
    parse_config,
    peak_memory,
    peak_rss_mb,
    save_config,
)
from signstream.recipes.runtime import accelerate_precision


@dataclass
class Demo:
    """A config used by these tests."""

    shards: str = ""
    splits: list[str] = field(default_factory=lambda: ["train"])
    batch_size: int = 2
    lr: float = 1e-3
    weights: str | None = None
    resume: bool = True


def test_overrides_are_coerced_to_field_types():
    cfg = parse_config(Demo, ["batch_size=8", "lr=0.5", "splits=dev,test", "resume=false", "weights=none"])
    assert cfg == Demo(batch_size=8, lr=0.5, splits=["dev", "test"], resume=False, weights=None)


def test_preset_then_command_line_override_wins(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("batch_size: 4\nsplits: [dev]\nshards: a/b\n")
    cfg = parse_config(Demo, ["--config", str(preset), "batch_size=16"])
    assert cfg.batch_size == 16 and cfg.splits == ["dev"] and cfg.shards == "a/b"


def test_unknown_key_is_rejected_naming_the_key_and_source(tmp_path):
    with pytest.raises(SignstreamError, match=r"unknown config key\(s\) bach_size in the command line"):
        parse_config(Demo, ["bach_size=3"])
    preset = tmp_path / "p.yaml"
    preset.write_text("nope: 1\n")
    with pytest.raises(SignstreamError, match=f"nope in {preset}"):
        parse_config(Demo, ["--config", str(preset)])


def test_bad_value_missing_file_and_stray_argument_are_one_line_errors(tmp_path):
    with pytest.raises(SignstreamError, match="cannot read 'x' as int"):
        parse_config(Demo, ["batch_size=x"])
    with pytest.raises(SignstreamError, match="config file not found"):
        parse_config(Demo, ["--config", str(tmp_path / "missing.yaml")])
    with pytest.raises(SignstreamError, match="expected key=value"):
        parse_config(Demo, ["--batch_size", "3"])


def test_saved_config_reloads_to_the_same_values(tmp_path):
    cfg = parse_config(Demo, ["splits=dev,test", "lr=0.1"])
    save_config(cfg, tmp_path / "config.yaml")
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["splits"] == ["dev", "test"]
    assert parse_config(Demo, ["--config", str(tmp_path / "config.yaml")]) == cfg


@dataclass
class Checked:
    """A config with checked fields."""

    workers: NonNegativeInt = 1
    rate: Probability = 0.1
    mode: Literal["dense", "window"] = "dense"
    sizes: list[PositiveInt] = field(default_factory=lambda: [1])
    limit: PositiveInt | None = None


def test_checked_fields_accept_bounds_and_refuse_values_outside_them():
    cfg = parse_config(Checked, ["workers=0", "rate=0", "mode=window", "sizes=1,2", "limit=none"])
    assert cfg == Checked(workers=0, rate=0.0, mode="window", sizes=[1, 2], limit=None)
    for arg, message in [
        ("workers=-1", "out of range"),
        ("rate=1", "out of range"),
        ("mode=foo", "not one of"),
        ("sizes=1,0", "out of range"),
        ("limit=0", "out of range"),
        ("workers=1.5", "as int"),
    ]:
        with pytest.raises(SignstreamError, match=message):
            parse_config(Checked, [arg])


def test_precision_is_one_vocabulary_in_every_recipe_and_accelerates_old_spelling_still_reads():
    from signstream.recipes.extract_features import ExtractConfig
    from signstream.recipes.finetune_ctc import FinetuneConfig
    from signstream.recipes.train_head import TrainHeadConfig

    for cls in (ExtractConfig, FinetuneConfig, TrainHeadConfig):
        assert cls().precision == "fp32"
        assert parse_config(cls, ["precision=no"]).precision == "fp32"
        assert parse_config(cls, ["precision=bf16"]).precision == "bf16"
        with pytest.raises(SignstreamError, match="'fp8' is not one of fp32, bf16, fp16"):
            parse_config(cls, ["precision=fp8"])
    assert [accelerate_precision(p) for p in ("fp32", "bf16", "fp16")] == ["no", "bf16", "fp16"]
    assert parse_config(WithPrecision, ["precision=fp16"]).precision == "fp16"


@dataclass
class WithPrecision:
    """A config with the shared precision field."""

    precision: Precision = "fp32"


def test_peak_rss_is_the_kernels_high_water_mark_of_self_and_of_children():
    before = peak_rss_mb()
    grab = "b = bytearray(200 * 2**20); b[::4096] = b'x' * len(b[::4096])"  # touch every page
    subprocess.run([sys.executable, "-c", grab], check=True)
    assert peak_rss_mb(children=True) >= 200  # the child's peak, not this process's
    assert before > 0 and peak_rss_mb() >= before
    assert abs(peak_memory()["peak_rss_mb"] - peak_rss_mb()) <= 0.1
