"""Fixtures that put shards behind real servers on 127.0.0.1: HTTP and S3 (moto).

Import the fixtures into a test module (``from tests.remote_fixtures import ...``).
Requests get short timeouts and two tries here, so a failure test takes
seconds, not the production defaults' minute.
"""

from __future__ import annotations

import pytest

from signstream.benchmarks.servers import http_server, s3_server, upload_tree

FAST_FAILURE = {"SIGNSTREAM_REMOTE_TIMEOUT": "3", "SIGNSTREAM_REMOTE_ATTEMPTS": "2"}


@pytest.fixture(scope="session")
def s3_env():
    """A moto S3 server in a child process; the AWS variables pointing at it are set meanwhile."""
    pytest.importorskip("s3fs")
    pytest.importorskip("moto.server")
    with s3_server() as env, pytest.MonkeyPatch.context() as mp:
        for name, value in {**env, **FAST_FAILURE}.items():
            mp.setenv(name, value)
        yield env


@pytest.fixture(scope="session")
def s3_packed(s3_env, packed):
    """The session's pack output (train/dev/test + glosses.txt) uploaded to ``s3://signstream-test/packed``."""
    url = "s3://signstream-test/packed"
    upload_tree(packed, url)
    return url


@pytest.fixture(scope="session")
def http_packed(packed):
    """The session's pack output served over HTTP; yields the base URL."""
    with http_server(packed) as base, pytest.MonkeyPatch.context() as mp:
        for name, value in FAST_FAILURE.items():
            mp.setenv(name, value)
        yield base
