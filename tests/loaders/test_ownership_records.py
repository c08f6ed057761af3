"""Tests for ``loaders/outputs.py`` and the atomic saves in ``loaders/fileio.py``: one temporary-name
rule for pack and the recipes, saves that leave no final-named file when they fail, a stable digest,
and the owner record's verdicts."""

from __future__ import annotations

import hashlib
import json
import os
import re

import pytest
import torch
from safetensors.torch import load_file

from signstream import SignstreamError
from signstream.loaders import fileio, outputs
from signstream.loaders.format import sha256_file
from signstream.tools.packstate import owned_in_split


def _leftover(folder, target: str) -> str:
    """The name an atomic write of ``target`` uses for its temporary file (as a kill would leave it)."""
    with fileio.atomic_write(folder / target) as f:
        name = os.path.basename(os.readlink(f"/proc/self/fd/{f.fileno()}"))
        assert name != target and name.startswith(f".{target}.") and name.endswith(".tmp")
    return name


def test_one_temp_rule_serves_pack_and_the_recipes(tmp_path):
    shard_temps = {
        _leftover(tmp_path, "dev-000000.tar"),
        fileio.tmp_name(tmp_path / "manifest.json").name,
        ".dev-000001.idx.partial.tmp",
    }
    feature_temps = {_leftover(tmp_path, "features.dev"), fileio.tmp_name(tmp_path / "x_1.npy").name}
    made = shard_temps | feature_temps
    foreign = {".mine.json.ab12cd34.tmp", ".notes.tmp", "draft.tmp", ".tmp", "dev-000000.tar"}
    pack_owned = owned_in_split("dev")
    recipe_owned = re.compile(r"features\.dev|x_1\.npy|dev-\d{6}\.(tar|idx)|manifest\.json")
    for name in made:  # both users of the rule read every name a writer makes the same way
        assert outputs.is_temp_of(name, recipe_owned), name
    assert {n for n in made if outputs.is_temp_of(n, pack_owned)} == shard_temps
    for name in foreign:
        assert not outputs.is_temp_of(name, pack_owned) and not outputs.is_temp_of(name, recipe_owned), name

    for owned in (pack_owned, recipe_owned):
        folder = tmp_path / ("pack" if owned is pack_owned else "recipe")
        folder.mkdir()
        for name in made | foreign:
            (folder / name).write_bytes(b"partial")
        removed = {p.name for p in outputs.remove_stray_temps(folder, owned)}
        assert removed == {n for n in made if outputs.is_temp_of(n, owned)}
        assert sorted(os.listdir(folder)) == sorted((made | foreign) - removed)


def test_a_target_ending_in_a_tag_like_word_is_still_found():
    assert outputs.temp_targets(".features.dev.tmp") == ("features.dev", "features")
    assert outputs.is_temp_of(".features.dev.tmp", re.compile(r"features\.dev"))
    assert outputs.temp_targets(".a b.tmp") == ("a b",)
    assert outputs.temp_targets("x.tmp") == () and outputs.temp_targets(".tmp") == ()


def test_a_symlink_with_a_temp_name_is_never_followed_or_removed(tmp_path):
    (tmp_path / "target.txt").write_text("keep")
    (tmp_path / ".manifest.json.tmp").symlink_to(tmp_path / "target.txt")
    assert outputs.remove_stray_temps(tmp_path, re.compile(r"manifest\.json")) == []
    assert (tmp_path / "target.txt").read_text() == "keep"


def _failing(partial: bytes):
    def save(tmp):
        tmp.write_bytes(partial)  # half a file, then the job dies
        raise KeyboardInterrupt

    return save


@pytest.mark.parametrize("existing", [None, b"previous run"])
def test_an_interrupted_save_leaves_no_final_named_file_and_no_temp(tmp_path, existing):
    path = tmp_path / "sub" / "model.bin"
    if existing is not None:
        path.parent.mkdir()
        path.write_bytes(existing)
    with pytest.raises(KeyboardInterrupt):
        fileio.atomic_save(path, _failing(b"\x00" * 100))
    with pytest.raises(KeyboardInterrupt), fileio.atomic_write(path) as f:
        f.write(b"\x00" * 100)
        raise KeyboardInterrupt
    with pytest.raises(Exception, match="pickle"):
        fileio.torch_save_atomic(path, {"fn": lambda: None})  # torch.save fails partway through
    assert sorted(os.listdir(path.parent)) == ([] if existing is None else ["model.bin"])
    assert existing is None or path.read_bytes() == existing


