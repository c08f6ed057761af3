"""Each recipe for a few steps on a chosen ``device=`` and ``precision=``.

Every run here is in-process, with the fixtures and arguments of the recipe's
own tests (``test_extract_features.py``, ``test_finetune_ctc.py``,
``test_train_head.py``); the CPU variants run everywhere, the ``cuda`` ones
differ only in ``device=``. A spy on the model's forward records, for every
call, the devices of its inputs and weights and the autocast dtype in force,
so each test proves where the recipe computed and in what precision, not only
that it finished.

Extraction features are compared with a CPU fp32 run of the same
configuration: worst relative error per feature vector at most 32 unit
roundoffs of the coarsest arithmetic in the run (bf16, fp16, or, on CUDA,
TF32: the fp32 parts, BatchNorm calibration included, run in TF32 by
default), and at least u/4 for a low precision (it really ran). The reasons
for 32 u are in ``tests/models/test_precision.py``; here too the backbone is
cut after block 3 (``stop_after=3``), where the error measured on the CPU is
7-14 u for S3D (at ``stop_after=4`` it is 150-200 u: random-weight
amplification, not arithmetic).

Note: Accelerate applies no autocast for ``mixed_precision="fp16"`` on the
CPU (fp16 autocast is for GPUs there), so the training recipes' fp16 runs are
CUDA-only; extraction's fp16 is ``torch.autocast`` and runs on the CPU too.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from signstream.models import create_model
from signstream.models.ctc import VideoCTC, load_backbone
from signstream.models.head import RecognitionHead
from signstream.models.s3d import S3D
from signstream.tools.cli import main as cli
from tests.recipes.test_extract_features import BASE as EXTRACT_BASE
from tests.recipes.test_extract_features import _outputs
from tests.recipes.test_finetune_ctc import BASE as FINETUNE_BASE
from tests.recipes.test_train_head import ARGS as HEAD_ARGS
from tests.recipes.test_train_head import make_features
from tests.tolerance import AUTOCAST, FACTOR, UNIT_ROUNDOFF, arithmetic, worst_relative_error

CUDA = pytest.mark.cuda
TWO_GPUS = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="cuda:1 needs at least 2 CUDA devices")
GPU1 = pytest.param("cuda:1", "fp32", marks=[CUDA, TWO_GPUS], id="cuda:1-fp32")
RUNS = [
    pytest.param("cpu", "fp32", id="cpu-fp32"),
    pytest.param("cpu", "bf16", id="cpu-bf16"),
    pytest.param("cuda", "fp32", marks=CUDA, id="cuda-fp32"),
    pytest.param("cuda", "bf16", marks=CUDA, id="cuda-bf16"),
    pytest.param("cuda", "fp16", marks=CUDA, id="cuda-fp16"),
    GPU1,
]
EXTRACT = [*EXTRACT_BASE, "stop_after=3", "splits=dev", "writers=npy"]


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Accelerate keeps one device and precision per process; each run here picks its own."""
    from accelerate.state import AcceleratorState, GradientState

    def reset():
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()

    current = torch.cuda.current_device() if torch.cuda.is_available() else None
    reset()
    yield
    reset()
    if current is not None:  # device=cuda:1 made GPU 1 current
        torch.cuda.set_device(current)


def _resolved(device: str) -> torch.device:
    """The device a recipe given ``device`` computes on (``cuda``: the current GPU)."""
    d = torch.device(device)
    return torch.device("cuda", torch.cuda.current_device()) if d.type == "cuda" and d.index is None else d


def _spy(monkeypatch, cls, when=lambda: True) -> list[tuple[set, torch.dtype | None]]:
    """Record, per call of ``cls.forward``/``forward_features``: input and weight devices, autocast dtype."""
    name = "forward_features" if hasattr(cls, "forward_features") else "forward"
    original = getattr(cls, name)
    calls = []

    def spy(self, x, *args, **kwargs):
        if when():
            devices = {t.device for t in (x, *args) if isinstance(t, torch.Tensor)}
            devices |= {p.device for p in self.parameters()}
            kind = x.device.type
            calls.append((devices, torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else None))
        return original(self, x, *args, **kwargs)

    monkeypatch.setattr(cls, name, spy)
    return calls


