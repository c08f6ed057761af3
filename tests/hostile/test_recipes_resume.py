"""Hostile reruns: an output folder is resumed only by the configuration that wrote it,
``overwrite=true`` deletes only what the project wrote, stray temporary files go,
and fine-tuning resumes exactly with a loader worker and dropout.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from signstream.loaders.feature_writers import WRITERS, write_video
from signstream.tools.cli import main as cli

pytestmark = pytest.mark.hostile

EXTRACT = [
    "backbone=s3d",
    "image_size=32",
    "backend=pyav",
    "num_workers=0",
    "progress=false",
    "splits=dev",
    "writers=npy,signjoey",
    "dtype=float32",
    "calibrate_bn=2",
]
FINETUNE = [
    "backbone=s3d",
    "stop_after=4",
    "image_size=32",
    "max_frames=16",
    "batch_size=2",
    "head=linear",
    "lr=3e-3",
    "backbone_lr=3e-3",
    "warmup_steps=1",
    "freeze=2",
    "seed=1",
    "max_steps_per_epoch=2",
]


def _extract(packed, out, *extra):
    return cli(["extract_features", f"shards={packed}", f"out={out}", *EXTRACT, *extra])


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def extracted(packed, tmp_path_factory):
    """A finished 832-d extraction of the dev split."""
    out = tmp_path_factory.mktemp("ext832")
    assert _extract(packed, out, "stop_after=4") == 0
    return out


def test_extraction_killed_then_rerun_with_another_model_is_refused_and_changes_nothing(
    packed, extracted, tmp_path, one_line
):
    out = tmp_path / "out"
    shutil.copytree(extracted, out)
    for p in sorted(out.glob("dev/*.npy"))[1:]:  # the run was killed after its first video
        p.unlink()
        p.with_suffix(".json").unlink()
    (out / "summary.json").unlink()
    before = _snapshot(out)
    assert _extract(packed, out, "stop_after=2") == 2
    line = one_line()
    assert "another configuration" in line and "stop_after" in line and "overwrite=true" in line
    assert _snapshot(out) == before


def test_overwrite_restarts_deleting_only_files_the_project_wrote(packed, extracted, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(extracted, out)
    mine = {
        "notes.txt": b"my notes",
        "dev/mine.npy": b"not features",
        "dev/mine.json": b"{}",
        "dev/.draft.tmp": b"user temp",
    }
    for name, data in mine.items():
        (out / name).write_bytes(data)
    assert _extract(packed, out, "stop_after=2", "overwrite=true") == 0
    for name, data in mine.items():
        assert (out / name).read_bytes() == data, name
    dims = {np.load(p).shape[1] for p in out.glob("dev/*.npy") if p.name != "mine.npy"}
    assert dims == {192}  # s3d cut after block 2; nothing of the 832-d run is left
    summary = json.loads((out / "summary.json").read_text())
    assert summary["splits"]["dev"]["resumed"] == 0 and summary["feature_dim"] == 192


def test_rerun_of_the_same_configuration_resumes_and_removes_only_our_stray_temp_files(packed, extracted, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(extracted, out)
    ours = [out / "dev" / ".x_1.npy.a1b2c3d4.tmp", out / ".summary.json.tmp", out / ".features.dev.zz99yy88.tmp"]
    theirs = [out / "dev" / ".mine.txt.a1b2c3d4.tmp", out / ".notes.tmp"]
    for p in ours + theirs:
        p.write_bytes(b"partial")
    assert _extract(packed, out, "stop_after=4") == 0
    assert not any(p.exists() for p in ours)
    assert all(p.exists() for p in theirs)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["splits"]["dev"]["resumed"] == 3 and summary["splits"]["dev"]["videos"] == 0


def test_extraction_into_another_runs_out_with_changed_weights_file_is_refused(packed, tmp_path, one_line):
    out = tmp_path / "out"
    out.mkdir()
    (out / "fingerprint.json").write_text(
        json.dumps(
            {
                "recipe": "extract_features",
                "fingerprint": {"model": {"backbone": "s3d", "weights": "0" * 64}, "options": {}, "shards": {}},
                "config": {},
            }
        )
    )
    before = _snapshot(out)
    assert _extract(packed, out, "stop_after=4") == 2
    assert "another configuration" in one_line()
    assert _snapshot(out) == before


def _features(root: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    for split, n in (("train", 6), ("dev", 2), ("test", 2)):
        for i in range(n):
            frames = rng.normal(size=(8, 6)).astype(np.float32)
            write_video(root, split, f"{split}_{i}", {"name": f"{split}_{i}", "gloss": "AA BB"}, frames, "float32")
        WRITERS["npy"](root, root, split)
    (root / "glosses.txt").write_text("AA\nBB\n")
    return root


def test_head_training_never_resumes_another_configurations_checkpoints(tmp_path, capsys, one_line):
    out = tmp_path / "run"
    base = [f"features={_features(tmp_path / 'a', 0)}", f"out={out}", "head=linear", "epochs=1", "cleanup=none"]
    assert cli(["train_head", *base]) == 0
    capsys.readouterr()
    before = _snapshot(out)
    assert cli(["train_head", *base, "lr=0.01"]) == 2
    assert "lr" in one_line()
    other = [f"features={_features(tmp_path / 'b', 1)}", *base[1:]]
    assert cli(["train_head", *other]) == 2  # same config, other features
    assert "data" in one_line()
    assert _snapshot(out) == before
    assert cli(["train_head", *other, "overwrite=true"]) == 0
    assert "resumed" not in capsys.readouterr().out


@pytest.mark.slow
def test_finetune_rerun_with_another_config_is_refused_and_overwrite_starts_over(packed, tmp_path, capsys, one_line):
    out = tmp_path / "ft"
    args = ["finetune_ctc", f"shards={packed}", f"out={out}", *FINETUNE, "epochs=1", "num_workers=0"]
    assert cli(args) == 0
    capsys.readouterr()
    before = _snapshot(out)
    assert cli([*args, "dropout=0.5"]) == 2
    assert "dropout" in one_line()
    assert _snapshot(out) == before
    assert cli([*args, "dropout=0.5", "overwrite=true"]) == 0
    assert "resumed" not in capsys.readouterr().out
    config = (out / "config.yaml").read_text()
    assert "dropout: 0.5" in config


@pytest.mark.slow
def test_finetune_resume_with_a_loader_worker_and_dropout_gives_identical_tensors(packed, tmp_path):
    args = [f"shards={packed}", *FINETUNE, "epochs=2", "num_workers=1", "dropout=0.3"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert cli(["finetune_ctc", *args, f"out={straight}"]) == 0
    shutil.copytree(straight, resumed)  # fingerprint.json holds no path: a copy is the same run
    # this run "died" after epoch 0 was checkpointed; rerun the same command
    shutil.rmtree(resumed / "checkpoints" / "epoch_001")
    (resumed / "metrics.json").unlink()
    assert cli(["finetune_ctc", *args, f"out={resumed}"]) == 0
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys()
    differ = [k for k in a if not (a[k] == b[k]).all()]
    assert differ == []
    la = [h["train_loss"] for h in json.loads((straight / "metrics.json").read_text())["history"]]
    lb = [h["train_loss"] for h in json.loads((resumed / "metrics.json").read_text())["history"]]
    assert la == lb