def test_safetensors_save_fsyncs_the_file_then_renames_then_fsyncs_the_folder(tmp_path, monkeypatch):
    events, real_fsync, real_replace = [], os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", "dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "file"))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.path.basename(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    tensors = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(3)}
    fileio.save_safetensors_atomic(tmp_path / "head.safetensors", tensors, metadata={"epoch": "3"})
    assert events == [("fsync", "file"), ("replace", "head.safetensors"), ("fsync", "dir")]
    loaded = load_file(str(tmp_path / "head.safetensors"))
    assert set(loaded) == {"w", "b"} and torch.equal(loaded["w"], tensors["w"])
    assert os.listdir(tmp_path) == ["head.safetensors"]
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "head.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


def test_torch_save_atomic_round_trips(tmp_path):
    fileio.torch_save_atomic(tmp_path / "state.pt", {"step": 7, "t": torch.zeros(2)})
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    assert state["step"] == 7 and torch.equal(state["t"], torch.zeros(2))


def test_the_digest_is_stable_and_shared(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_bytes(b"x" * (3 << 20) + b"tail")  # several read blocks
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    assert outputs.file_digest(path) == outputs.file_digest(str(path)) == sha256_file(path) == expected
    path.write_bytes(b"x" * (3 << 20) + b"tait")
    assert outputs.file_digest(path) != expected
    assert outputs.file_digest(None) is None and outputs.file_digest(tmp_path / "absent") == "missing"
    assert outputs.file_digest(tmp_path) == "missing"  # a folder is not a file to hash


def test_verdicts_name_the_first_difference():
    fp = {"model": {"backbone": "s3d", "weights": "a" * 64}, "options": {"stride": 2}}
    assert outputs.judge(None, fp, overwrite=False) == outputs.Verdict(outputs.FRESH)
    assert outputs.judge({"fingerprint": fp}, fp, overwrite=False).action == outputs.RESUME
    assert outputs.judge({"fingerprint": fp}, fp, overwrite=True).action == outputs.RESUME
    other = {**fp, "model": {**fp["model"], "weights": "b" * 64}}
    refused = outputs.judge({"fingerprint": other}, fp, overwrite=False)
    assert refused.action == outputs.REFUSE and refused.difference.startswith(' (model.weights: "bbb')
    assert outputs.judge({"fingerprint": other}, fp, overwrite=True).action == outputs.RESTART
    assert outputs.judge({"fingerprint": None}, fp, overwrite=False) == outputs.Verdict(outputs.REFUSE)
    assert outputs.judge({"fingerprint": other}, fp, overwrite=False, same=lambda a, b: True).action == outputs.RESUME
    assert outputs.first_difference("abc", "abd") == ' (fingerprint: "abc" then, "abd" now)'


def test_records_round_trip_and_a_foreign_one_is_one_line(tmp_path):
    path = tmp_path / "record.json"
    assert outputs.read_record(path, "run record", "choose another out") is None
    outputs.write_record(path, {"fingerprint": {"a": 1}, "recipe": "r"})
    assert outputs.read_record(path, "run record", "hint", lambda r: "fingerprint" in r)["recipe"] == "r"
    path.write_text("{not json")
    with pytest.raises(SignstreamError, match=r"record\.json: unreadable run record .*; choose another out$"):
        outputs.read_record(path, "run record", "choose another out")
    path.write_text(json.dumps([1, 2]))
    with pytest.raises(SignstreamError, match=r"record\.json is not a run record; hint"):
        outputs.read_record(path, "run record", "hint")


def test_remove_owned_deletes_only_what_it_is_given_and_prunes_empty_folders(tmp_path):
    (tmp_path / "checkpoints" / "epoch_000").mkdir(parents=True)
    (tmp_path / "checkpoints" / "epoch_000" / "model.safetensors").write_bytes(b"m")
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "a.npy").write_bytes(b"a")
    (tmp_path / "dev" / "mine.txt").write_text("user file")
    removed = outputs.remove_owned(
        tmp_path, [tmp_path / "checkpoints" / "epoch_000", tmp_path / "dev" / "a.npy", tmp_path / "absent.json"]
    )
    assert removed == [tmp_path / "checkpoints" / "epoch_000", tmp_path / "dev" / "a.npy"]
    assert sorted(os.listdir(tmp_path)) == ["dev"] and os.listdir(tmp_path / "dev") == ["mine.txt"]
