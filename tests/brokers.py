"""Private servers for fault tests: a Kafka broker and a PostgreSQL server of a test's own,
in a temporary directory on free ports, which the test may SIGKILL and restart without
touching the shared ones (127.0.0.1:39092, 127.0.0.1:55432) that other tests use.

Also the independent witnesses: Kafka's own Java console consumer (read_committed) and
``kafka-transactions.sh find-hanging`` (through ``scripts/kafka``), and PostgreSQL's
``pg_prepared_xacts``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from kafka_util import TOPICS

ROOT = Path(__file__).resolve().parent.parent
KAFKA = str(ROOT / "scripts" / "kafka")
POSTGRES = str(ROOT / "scripts" / "postgres")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OwnBroker:
    """A single-node Kafka broker of this test only (``scripts/kafka`` with its own
    ONCEFLOW_KAFKA_DIR and ports, small heap)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.port, self.controller_port = free_port(), free_port()
        while self.controller_port == self.port:
            self.controller_port = free_port()
        self.env = {**os.environ, "ONCEFLOW_KAFKA_DIR": str(directory),
                    "ONCEFLOW_KAFKA_PORT": str(self.port),
                    "ONCEFLOW_KAFKA_CONTROLLER_PORT": str(self.controller_port),
                    "ONCEFLOW_KAFKA_HEAP": os.environ.get("ONCEFLOW_TEST_KAFKA_HEAP",
                                                          "-Xms96m -Xmx256m"),
                    "ONCEFLOW_KAFKA_START_TIMEOUT": "120"}
        self.bootstrap = f"127.0.0.1:{self.port}"

    def _run(self, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([KAFKA, *args], capture_output=True, text=True, env=self.env,
                              timeout=timeout)
        if proc.returncode != 0:
            raise AssertionError(f"scripts/kafka {' '.join(args)} failed ({proc.returncode}):"
                                 f"\n{proc.stderr[-3000:]}")
        return proc

    def start(self) -> str:
        self._run("start")
        return self.bootstrap

    def kill(self) -> None:
        """SIGKILL, like a crash."""
        self._run("kill")

    def stop(self) -> None:
        self._run("stop")

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
        TOPICS.forget(self.bootstrap)  # its topics went with it

    # --- the independent witness -------------------------------------------------------
    def console_consumer(self, topic: str, expect: int, timeout_ms: int = 15_000) -> list[Any]:
        """The values Kafka's own console consumer (read_committed) sees in ``topic``."""
        proc = subprocess.run(
            [KAFKA, "console-consumer", "--bootstrap-server", self.bootstrap, "--topic", topic,
             "--from-beginning", "--isolation-level", "read_committed",
             "--timeout-ms", str(timeout_ms), "--max-messages", str(expect + 1000)],
            capture_output=True, text=True, env=self.env, timeout=timeout_ms / 1000 + 120)
        # the consumer exits 0 after --timeout-ms without a message (Kafka 4 logs an error
        # "Error processing message, terminating consumer process: TimeoutException")
        lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
        return [json.loads(ln) for ln in lines]

    def find_hanging(self) -> list[str]:
        """Rows ``kafka-transactions.sh find-hanging`` prints: transactions open on a
        partition longer than 0 minutes whose coordinator does not know them as ongoing —
        or open at all (``--max-transaction-timeout 0``)."""
        proc = self._run("transactions", "--bootstrap-server", self.bootstrap, "find-hanging",
                         "--broker-id", "1", "--max-transaction-timeout", "0", timeout=120)
        rows = [ln for ln in proc.stdout.splitlines() if ln.strip()]
        assert rows and rows[0].startswith("Topic"), proc.stdout + proc.stderr
        return rows[1:]

    def assert_witness(self, topic: str, n: int, key: str = "id") -> None:
        """Kafka's own tools agree: each id 0..n-1 once in ``topic``, nothing hanging."""
        got = self.console_consumer(topic, n)
        counts = Counter(v[key] for v in got)
        dups = sorted(i for i, c in counts.items() if c > 1)
        missing = sorted(set(range(n)) - set(counts))
        assert len(got) == n and not dups and not missing, (
            f"console consumer (read_committed): {len(got)} records, expected {n}; "
            f"duplicated {dups[:10]}, missing {missing[:10]}")
        hanging = self.find_hanging()
        assert not hanging, f"kafka-transactions find-hanging: {hanging}"


class SaslBroker(OwnBroker):
    """An :class:`OwnBroker` whose only client listener is SASL_PLAINTEXT with SASL/PLAIN
    (users ``admin`` and :attr:`USER`; the broker talks to itself as ``admin`` on that
    listener too) and SCRAM-SHA-256/512 (:meth:`add_scram_user`); the KRaft controller
    listener stays PLAINTEXT on loopback, and no PLAINTEXT listener is there for clients.
    :attr:`client_config` is what a client needs (SASL/PLAIN)."""

    USER, PASSWORD = "onceflow-user", "s3cret-Pa55word-0f-the-test"

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tls_port = free_port()
        while self.tls_port in (self.port, self.controller_port):
            self.tls_port = free_port()
        self.tls_bootstrap = f"127.0.0.1:{self.tls_port}"
        keystore, self.ca = self._certificates(directory.parent / f"{directory.name}-tls")
        extra = directory.parent / f"{directory.name}-sasl.properties"
        jaas = ("org.apache.kafka.common.security.plain.PlainLoginModule required "
                'username="admin" password="admin-secret" user_admin="admin-secret" '
                f'user_{self.USER}="{self.PASSWORD}";')
        extra.write_text(
            f"listeners=SASL_PLAINTEXT://127.0.0.1:{self.port},"
            f"SASL_SSL://127.0.0.1:{self.tls_port},"
            f"CONTROLLER://127.0.0.1:{self.controller_port}\n"
            f"advertised.listeners=SASL_PLAINTEXT://127.0.0.1:{self.port},"
            f"SASL_SSL://127.0.0.1:{self.tls_port}\n"
            "listener.security.protocol.map=SASL_PLAINTEXT:SASL_PLAINTEXT,SASL_SSL:SASL_SSL,"
            "CONTROLLER:PLAINTEXT\n"
            "listener.name.sasl_ssl.ssl.keystore.type=PEM\n"
            f"listener.name.sasl_ssl.ssl.keystore.location={keystore}\n"
            "listener.name.sasl_ssl.sasl.enabled.mechanisms=PLAIN\n"
            f"listener.name.sasl_ssl.plain.sasl.jaas.config={jaas}\n"
            "inter.broker.listener.name=SASL_PLAINTEXT\n"
            "sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512\n"
            "sasl.mechanism.inter.broker.protocol=PLAIN\n"
            f"listener.name.sasl_plaintext.plain.sasl.jaas.config={jaas}\n"
            + "".join(f"listener.name.sasl_plaintext.scram-sha-{n}.sasl.jaas.config="
                      "org.apache.kafka.common.security.scram.ScramLoginModule required;\n"
                      for n in (256, 512)))
        self.env["ONCEFLOW_KAFKA_EXTRA_PROPERTIES"] = str(extra)
        self.client_config = {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "PLAIN",
                              "sasl.username": self.USER, "sasl.password": self.PASSWORD}
        #: for :attr:`tls_bootstrap`: SASL_SSL, the server certificate checked (the
        #: test's own CA, the name 127.0.0.1)
        self.tls_client_config = {**self.client_config, "security.protocol": "SASL_SSL",
                                  "ssl.ca.location": str(self.ca)}

    @staticmethod
    def _certificates(d: Path) -> tuple[Path, Path]:
        """A CA of the test's own and a server certificate for 127.0.0.1 signed by it
        (``openssl``); (the broker's PEM keystore: key and certificate, the CA file)."""
        d.mkdir(parents=True, exist_ok=True)

        def run(*args: str) -> None:
            subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
            "ca.pem", "-days", "2", "-subj", "/CN=onceflow-test-ca")
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out",
            "server.csr", "-subj", "/CN=127.0.0.1")
        (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf")
        keystore = d / "keystore.pem"
        keystore.write_text((d / "server.key").read_text() + (d / "server.pem").read_text())
        return keystore, d / "ca.pem"

    def add_scram_user(self, mechanism: str, user: str, password: str) -> dict[str, Any]:
        """A SCRAM user (``mechanism`` SCRAM-SHA-256 or -512), made through the admin API
        as :attr:`USER`; the client settings to log in as it."""
        from confluent_kafka.admin import (
            AdminClient,
            ScramCredentialInfo,
            ScramMechanism,
            UserScramCredentialUpsertion,
        )

        mech = ScramMechanism.SCRAM_SHA_256 if mechanism.endswith("256") else \
            ScramMechanism.SCRAM_SHA_512
        admin = AdminClient({"bootstrap.servers": self.bootstrap, **self.client_config})
        up = UserScramCredentialUpsertion(user, ScramCredentialInfo(mech, 4096),
                                          password.encode())
        for f in admin.alter_user_scram_credentials([up]).values():
            f.result(timeout=30)
        return {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": mechanism,
                "sasl.username": user, "sasl.password": password}


class OwnPostgres:
    """A PostgreSQL server of this test only (``scripts/postgres`` with its own
    ONCEFLOW_PG_DIR and ONCEFLOW_PG_PORT)."""

    def __init__(self) -> None:
        # A directory of its own under /tmp: the server runs as the postgres user (when the
        # tests run as root), which cannot enter pytest's 0700 temporary directories.
        self.base = Path(tempfile.mkdtemp(prefix="onceflow-pgfaults-"))
        if os.geteuid() == 0:
            shutil.chown(self.base, "postgres")
        self.dir = self.base / "data"
        self.port = free_port()
        self.env = {**os.environ, "ONCEFLOW_PG_DIR": str(self.dir),
                    "ONCEFLOW_PG_PORT": str(self.port)}
        self.dsn = ""

    def _run(self, *args: str, timeout: float = 240) -> str:
        proc = subprocess.run([POSTGRES, *args], capture_output=True, text=True, env=self.env,
                              timeout=timeout)
        if proc.returncode != 0:
            raise AssertionError(f"scripts/postgres {' '.join(args)} failed "
                                 f"({proc.returncode}):\n{proc.stderr[-3000:]}")
        return proc.stdout.strip()

    def start(self) -> str:
        self.dsn = self._run("start").splitlines()[-1]
        return self.dsn

    def kill(self) -> None:
        """``pg_ctl stop -m immediate``: a crash; recovery runs on the next start."""
        self._run("kill")

    def remove(self) -> None:
        self._run("stop")
        shutil.rmtree(self.base, ignore_errors=True)

    def terminate_sessions(self, application_prefix: str) -> list[int]:
        """``pg_terminate_backend`` every session whose application_name starts with
        ``application_prefix``; their pids."""
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as c:
            return [r[0] for r in c.execute(
                "SELECT pid FROM pg_stat_activity WHERE starts_with(application_name, %s) "
                "AND pid <> pg_backend_pid() AND pg_terminate_backend(pid)",
                (application_prefix,)).fetchall()]

    def prepared(self) -> list[str]:
        """Every gid in pg_prepared_xacts (the witness: nothing of a job may stay)."""
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as c:
            return [r[0] for r in c.execute("SELECT gid FROM pg_prepared_xacts").fetchall()]


def wait_for(pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)
