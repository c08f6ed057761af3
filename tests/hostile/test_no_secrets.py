"""Secrets in shard URLs: a password (``user:password@``) or a signed query value never
reaches a message, a log line, a skip reason or a file the project writes, while the
request itself still goes out with the real URL."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from signstream.benchmarks.servers import http_server
from signstream.loaders.remote import RemotePath, redact
from tests.remote_fixtures import FAST_FAILURE

pytestmark = pytest.mark.hostile

SECRET = "Hunter2-s3cret"


@pytest.mark.parametrize(
    ("url", "kept", "hidden"),
    [
        (f"http://alice:{SECRET}@host:8080/shards/train", "http://alice:***@host:8080/shards/train", SECRET),
        (f"https://{SECRET}@host/x.tar", "https://***@host/x.tar", SECRET),  # a token as the user name
        (
            f"https://bucket.s3.amazonaws.com/a.tar?X-Amz-Credential=AKIA%2F1&X-Amz-Signature={SECRET}&X-Amz-Date=1",
            "https://bucket.s3.amazonaws.com/a.tar?X-Amz-Credential=***&X-Amz-Signature=***&X-Amz-Date=1",
            SECRET,
        ),
        (f"s3://b/p.tar?token={SECRET}", "s3://b/p.tar?token=***", SECRET),
        (
            f"cannot fetch http://u:{SECRET}@h/t.tar bytes 0-9: boom",
            "cannot fetch http://u:***@h/t.tar bytes 0-9: boom",
            SECRET,
        ),
    ],
)
def test_redact_hides_passwords_and_signed_query_values_but_keeps_host_and_path(url, kept, hidden):
    assert redact(url) == kept and hidden not in redact(url)
    assert redact({"shards": [url], "n": 1}) == {"shards": [kept], "n": 1}
    assert hidden not in redact(RemotePath(url))


def test_redact_leaves_local_paths_and_plain_text_alone():
    for text in ("/data/phoenix/train", "user@example.org wrote a=b", "config key 'lr'"):
        assert redact(text) == text


def _files_holding(root: Path, secret: str) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def test_extracting_from_a_url_with_a_password_never_prints_or_writes_it(
    packed, tmp_path, run_cli, capsys, caplog, monkeypatch
):
    for name, value in FAST_FAILURE.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "out"
    # one train shard breaks mid-response: its samples are skipped with reasons that quote the URL
    with http_server(packed, drop=("train-000000.tar",)) as base, caplog.at_level(logging.WARNING):
        url = base.replace("http://", f"http://reader:{SECRET}@")
        code = run_cli(
            [
                "extract_features",
                f"shards={url}",
                "splits=train,dev",
                "backbone=resnet18_2d",
                "image_size=32",
                "num_workers=0",
                "calibrate_bn=0",
                "progress=false",
                "device=cpu",
                "max_skipped_fraction=1",
                f"out={out}",
            ]
        )  # a whole shard of train is dropped
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert SECRET not in captured.out + captured.err + caplog.text
    assert "reader:***@" in captured.err + caplog.text  # the skips were reported, redacted
    assert _files_holding(out, SECRET) == []
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["shards"] == base.replace("http://", "http://reader:***@")  # still says where


def test_verify_of_a_url_with_a_password_never_prints_it(packed, run_cli, capsys, monkeypatch):
    for name, value in FAST_FAILURE.items():
        monkeypatch.setenv(name, value)
    with http_server(packed, drop=("train-000000.tar",)) as base:
        url = base.replace("http://", f"http://reader:{SECRET}@")
        assert run_cli(["verify", f"{url}/train"]) == 1  # the dropped shard is a problem naming its URL
        damaged = capsys.readouterr()
        assert run_cli(["verify", f"{url}/no-such-split"]) == 2
        refused = capsys.readouterr()
    assert SECRET not in damaged.out + damaged.err + refused.out + refused.err
    assert "reader:***@" in damaged.out and "reader:***@" in refused.err