def _assert_ran_on(calls, device: str, precision: str) -> None:
    assert calls, "the model was never called"
    assert {d for devices, _ in calls for d in devices} == {_resolved(device)}
    assert {dtype for _, dtype in calls} == {AUTOCAST[precision]}


def _extract(packed, out, *extra) -> int:
    return cli(["extract_features", f"shards={packed}", f"out={out}", *EXTRACT, *extra])


@pytest.fixture(scope="module")
def cpu_fp32(packed, tmp_path_factory):
    """The reference: the dev split extracted on the CPU in fp32."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    out = tmp_path_factory.mktemp("extract_cpu_fp32")
    assert _extract(packed, out, "device=cpu", "precision=fp32") == 0
    AcceleratorState._reset_state(reset_partial_state=True)
    return _outputs(out)


# ---------------------------------------------------------------- extract_features


@pytest.mark.parametrize(("device", "precision"), RUNS)
def test_extract_features_on_the_device_matches_the_cpu_fp32_features(
    packed, cpu_fp32, tmp_path, monkeypatch, device, precision
):
    calls = _spy(monkeypatch, S3D, when=torch.is_inference_mode_enabled)  # extraction, not BatchNorm calibration
    out = tmp_path / "features"
    assert _extract(packed, out, f"device={device}", f"precision={precision}") == 0
    _assert_ran_on(calls, device, precision)
    features = _outputs(out)
    assert features.keys() == cpu_fp32.keys() and len(features) == 3
    coarsest = max(UNIT_ROUNDOFF[arithmetic(device, precision)], UNIT_ROUNDOFF[arithmetic(device, "fp32")])
    errors = []
    for key, reference in cpu_fp32.items():
        meta = json.loads((out / key.replace(".npy", ".json")).read_text())
        assert features[key].dtype == np.float32 and features[key].shape == reference.shape
        assert reference.shape == (-(-meta["num_frames"] // 2), 480)  # stop_after=3: stride 2, 480-d
        errors.append(worst_relative_error(features[key], reference))
    assert max(errors) <= FACTOR * coarsest, (errors, FACTOR * coarsest)
    if precision != "fp32":
        assert min(errors) >= UNIT_ROUNDOFF[precision] / 4, errors
    summary = json.loads((out / "summary.json").read_text())
    assert summary["splits"]["dev"]["videos"] == 3 and summary["feature_dim"] == 480


# ---------------------------------------------------------------- finetune_ctc


@pytest.mark.parametrize(("device", "precision"), RUNS)
def test_finetune_ctc_steps_on_the_device_and_writes_a_checkpoint_that_loads_on_the_cpu(
    packed, tmp_path, monkeypatch, device, precision
):
    calls = _spy(monkeypatch, VideoCTC)
    out = tmp_path / "ft"
    args = [
        f"shards={packed}",
        f"out={out}",
        *FINETUNE_BASE,
        "epochs=1",
        "max_steps_per_epoch=2",
        f"device={device}",
        f"precision={precision}",
    ]
    assert cli(["finetune_ctc", *args]) == 0
    _assert_ran_on(calls, device, precision)
    metrics = json.loads((out / "metrics.json").read_text())
    (record,) = metrics["history"]
    assert record["steps"] == 2 and np.isfinite(record["train_loss"]) and record["train_loss"] > 0
    assert 0 <= record["dev_wer"] and metrics["best_dev_wer"] == record["dev_wer"]
    backbone, meta = load_backbone(out / "model.safetensors")  # safetensors loads on the CPU
    assert meta["epoch"] == "0" and meta["backbone"] == "s3d"
    assert {(p.device.type, p.dtype) for p in backbone.state_dict().values() if p.is_floating_point()} == {
        ("cpu", torch.float32)
    }  # mixed precision keeps fp32 weights
    # freeze=2: the first two blocks are the seeded initial weights, the others were trained
    torch.manual_seed(1)
    initial = create_model("s3d", stop_after=4)
    blocks = list(zip(initial.blocks(), backbone.blocks(), strict=True))
    for before, after in blocks[:2]:
        assert all(torch.equal(a, b) for a, b in zip(before.parameters(), after.parameters(), strict=True))
    assert any(
        not torch.equal(a, b)
        for before, after in blocks[2:]
        for a, b in zip(before.parameters(), after.parameters(), strict=True)
    )
    with torch.no_grad():
        feats = backbone.eval().forward_features(torch.randn(1, 3, 8, 32, 32))
    assert feats.shape == (1, 2, 832) and torch.isfinite(feats).all()


# ---------------------------------------------------------------- train_head


@pytest.mark.parametrize(("device", "precision"), RUNS)
def test_train_head_trains_on_the_device_and_reports_wer(tmp_path, monkeypatch, device, precision):
    feats = make_features(tmp_path / "feats", n_train=16, n_eval=4)
    calls = _spy(monkeypatch, RecognitionHead)
    out = tmp_path / "head"
    assert (
        cli(
            [
                "train_head",
                f"features={feats}",
                f"out={out}",
                "epochs=3",
                *HEAD_ARGS,
                f"device={device}",
                f"precision={precision}",
            ]
        )
        == 0
    )
    _assert_ran_on(calls, device, precision)
    metrics = json.loads((out / "metrics.json").read_text())
    losses = [h["train_loss"] for h in metrics["history"]]
    assert len(losses) == 3 and all(np.isfinite(losses)) and losses[-1] < losses[0]
    for split in ("dev", "test"):
        assert 0 <= metrics[f"{split}_wer"] == metrics[f"{split}_score"]["wer"]
        assert len((out / f"{split}.hyp.txt").read_text().splitlines()) == 4
    head = load_file(str(out / "head_best.safetensors"))
    assert head and {(t.device.type, t.dtype) for t in head.values() if t.is_floating_point()} == {
        ("cpu", torch.float32)
    }


# ---------------------------------------------------------------- device errors


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


RECIPES = {
    "extract_features": lambda packed, tmp: [f"shards={packed}", *EXTRACT],
    "finetune_ctc": lambda packed, tmp: [f"shards={packed}", *FINETUNE_BASE, "epochs=1"],
    "train_head": lambda packed, tmp: [f"features={tmp}"],
}


@pytest.mark.parametrize("recipe", RECIPES)
def test_cuda_index_past_the_last_gpu_is_one_line_before_out_is_created(packed, tmp_path, capsys, monkeypatch, recipe):
    # Checked from the device count alone, before CUDA is initialised: this runs without a GPU.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    out = tmp_path / "out"
    assert cli([recipe, *RECIPES[recipe](packed, tmp_path), f"out={out}", "device=cuda:3"]) == 2
    assert "device='cuda:3' but only 1 CUDA device(s) are visible (cuda:0 to cuda:0)" in _one_line(capsys)
    assert not out.exists()


@CUDA
@pytest.mark.parametrize("recipe", RECIPES)
def test_cuda_index_past_the_last_real_gpu_is_one_line(packed, tmp_path, capsys, recipe):
    n = torch.cuda.device_count()
    out = tmp_path / "out"
    assert cli([recipe, *RECIPES[recipe](packed, tmp_path), f"out={out}", f"device=cuda:{n}"]) == 2
    assert f"device='cuda:{n}' but only {n} CUDA device(s)" in _one_line(capsys)
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_on_a_machine_without_one_is_one_line(packed, tmp_path, capsys, device):
    out = tmp_path / "out"
    assert (
        cli(["extract_features", *RECIPES["extract_features"](packed, tmp_path), f"out={out}", f"device={device}"]) == 2
    )
    assert f"device={device!r} but no CUDA device is available; use device=cpu or auto" in _one_line(capsys)
    assert not out.exists()


@pytest.mark.parametrize("recipe", RECIPES)
def test_a_device_that_is_not_one_is_refused_by_the_config(packed, tmp_path, capsys, recipe):
    out = tmp_path / "out"
    assert cli([recipe, *RECIPES[recipe](packed, tmp_path), f"out={out}", "device=gpu1"]) == 2
    assert "config key 'device': 'gpu1' is not a device (auto, cpu, cuda or cuda:N)" in _one_line(capsys)
    assert not out.exists()


@pytest.mark.parametrize("recipe", ["finetune_ctc", "train_head"])
def test_fp16_training_on_the_cpu_is_refused_rather_than_run_in_fp32(packed, tmp_path, capsys, recipe):
    # Accelerate has no fp16 autocast on the CPU: without this check the run trains in fp32 silently.
    out = tmp_path / "out"
    assert cli([recipe, *RECIPES[recipe](packed, tmp_path), f"out={out}", "device=cpu", "precision=fp16"]) == 2
    assert "precision=fp16 trains on CUDA only" in _one_line(capsys)
    assert not out.exists()
