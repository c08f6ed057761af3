"""The GPU proof on a CPU box: every field written, CUDA figures null with a reason, steps bounded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from signstream.benchmarks import gpu_proof

ROOT = Path(__file__).resolve().parents[2]
FIELDS = {
    "device",
    "date",
    "dali_version",
    "torch_version",
    "cuda_tests",
    "nvdec",
    "loaders",
    "extraction",
    "finetune",
    "phoenix2014_i3d_extraction_minutes",
    "phoenix2014_frames_assumed",
    "reasons",
    "steps",
}
CUDA_PATHS = [
    "device",
    "cuda_tests",
    "nvdec",
    "loaders[0]",
    "loaders[1]",
    "loaders[2]",
    "extraction[0]",
    "extraction[1]",
    "extraction[2]",
    "extraction[3]",
    "finetune",
    "phoenix2014_i3d_extraction_minutes",
]


def _proof(out: Path, *args: str) -> dict:
    env = dict(os.environ, PYTHON=sys.executable)
    env.pop("OUT", None)
    subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_proof.sh"), str(out), *args],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    return json.loads((out / "gpu.json").read_text())


def test_cpu_mode_writes_every_field_and_a_reason_for_each_cuda_figure(tmp_path):
    doc = _proof(tmp_path, "--no-cuda")
    assert FIELDS <= set(doc)
    assert set(doc["cuda_tests"]) == {"passed", "failed", "skipped"}
    assert set(doc["nvdec"]) == {"driver_report", "engine_count", "mig_mode"}
    assert [(r["backend"], set(r)) for r in doc["loaders"]] == [
        (b, {"backend", "threads", "codec", "frames_per_s"}) for b in ("dali-nvdec", "dali-nvdec", "pyav-to-cuda")
    ]
    assert {(r["backbone"], r["precision"], r["image_size"]) for r in doc["extraction"]} == {
        (b, p, 224) for b in ("i3d", "s3d") for p in ("fp32", "bf16")
    }
    assert all(
        set(r)
        == {
            "backbone",
            "precision",
            "image_size",
            "e2e_frames_per_s",
            "backbone_only_frames_per_s",
            "ratio",
            "peak_gpu_mib",
        }
        for r in doc["extraction"]
    )
    assert set(doc["finetune"]) == {"step_s_from_loader", "step_s_cached_batch"}
    for path in CUDA_PATHS:  # every CUDA figure null, each with its reason
        value = gpu_proof.get_path(doc, path)
        assert value is None or gpu_proof._has_null(value), path
        assert doc["reasons"][path], path
    assert doc["reasons"]["loaders[1]"] == "skipped: --no-cuda"
    assert doc["date"] and doc["torch_version"] and doc["dali_version"]
    assert doc["inputs"]["clips"] == 2 and doc["inputs"]["frames"] > 0
    assert doc["phoenix2014_frames_assumed"] == gpu_proof.PHOENIX2014_FRAMES
    assert {n: s["status"] for n, s in doc["steps"].items() if s["status"] != "skipped"} == {
        "env": "ok",
        "inputs": "ok",
    }
    md = (tmp_path / "gpu.md").read_text()
    assert "## GPU proof" in md and "`loaders[0]`: skipped: --no-cuda" in md
    assert (tmp_path / "gpu-logs" / "inputs.log").exists()


def test_a_step_stopped_at_its_limit_leaves_the_other_figures_intact(tmp_path):
    t0 = time.monotonic()
    doc = _proof(tmp_path, "--no-cuda", "--clips", "400", "--limit", "inputs=1")
    assert time.monotonic() - t0 < 60
    assert doc["steps"]["inputs"]["status"] == "timed out"
    assert doc["steps"]["inputs"]["seconds"] < 5
    assert doc["inputs"]["clips"] is None and "stopped at its 1 s limit" in doc["reasons"]["inputs"]
    assert doc["steps"]["env"]["status"] == "ok" and doc["torch_version"] and doc["dali_version"]
    assert doc["reasons"]["finetune"] == "skipped: --no-cuda"


def _fake_states() -> dict[str, dict]:
    row = {"backend": "dali-nvdec", "threads": 1, "codec": "vp9", "frames_per_s": 9000.0}
    extraction = {
        f"extraction[{i}]": {
            "backbone": b,
            "precision": p,
            "image_size": 224,
            "e2e_frames_per_s": 8000.0,
            "backbone_only_frames_per_s": 8400.0,
            "ratio": 0.952,
            "peak_gpu_mib": 900.0,
        }
        for i, (b, p) in enumerate(gpu_proof.EXTRACTION_ROWS)
    }
    return {
        "env": {"values": {"device": "GPU", "dali_version": "2.4.0", "torch_version": "2.11"}},
        "nvdec": {"values": {"nvdec": {"driver_report": ["vp9 | True"], "engine_count": 7, "mig_mode": "Disabled"}}},
        "inputs": {
            "values": {
                "inputs": {"clips": 24, "frames": 2900, "height": 210, "width": 260, "codec": "vp9", "seconds": 9.0}
            }
        },
        "loaders_dali_1": {"values": {"loaders[0]": row}},
        "loaders_dali_default": {"values": {"loaders[1]": {**row, "threads": 8, "frames_per_s": 25000.0}}},
        "loaders_pyav_cuda": {"values": {"loaders[2]": {**row, "backend": "pyav-to-cuda", "threads": 16}}},
        "extraction": {"values": extraction},
        "finetune": {"values": {"finetune": {"step_s_from_loader": 0.105, "step_s_cached_batch": 0.1}}},
        "cuda_tests": {"values": {"cuda_tests": {"passed": 40, "failed": 0, "skipped": 1}}},
    }


def test_merged_figures_clear_their_reasons_and_give_the_phoenix_estimate():
    doc = gpu_proof.skeleton("2030-01-01T00:00:00+00:00")
    steps = {s.name: s for s in gpu_proof.STEPS}
    for name, state in _fake_states().items():
        gpu_proof.apply_state(doc, steps[name], state, "unused")
    assert doc["reasons"] == {}
    assert doc["phoenix2014_i3d_extraction_minutes"] == round(gpu_proof.PHOENIX2014_FRAMES / 8000 / 60, 2)
    md = gpu_proof.markdown(doc)
    assert "25,000 | goal ≥ 20,000: met" in md and "the loader adds 5.0% (goal < 10 %: met)" in md
    # one row failed, the step stopped before the last two: each named; the estimate uses i3d fp32
    fresh = gpu_proof.skeleton("2030-01-01T00:00:00+00:00")
    only_fp32 = {"extraction[0]": _fake_states()["extraction"]["values"]["extraction[0]"]}
    gpu_proof.apply_state(
        fresh,
        steps["extraction"],
        {"values": only_fp32, "reasons": {"extraction[1]": "failed: X"}},
        "step extraction was stopped at its 70 s limit",
    )
    assert fresh["reasons"]["extraction[1]"] == "failed: X"
    assert fresh["reasons"]["extraction[2]"] == "step extraction was stopped at its 70 s limit"
    assert "i3d fp32" in fresh["phoenix2014_i3d_extraction_basis"]


def test_junit_counts_and_step_limits(tmp_path):
    xml = tmp_path / "r.xml"
    xml.write_text(
        '<testsuites><testsuite name="pytest" tests="10" failures="1" errors="1" skipped="3"></testsuite></testsuites>'
    )
    assert gpu_proof.junit_counts(xml) == {"passed": 5, "failed": 2, "skipped": 3}
    assert sum(s.limit for s in gpu_proof.STEPS) <= gpu_proof.TOTAL_S <= 300
