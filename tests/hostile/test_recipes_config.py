"""Hostile configs: every bad value is one line on stderr, exit 2, and nothing in ``out``.

Each case was a traceback, or was accepted, or was refused only after
``config.yaml``/``glosses.txt`` had been written to ``out``.
"""

from __future__ import annotations

import pytest

from signstream.tools.cli import main as cli

pytestmark = pytest.mark.hostile

EXTRACT = [
    "backbone=s3d",
    "stop_after=4",
    "image_size=32",
    "backend=pyav",
    "num_workers=0",
    "progress=false",
    "splits=dev",
]
FINETUNE = [
    "backbone=s3d",
    "stop_after=4",
    "image_size=32",
    "max_frames=16",
    "batch_size=2",
    "num_workers=0",
    "head=linear",
    "epochs=1",
    "max_steps_per_epoch=1",
]


def _text_file(tmp_path, name):
    path = tmp_path / name
    path.write_text("these are not weights\n")
    return path


def _run(recipe, packed, tmp_path, extra):
    out = tmp_path / "out"
    common = {
        "extract_features": [f"shards={packed}", *EXTRACT],
        "finetune_ctc": [f"shards={packed}", *FINETUNE],
        "train_head": [f"features={tmp_path}"],
    }[recipe]
    return cli([recipe, *common, f"out={out}", *extra]), out


def _assert_one_line(one_line, *words):
    line = one_line()
    for w in words:
        assert w in line, line


@pytest.mark.parametrize(
    "recipe, extra, words",
    [
        ("extract_features", ["dtype=bogus"], ["'dtype'", "bogus"]),
        ("extract_features", ["mode=foo"], ["'mode'", "foo"]),
        ("extract_features", ["backend=foo"], ["'backend'", "foo"]),
        ("extract_features", ["batch_size=0"], ["'batch_size'", "out of range"]),
        ("extract_features", ["num_workers=-1"], ["'num_workers'", "out of range"]),
        ("extract_features", ["precision=fp8"], ["'precision'"]),
        ("extract_features", ["prefix=../elsewhere"], ["'prefix'"]),
        ("extract_features", ["splits=dev,../../x"], ["'splits'"]),
        ("finetune_ctc", ["grad_accum=0"], ["'grad_accum'", "out of range"]),
        ("finetune_ctc", ["precision=fp8"], ["'precision'", "fp8"]),
        ("finetune_ctc", ["epochs=-1"], ["'epochs'", "out of range"]),
        ("finetune_ctc", ["max_steps_per_epoch=0"], ["'max_steps_per_epoch'", "out of range"]),
        ("finetune_ctc", ["num_workers=-1"], ["'num_workers'"]),
        ("finetune_ctc", ["batch_size=0"], ["'batch_size'"]),
        ("finetune_ctc", ["backend=foo"], ["'backend'"]),
        ("finetune_ctc", ["dropout=1.5"], ["'dropout'"]),
        ("finetune_ctc", ["lr=nan"], ["'lr'"]),
        ("finetune_ctc", ["head=rnn"], ["'head'", "rnn"]),
        ("train_head", ["epochs=0"], ["'epochs'"]),
        ("train_head", ["format=pickle"], ["'format'", "pickle"]),
        ("train_head", ["decoder=magic"], ["'decoder'", "magic"]),
        ("train_head", ["cleanup=nope"], ["'cleanup'", "nope"]),
    ],
)
def test_bad_value_is_refused_with_one_line_before_out_is_created(packed, tmp_path, one_line, recipe, extra, words):
    code, out = _run(recipe, packed, tmp_path, extra)
    assert code == 2
    _assert_one_line(one_line, *words)
    assert not out.exists()


@pytest.mark.parametrize(
    "recipe, key, words",
    [
        ("extract_features", "weights", ["cannot read checkpoint"]),
        ("extract_features", "checkpoint", ["not a safetensors file"]),
        ("finetune_ctc", "weights", ["cannot read checkpoint"]),
    ],
)
@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_a_text_file_as_weights_or_checkpoint_is_one_line_before_out_is_written(
    packed, tmp_path, one_line, recipe, key, words, suffix
):
    text = _text_file(tmp_path, f"model{suffix}")
    code, out = _run(recipe, packed, tmp_path, [f"{key}={text}"])
    assert code == 2
    _assert_one_line(one_line, text.name, *words)
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize(
    "yaml_text, words",
    [
        ("splits: 5\n", ["'splits'", "expected a list"]),
        ("batch_size: [1, 2]\n", ["'batch_size'", "a list"]),
        ("image_size: 1.5\n", ["'image_size'", "as int"]),
        ("batch_size: true\n", ["'batch_size'"]),
        ("prefix: {a: 1}\n", ["'prefix'", "a mapping"]),
    ],
)
def test_yaml_values_of_the_wrong_kind_are_one_line_errors(packed, tmp_path, one_line, yaml_text, words):
    preset = tmp_path / "preset.yaml"
    preset.write_text(yaml_text)
    code, out = _run("extract_features", packed, tmp_path, ["--config", str(preset)])
    assert code == 2
    _assert_one_line(one_line, *words)
    assert not out.exists()


def test_an_out_that_is_a_file_is_a_one_line_error_and_the_file_is_untouched(packed, tmp_path, one_line):
    out = tmp_path / "out"
    out.write_text("mine\n")
    assert cli(["extract_features", f"shards={packed}", *EXTRACT, f"out={out}"]) == 2
    _assert_one_line(one_line, "is a file")
    assert out.read_text() == "mine\n"
