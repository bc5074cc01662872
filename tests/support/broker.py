"""A Kafka broker that keeps its data across a restart, for RELIABILITY.md scenario 21.

Either an external one (`KAFKA_BOOTSTRAP` plus `GUARDSTREAM_TEST_BROKER_RESTART`, the shell
command that restarts it, e.g. `docker restart kafka`), or a local tansu whose `s3://` storage
lives in a moto S3 server (the `moto[server]` dev dependency), both started here.
tansu's default `memory://` storage loses everything on restart, so it cannot stand in.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from guardstream.devtools.stack import StackError, tansu_binary
from tests.conftest import free_port, wait_for_port

RESTART_ENV = "GUARDSTREAM_TEST_BROKER_RESTART"
BUCKET = "tansu"


class NoPersistentBroker(Exception):
    """Why no broker that survives a restart is available (the test skips with it on a laptop,
    fails with it in CI)."""


@dataclass
class ExternalBroker:
    bootstrap: str
    restart_command: str
    # A real Kafka reports end offsets truthfully; the oracle can trust them.
    settle_s: float = 0.0

    def restart(self) -> None:
        subprocess.run(shlex.split(self.restart_command), check=True, timeout=300)

    def stop(self) -> None:
        """Not ours to stop."""


@dataclass
class TansuOnS3:
    """tansu with `s3://` storage in a local moto server: a restart keeps topics, records
    and committed offsets."""

    workdir: Path
    port: int = field(default_factory=free_port)
    s3_port: int = field(default_factory=free_port)
    # tansu 0.6 on s3 under-reports end offsets (ListOffsets latest); consumers and commits
    # are right. The oracle reads until the topics are quiet instead.
    settle_s: float = 2.0
    _s3: subprocess.Popen[bytes] | None = None
    _tansu: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> TansuOnS3:
        with (self.workdir / "moto.log").open("ab") as log:
            self._s3 = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.s3_port)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if not wait_for_port(self.s3_port, timeout=60):
            raise NoPersistentBroker("the moto S3 server did not start")
        import boto3

        boto3.client("s3", **self._s3_client()).create_bucket(
            Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-2"}
        )
        self._start_tansu()
        return self

    def _s3_client(self) -> dict[str, str]:
        return {
            "endpoint_url": f"http://127.0.0.1:{self.s3_port}",
            "aws_access_key_id": "test",
            "aws_secret_access_key": "test",
            "region_name": "eu-west-2",
        }

    def _start_tansu(self) -> None:
        url = f"tcp://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "eu-west-2",
            "AWS_ENDPOINT": f"http://127.0.0.1:{self.s3_port}",
            "AWS_ALLOW_HTTP": "true",
        }
        command = [
            str(tansu_binary()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            f"s3://{BUCKET}/",
        ]
        with (self.workdir / "tansu.log").open("ab") as log:
            self._tansu = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        if not wait_for_port(self.port, timeout=30):
            raise NoPersistentBroker("tansu on s3 storage did not start")

    def restart(self) -> None:
        assert self._tansu is not None
        self._tansu.terminate()
        self._tansu.wait(timeout=30)
        self._start_tansu()

    def stop(self) -> None:
        for proc in (self._tansu, self._s3):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=30)


def persistent_broker(workdir: Path) -> ExternalBroker | TansuOnS3:
    """The broker scenario 21 can restart, or `NoPersistentBroker` saying why there is none."""
    external = os.environ.get("KAFKA_BOOTSTRAP")
    restart = os.environ.get(RESTART_ENV)
    if external:
        if not restart:
            raise NoPersistentBroker(
                f"KAFKA_BOOTSTRAP={external} is an external broker, but {RESTART_ENV} does not "
                "say how to restart it (e.g. 'docker restart kafka')"
            )
        return ExternalBroker(external, restart)
    if importlib.util.find_spec("moto") is None:
        raise NoPersistentBroker(
            "no persistent broker: set KAFKA_BOOTSTRAP and "
            f"{RESTART_ENV}, or install the dev extra (moto[server]) for tansu on S3 storage"
        )
    try:
        tansu_binary()
    except StackError as exc:
        raise NoPersistentBroker(f"no tansu binary: {exc}") from exc
    return TansuOnS3(workdir).start()
