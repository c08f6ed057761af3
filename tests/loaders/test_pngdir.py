"""PNG-folder baseline: corpus tables, same frames as the shards, failures."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from signstream import SignstreamError
from signstream.loaders import Transform, make_loader
from signstream.loaders.pngdir import corpus_items
from tests.loaders.shardkit import moving_frames, write_phoenix_pngs


def pngdir(source, **kw):
    kw.setdefault("transform", Transform(size=48, output="uint8"))
    return make_loader(source, backend="pngdir", num_workers=kw.pop("num_workers", 0), rank=0, world_size=1, **kw)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.float() - b.float()) ** 2).mean())
    return 10 * torch.log10(torch.tensor(255.0**2 / mse)).item()


def test_pngdir_gives_the_shards_frames_within_codec_psnr(corpus):
    t = Transform(size=48, output="uint8")
    png = {
        k: (v, n)
        for b in pngdir(corpus["root"], split="dev", batch_size=3, num_workers=2)
        for k, v, n in zip(b.keys, b.video, b.lengths.tolist())
    }
    shards = {
        k: (v, n)
        for b in make_loader(
            corpus["vp9"], backend="pyav", batch_size=3, transform=t, num_workers=0, rank=0, world_size=1
        )
        for k, v, n in zip(b.keys, b.video, b.lengths.tolist())
    }
    assert png.keys() == shards.keys() and len(png) == 7
    for key, (video, n) in png.items():
        assert shards[key][1] == n
        # VP9 at CRF 30 on tiny 48x64 frames measures ~31-40 dB; 28 dB leaves room.
        assert psnr(video[:, :n], shards[key][0][:, :n]) > 28, key


def test_pngdir_batches_match_the_shard_batch_format(corpus):
    t = Transform(size=32, max_frames=6)
    a = next(iter(pngdir(corpus["root"], split="dev", batch_size=2, transform=t)))
    b = next(
        iter(make_loader(corpus["vp9"], backend="pyav", batch_size=2, transform=t, num_workers=0, rank=0, world_size=1))
    )
    assert a.video.shape == b.video.shape and a.video.dtype == b.video.dtype == torch.float32
    assert a.keys == b.keys and a.lengths.tolist() == b.lengths.tolist() == [6, 6]
    assert {"name", "gloss", "signer", "num_frames"} <= set(a.meta[0])


def test_phoenix2014t_layout_and_its_missing_level_are_handled(tmp_path):
    base = tmp_path / "PHOENIX-2014-T-release-v3" / "PHOENIX-2014-T"
    frames = moving_frames(5, seed=1)
    folder = base / "features" / "fullFrame-210x260px" / "dev" / "clip_a"  # no 1/ level on disk
    folder.mkdir(parents=True)
    import cv2

    for i, f in enumerate(frames):
        cv2.imwrite(str(folder / f"images{i + 1:04d}.png"), f[:, :, ::-1])
    ann = base / "annotations" / "manual"
    ann.mkdir(parents=True)
    (ann / "PHOENIX-2014-T.dev.corpus.csv").write_text(
        "name|video|start|end|speaker|orth|translation\nclip_a|clip_a/1/*.png|-1|-1|Signer04|A B|ein satz\n"
    )
    (batch,) = list(pngdir(tmp_path, split="dev", batch_size=2))
    assert batch.keys == ["clip_a"] and batch.lengths.tolist() == [5]
    assert batch.meta[0]["text"] == "ein satz" and batch.meta[0]["signer"] == "Signer04"


def test_pairs_of_name_and_folder_are_a_source(tmp_path):
    root = write_phoenix_pngs(tmp_path, "dev", {"a": moving_frames(4, 0), "b": moving_frames(6, 1)})
    folders = sorted((root / "phoenix2014-release").glob("**/dev/*/1"))
    (batch,) = list(pngdir([(f.parent.name, f) for f in folders], batch_size=2))
    assert batch.keys == ["a", "b"] and batch.lengths.tolist() == [4, 6]


def test_missing_frame_folder_is_skipped_and_named(tmp_path):
    root = write_phoenix_pngs(tmp_path, "dev", {"a": moving_frames(4, 0), "b": moving_frames(6, 1)})
    shutil.rmtree(next((root / "phoenix2014-release").glob("**/dev/a")))
    ld = pngdir(root, split="dev", batch_size=2, handler="skip")
    assert [k for b in ld for k in b.keys] == ["b"]
    assert [s.key for s in ld.stats.skipped] == ["a"] and "no frames" in ld.stats.skipped[0].reason


def test_corpus_root_needs_a_split_and_a_table(tmp_path):
    with pytest.raises(SignstreamError, match="split="):
        corpus_items(tmp_path)
    with pytest.raises(SignstreamError, match="does not look like PHOENIX-2014"):
        corpus_items(tmp_path, split="dev", layout="phoenix2014")


def _frame_table(tmp_path, names):
    """A CSV table of frame folders (one per row, in order) with the given corpus names."""
    import cv2

    lines = ["name,path,gloss,split"]
    for i, name in enumerate(names):
        folder = tmp_path / f"v{i}"
        folder.mkdir()
        for t, frame in enumerate(moving_frames(4 + i, seed=i)):
            cv2.imwrite(str(folder / f"{t:04d}.png"), frame[:, :, ::-1])
        lines.append(f"{name},v{i},A B,dev")
    table = tmp_path / "corpus.csv"
    table.write_text("\n".join(lines) + "\n")
    return table


def test_a_name_collision_gives_the_same_keys_from_pack_and_from_pngdir(tmp_path):
    from signstream.tools.pack import pack_corpus

    table = _frame_table(tmp_path, ["a.b", "a_b", "a.b"])
    pack_corpus("csv", tmp_path / "shards", table=table, workers=1, progress=False)
    manifest = json.loads((tmp_path / "shards" / "dev" / "manifest.json").read_text())
    packed = [k for shard in manifest["shards"] for k in shard["keys"]]
    assert packed == ["a_b", "a_b_2", "a_b_3"]
    assert [it.meta["key"] for it in corpus_items(table, split="dev")] == packed
    (batch,) = list(pngdir(table, split="dev", batch_size=3))
    assert batch.keys == packed and batch.lengths.tolist() == [4, 5, 6]


def test_signer_independent_si5_tables_are_read(tmp_path):
    root = write_phoenix_pngs(tmp_path, "dev", {"a": moving_frames(4, 0)})
    manual = next(root.glob("**/annotations/manual"))
    si5 = manual.parents[1].with_name("phoenix-2014-signerindependent-SI5")
    manual.parents[1].rename(si5)
    (si5 / "annotations" / "manual" / "dev.corpus.csv").rename(si5 / "annotations" / "manual" / "dev.SI5.corpus.csv")
    (batch,) = list(pngdir(root / "phoenix2014-release", split="dev", batch_size=2))
    assert batch.keys == ["a"] and batch.lengths.tolist() == [4]


def test_a_table_of_video_files_is_refused_by_the_frame_folder_loader(tmp_path):
    (tmp_path / "clip.mp4").write_bytes(b"")
    (tmp_path / "t.csv").write_text("name,path,gloss\nclip,clip.mp4,A\n")
    with pytest.raises(SignstreamError, match="frame folders"):
        corpus_items(tmp_path / "t.csv")
