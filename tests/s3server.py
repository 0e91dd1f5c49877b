"""A real S3-compatible server for the storage tests: moto's standalone server (`moto_server`, from the `moto[server]`
test dependency), started under `ltray.guard` on an address the test chooses and stopped by its process group (or
by the guard, when the test process dies first).

Clients reach it as they would reach S3: credentials and the endpoint in the environment (`s3_env`), which
pyarrow (and so Ray Train and ltray) reads on every node; the EC2 metadata lookup is switched off so that nothing
outside the test's own addresses is ever contacted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ltray.guard import guarded

MOTO_SERVER = str(Path(sys.executable).with_name("moto_server"))
START_TIMEOUT_S = 60.0


def s3_env(endpoint: str) -> dict[str, str]:
    """The environment of a process that should use the test server as its S3."""
    return {"AWS_ACCESS_KEY_ID": "ltray-test", "AWS_SECRET_ACCESS_KEY": "ltray-test-secret",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint, "AWS_EC2_METADATA_DISABLED": "true"}


def moto_argv(host: str, port: int) -> list[str]:
    return [MOTO_SERVER, "-H", host, "-p", str(port)]


def answers(endpoint: str) -> bool:
    try:
        urllib.request.urlopen(endpoint, timeout=2.0).close()
    except urllib.error.HTTPError:
        return True  # any HTTP answer: the server is up
    except OSError:
        return False
    return True


def create_bucket_code(endpoint: str, bucket: str) -> str:
    """Python that creates `bucket` on the server (run where the endpoint is reachable)."""
    host = endpoint.split("://", 1)[1]
    return ("import pyarrow.fs as f; f.S3FileSystem(endpoint_override=%r, scheme='http', access_key='ltray-test', "
            "secret_key='ltray-test-secret', region='us-east-1', allow_bucket_creation=True).create_dir(%r)"
            % (host, bucket))


def create_bucket(endpoint: str, bucket: str) -> None:
    exec(create_bucket_code(endpoint, bucket), {})


@contextmanager
def local_s3_server(port: int, log_path: Path) -> Iterator[str]:
    """moto_server on 127.0.0.1:`port`; yields its endpoint once it answers; stops its whole process group."""
    endpoint = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        process = subprocess.Popen(guarded(moto_argv("127.0.0.1", port)), stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True,
                                   env={**os.environ, **s3_env(endpoint)})
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not answers(endpoint):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto_server did not start on {endpoint}:\n{log_path.read_text()[-2000:]}")
            time.sleep(0.3)
        yield endpoint
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
