"""``signstream pack --out s3://...`` and ``signstream verify URL`` against local servers."""

from __future__ import annotations

import json
import shutil

import pytest

from signstream.benchmarks.servers import http_server
from signstream.tools import remote_pack
from signstream.tools.cli import main as cli
from signstream.tools.pack import pack_corpus
from signstream.tools.verify import verify

PACK = ["--splits", "train,dev", "--max-samples", "2", "--workers", "1", "--quiet"]


def _s3fs():
    from signstream.loaders.remote import filesystem

    return filesystem("s3://")  # the client for the current endpoint


def test_pack_into_a_bucket_gives_the_bytes_of_a_local_pack_manifests_last(
    synth_root, s3_env, tmp_path, monkeypatch, capsys
):
    fs = _s3fs()
    fs.mkdir("pack-target")
    order: list[str] = []
    put = remote_pack.Uploader.put
    monkeypatch.setattr(remote_pack.Uploader, "put", lambda self, rel: (put(self, rel), order.append(rel)))
    url = "s3://pack-target/corpus"
    assert cli(["pack", "phoenix2014", "--root", str(synth_root), "--out", url, *PACK]) == 0
    assert f"{url}/glosses.txt" in capsys.readouterr().out
    local = tmp_path / "local"
    pack_corpus(
        "phoenix2014", local, root=synth_root, splits=["train", "dev"], max_samples=2, workers=1, progress=False
    )
    for path in sorted(p for p in local.rglob("*") if p.is_file() and p.name != "pack-stats.json"):
        rel = path.relative_to(local).as_posix()
        assert fs.cat_file(f"pack-target/corpus/{rel}") == path.read_bytes(), rel
    manifests = [i for i, rel in enumerate(order) if rel.endswith("manifest.json")]
    assert len(manifests) == 2 and min(manifests) == len(order) - 2  # manifests go last
    for split in ("train", "dev"):
        for shard in json.loads((local / split / "manifest.json").read_text())["shards"]:
            idx, tar = order.index(f"{split}/{shard['index']}"), order.index(f"{split}/{shard['file']}")
            assert idx < tar  # a tar never shows up without its index
    assert not remote_pack.default_staging(url).exists()  # the temporary staging is removed
    assert cli(["verify", url, "--decode"]) == 0


@pytest.mark.parametrize(
    "out, message",
    [
        ("http://127.0.0.1:9/x", "http(s):// is read-only"),
        ("s3://no-such-bucket/x", "bucket not found: s3://no-such-bucket"),
    ],
)
def test_pack_to_an_unwritable_url_is_a_one_line_error_before_any_work(synth_root, s3_env, capsys, out, message):
    assert cli(["pack", "phoenix2014", "--root", str(synth_root), "--out", out, *PACK]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not remote_pack.default_staging(out).exists()


def test_verify_over_http_decodes_and_passes(packed, http_packed, capsys):
    report = verify(http_packed, decode=True)
    assert report["ok"] and set(report["splits"]) == {"train", "dev", "test"}
    assert report == {**verify(packed, decode=True), "splits": report["splits"]}
    assert cli(["verify", f"{http_packed}/dev"]) == 0
    assert "verify: OK" in capsys.readouterr().out


def test_verify_in_a_bucket_catches_a_changed_byte_and_a_missing_index(packed, s3_env, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(packed / "train", out / "train")
    tars = sorted((out / "train").glob("*.tar"))
    data = bytearray(tars[0].read_bytes())
    data[700] ^= 0xFF
    tars[0].write_bytes(bytes(data))
    tars[1].with_suffix(".idx").unlink()
    from signstream.benchmarks.servers import upload_tree

    upload_tree(out, "s3://verify-damaged/p")
    report = verify("s3://verify-damaged/p")
    assert not report["ok"]
    assert any("sha256" in p and tars[0].name in p for p in report["problems"])
    assert any(tars[1].with_suffix(".idx").name in p and "missing" in p for p in report["problems"])
    assert cli(["verify", "s3://verify-damaged/p"]) == 1


def test_verify_of_a_url_without_a_pack_is_a_one_line_error(packed, tmp_path, capsys):
    with http_server(tmp_path) as base:
        assert cli(["verify", f"{base}/nothing"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no manifest.json" in err[0]
