"""Packing benchmark: size, fidelity and speed of ``signstream pack``.

On the synthetic corpus at the PHOENIX frame size (210×260), default settings, one run: shard bytes ÷ PNG bytes
with the mean PSNR (goal ≤ 1/20 at ≥ 38 dB), one-worker packing ÷ ``cv2.imread`` frames/s on one core
(goal ≥ 0.5), and 2 workers ÷ 1 (goal ≥ 1.7×). Why: docs/design/benchmarks.md

Run: ``python -m signstream.benchmarks.pack --out DIR [--quick]``; writes ``pack.json`` and ``pack.md`` to DIR.
"""

from __future__ import annotations

import io
import json
import tempfile
import time
from pathlib import Path

import av
import cv2
import numpy as np

from signstream.benchmarks.report import quick_cli, save_report
from signstream.loaders.corpora import phoenix2014
from signstream.loaders.format import iter_samples
from signstream.tools.pack import pack_corpus


def png_read_fps(rows) -> float:
    """Frames/s of reading every frame with ``cv2.imread`` (BGR→RGB) in one process."""
    t0, n = time.perf_counter(), 0
    for row in rows:
        for f in row.frames:
            cv2.cvtColor(cv2.imread(f), cv2.COLOR_BGR2RGB)
            n += 1
    return n / (time.perf_counter() - t0)


def pack_fps(root: Path, out: Path, workers: int, codec: str = "vp9") -> tuple[float, dict]:
    """Frames/s of a full ``pack_corpus`` run (train split) with ``workers`` processes."""
    t0 = time.perf_counter()
    result = pack_corpus("phoenix2014", out, root=root, workers=workers, progress=False, splits=["train"], codec=codec)
    seconds = time.perf_counter() - t0
    return result["splits"]["train"]["totals"]["frames"] / seconds, result["splits"]["train"]


def mean_psnr(split_dir: Path, rows, limit: int) -> float:
    """Mean per-frame PSNR of decoded shard videos against their source PNGs."""
    by_name = {r.name: r for r in rows}
    values = []
    for tar in sorted(split_dir.glob("*.tar")):
        for _key, members in iter_samples(tar):
            meta = json.loads(members["json"])
            video = members[next(e for e in members if e != "json")]
            with av.open(io.BytesIO(video)) as c:
                decoded = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
            for frame, path in zip(decoded, by_name[meta["name"]].frames):
                src = cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB).astype(np.float64)
                mse = np.mean((frame.astype(np.float64) - src) ** 2)
                values.append(10 * np.log10(255.0**2 / max(mse, 1e-10)))
            if len(values) >= limit:
                return float(np.mean(values))
    return float(np.mean(values))


def run(out: str | Path, quick: bool = False) -> dict:
    """Run the packing benchmark; returns (and writes) the figures."""
    from signstream.tools.synth import make_corpus

    out = Path(out)
    n_train = 12 if quick else 60
    size = dict(height=96, width=128) if quick else dict(height=210, width=260)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = make_corpus(tmp / "corpus", layout="phoenix2014", seed=1, train=n_train, dev=1, test=1, vocab=20, **size)
        rows = [r for r in phoenix2014(root) if r.split == "train"]
        png_read_fps(rows[:2])  # warm the page cache and the codecs
        png_fps = png_read_fps(rows)
        fps1, m1 = pack_fps(root, tmp / "w1", workers=1)
        fps2, m2 = pack_fps(root, tmp / "w2", workers=2)
        psnr = mean_psnr(tmp / "w1" / "train", rows, limit=300 if quick else 2000)
        same = all(
            (tmp / "w1" / "train" / s["file"]).read_bytes() == (tmp / "w2" / "train" / s["file"]).read_bytes()
            for s in m1["shards"]
        )
    totals = m1["totals"]
    result = {
        "corpus": {
            "videos": totals["samples"],
            "frames": totals["frames"],
            "height": size["height"],
            "width": size["width"],
            "codec": m1["codec"],
            "options": m1["options"],
        },
        "png_bytes": totals["png_bytes"],
        "shard_bytes": totals["bytes"],
        "size_ratio": totals["bytes"] / totals["png_bytes"],
        "mean_psnr_db": psnr,
        "png_read_fps_1core": png_fps,
        "pack_fps_1worker": fps1,
        "pack_fps_2workers": fps2,
        "pack_vs_png_read_per_core": fps1 / png_fps,
        "speedup_2_vs_1_workers": fps2 / fps1,
        "identical_output_1_vs_2_workers": same,
        "goals": {
            "size_ratio_max": 1 / 20,
            "psnr_min_db": 38.0,
            "pack_vs_png_read_min": 0.5,
            "speedup_2_vs_1_min": 1.7,
        },
    }
    save_report(out, "pack", result, render_markdown)
    return result


def render_markdown(r: dict) -> str:
    """A small Markdown table of the packing figures against their goals."""
    g = r["goals"]
    c = r["corpus"]
    rows = [
        ("shard bytes ÷ PNG bytes", f"1/{1 / r['size_ratio']:.0f}", f"≤ 1/{1 / g['size_ratio_max']:.0f}"),
        ("mean PSNR of decoded frames", f"{r['mean_psnr_db']:.1f} dB", f"≥ {g['psnr_min_db']:.0f} dB"),
        ("PNG read, 1 core", f"{r['png_read_fps_1core']:.0f} frames/s", ""),
        ("pack, 1 worker", f"{r['pack_fps_1worker']:.0f} frames/s", ""),
        ("pack ÷ PNG read, per core", f"{r['pack_vs_png_read_per_core']:.2f}", f"≥ {g['pack_vs_png_read_min']}"),
        ("pack, 2 workers ÷ 1 worker", f"{r['speedup_2_vs_1_workers']:.2f}×", f"≥ {g['speedup_2_vs_1_min']}×"),
        ("identical bytes, 1 vs 2 workers", str(r["identical_output_1_vs_2_workers"]), "True"),
    ]
    lines = [
        f"## Packing ({c['videos']} videos, {c['frames']} frames, {c['height']}×{c['width']}, "
        f"{c['codec']} crf {c['options']['quality']})",
        "",
        "| figure | measured | goal |",
        "|---|---|---|",
    ]
    lines += [f"| {a} | {b} | {g_} |" for a, b, g_ in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    quick_cli(__doc__, run, render_markdown, argv, quick_help="small corpus at 96×128 (smoke test)")


if __name__ == "__main__":
    main()
