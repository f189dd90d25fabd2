"""A real Apache Kafka broker for development and tests (KRaft, one node, loopback).

What it holds: ``install`` (resolve the broker's jars from Maven Central once
into a cache directory), ``Broker`` (format KRaft storage in a directory,
start ``kafka.Kafka`` in the background on 127.0.0.1, wait until it answers,
stop it, start it again on the same port and data), a pytest fixture
``kafka_broker`` (one broker per test session) and a command line::

    python tests/kafka.py install                       # once; idempotent
    python tests/kafka.py start --dir /tmp/k --port 9092  # prints the bootstrap address
    python tests/kafka.py stop --dir /tmp/k

Jars: ``org.apache.kafka:kafka_2.13:$PHOBOS_KAFKA_VERSION`` (default below)
and its runtime dependencies, resolved by Maven into
``$PHOBOS_KAFKA_CACHE`` (default ``~/.cache/phobos/kafka/<version>/libs``).
Nothing is committed to the repository.  Needs Java 17 and Maven.

Costs and caveats: the broker is a JVM with a 512 MB heap cap; it binds only
127.0.0.1 (a PLAINTEXT listener on the chosen port and a controller listener
on a second free port).  Readiness means an AdminClient can list topics.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

__all__ = ["KAFKA_VERSION", "cache_dir", "installed", "install", "available", "Broker", "free_port",
           "kafka_broker"]

KAFKA_VERSION = os.environ.get("PHOBOS_KAFKA_VERSION", "4.4.0")
READY_TIMEOUT_S = 90.0

_POM = """<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>phobos</groupId>
  <artifactId>phobos-test-kafka</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>{version}</version>
    </dependency>
    <dependency>
      <!-- the broker logs through SLF4J 1.7; without a binding its errors go nowhere -->
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>2.24.3</version>
    </dependency>
  </dependencies>
</project>
"""

_LOG4J2_PROPERTIES = """status = warn
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.out.ref = STDOUT
"""


def cache_dir() -> Path:
    base = os.environ.get("PHOBOS_KAFKA_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "phobos", "kafka")
    return Path(base) / KAFKA_VERSION


def _libs() -> Path:
    return cache_dir() / "libs"


def installed() -> bool:
    return (cache_dir() / "complete").exists() and any(_libs().glob(f"kafka_2.13-{KAFKA_VERSION}.jar"))


def install(quiet: bool = False) -> Path:
    """Resolve the broker jars with Maven into the cache; skip when already there."""
    if installed():
        return _libs()
    if shutil.which("mvn") is None:
        raise RuntimeError("Maven (mvn) is not installed; apt-get install maven")
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    (root / "pom.xml").write_text(_POM.format(version=KAFKA_VERSION))
    tmp = root / "libs.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = ["mvn", "-q", "-B", "-f", str(root / "pom.xml"), "dependency:copy-dependencies",
           f"-DoutputDirectory={tmp}", "-DincludeScope=runtime"]
    if not quiet:
        print("resolving Kafka", KAFKA_VERSION, "jars with Maven into", root, file=sys.stderr)
    subprocess.run(cmd, check=True, timeout=900)
    shutil.rmtree(_libs(), ignore_errors=True)
    tmp.rename(_libs())
    (root / "complete").write_text(KAFKA_VERSION + "\n")
    return _libs()


def available() -> tuple[bool, str]:
    """Whether a broker can be started here (jars installed, Java present)."""
    if shutil.which("java") is None:
        return False, "Java 17 (java) is not installed"
    if not installed():
        try:
            install(quiet=True)
        except Exception as err:  # no Maven, no network ...
            return False, f"Kafka jars not installed and `tests/kafka.py install` failed: {err}"
    return True, ""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Broker:
    """One KRaft broker+controller on 127.0.0.1 with its data in ``directory``.

    ``start()`` formats the storage on first use and waits for readiness;
    ``stop()`` ends the process (SIGTERM, then SIGKILL after ``grace_s``);
    ``start()`` again reuses the data and the port, as a restarted broker
    would, which is what the outage tests need.
    """

    def __init__(self, directory: str | os.PathLike, port: int | None = None, controller_port: int | None = None,
                 tied: bool = False):
        self.tied = tied  # the broker dies with this process (tests), or outlives it (CLI start)
        self.dir = Path(directory)
        self.port = port or free_port()
        self.controller_port = controller_port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _properties(self) -> Path:
        data = self.dir / "data"
        text = "\n".join([
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}",
            f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            f"log.dirs={data}",
            "num.partitions=1",
            "auto.create.topics.enable=false",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=4",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            "message.max.bytes=8388608",
            "log.retention.hours=24",
            "",
        ])
        path = self.dir / "server.properties"
        path.write_text(text)
        return path

    def _java(self, *args: str, log: Path | None = None, background: bool = False) -> subprocess.Popen | None:
        log4j = self.dir / "log4j2.properties"
        log4j.write_text(_LOG4J2_PROPERTIES)
        cmd = ["java", "-Xms128m", "-Xmx512m", "-XX:+UseSerialGC", "-Djava.awt.headless=true",
               f"-Dlog4j2.configurationFile={log4j}", f"-Dkafka.logs.dir={self.dir / 'logs'}",
               "-cp", str(_libs() / "*"), *args]
        if background:
            out = open(log, "ab") if log else subprocess.DEVNULL
            return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, preexec_fn=_die_with_parent if self.tied else None)
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed: {res.stdout}{res.stderr}")
        return None

    def start(self, timeout_s: float = READY_TIMEOUT_S) -> "Broker":
        if self.proc is not None and self.proc.poll() is None:
            return self
        self.dir.mkdir(parents=True, exist_ok=True)
        props = self._properties()
        if not (self.dir / "data" / "meta.properties").exists():
            cluster_id = _cluster_id()
            self._java("kafka.tools.StorageTool", "format", "--config", str(props),
                       "--cluster-id", cluster_id, "--ignore-formatted")
        log = self.dir / "broker.log"
        self.proc = self._java("kafka.Kafka", str(props), log=log, background=True)
        (self.dir / "broker.pid").write_text(f"{self.proc.pid}\n")
        (self.dir / "broker.port").write_text(f"{self.port} {self.controller_port}\n")
        try:
            self.wait_ready(timeout_s)
        except Exception:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        from confluent_kafka.admin import AdminClient

        deadline = time.monotonic() + timeout_s
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"broker exited with {self.proc.returncode}; see {self.dir / 'broker.log'}:\n"
                                   + _tail(self.dir / "broker.log"))
            admin = AdminClient({"bootstrap.servers": self.bootstrap, "socket.timeout.ms": 2000,
                                 "log_level": 0})
            try:
                meta = admin.list_topics(timeout=2)
                if meta.brokers:
                    return
            except Exception as err:  # KafkaException while it starts
                last = str(err)
            time.sleep(0.3)
        raise RuntimeError(f"broker on {self.bootstrap} not ready after {timeout_s:.0f} s ({last}):\n"
                           + _tail(self.dir / "broker.log"))

    def stop(self, grace_s: float = 20.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def kill(self) -> None:
        """Stop without a clean shutdown (SIGKILL)."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> "Broker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _die_with_parent() -> None:
    """In the child: SIGTERM when the process that started it dies (even by
    SIGKILL), so a killed test run leaves no broker behind (Linux prctl)."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _cluster_id() -> str:
    import base64

    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


try:
    import pytest
except ImportError:  # the CLI works without pytest
    pytest = None

if pytest is not None:

    _SHARED: dict[str, Broker] = {}

    @pytest.fixture(scope="session")
    def kafka_broker(request, tmp_path_factory):
        """One broker per test session on free loopback ports (shared by every
        module that imports this fixture); skipped locally, failed in CI, when
        it cannot start.  Tests may stop and start it (same port and data)
        but must leave it running."""
        from conftest import require

        broker = _SHARED.get("broker")
        if broker is None:
            ok, reason = available()
            require(ok, reason)
            broker = Broker(tmp_path_factory.mktemp("kafka"), tied=True)
            try:
                broker.start()
            except Exception as err:
                require(False, f"Kafka broker did not start: {err}")
            _SHARED["broker"] = broker
            request.config.add_cleanup(broker.stop)
        if not broker.running:
            broker.start()
        yield broker


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("install", help="resolve the Kafka jars with Maven into the cache (idempotent)")
    p = sub.add_parser("start", help="start a broker in the background and wait until it is ready")
    p.add_argument("--dir", required=True, help="data and log directory")
    p.add_argument("--port", type=int, default=9092)
    p.add_argument("--controller-port", type=int, default=0, help="default: a free port")
    p = sub.add_parser("stop", help="stop the broker started with --dir")
    p.add_argument("--dir", required=True)
    args = parser.parse_args(argv)
    if args.cmd == "install":
        print(install())
        return 0
    if args.cmd == "start":
        install()
        broker = Broker(args.dir, args.port, args.controller_port or None).start()
        print(broker.bootstrap)
        return 0
    pid_file = Path(args.dir) / "broker.pid"
    if not pid_file.exists():
        print(f"no broker.pid in {args.dir}", file=sys.stderr)
        return 1
    pid = int(pid_file.read_text())
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pid_file.unlink()
        return 0
    for _ in range(200):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(pid, signal.SIGKILL)
    pid_file.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
