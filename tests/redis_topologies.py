"""Redis deployments past one server, for the tests: a Redis Cluster of three masters, a
master with a replica watched by three Sentinels, and a TLS server with password and ACL user.

Ownership rule: every redis-server process of these deployments is started and stopped here,
each through :class:`tests.redis_server.RedisProcess`, on free loopback ports; ``stop()``
ends them all, whatever state a test left them in.
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.redis_server import RedisProcess, free_port

__all__ = ["RedisClusterGroup", "SentinelGroup", "TlsRedis", "wait_until"]

SERVICE = "mymaster"
_SENTINEL_READY = b"+monitor master"


def wait_until(check: Callable[[], bool], within: float, what: str) -> None:
    """Poll ``check`` (a question to the servers) until true; fail after ``within`` s."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {within} s")
        time.sleep(0.05)


def _client(port: int, **options: object) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, **options)  # type: ignore[arg-type]


def _ask(port: int, question: Callable[[redis.Redis], bool]) -> bool:
    client = _client(port)
    try:
        return question(client)
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


@dataclass
class RedisClusterGroup:
    """Three masters (no replicas) that ``redis-cli --cluster create`` joins into one
    cluster covering all 16 384 slots."""

    workdir: Path
    masters: list[RedisProcess] = field(default_factory=list)

    @property
    def url(self) -> str:
        nodes = ",".join(f"127.0.0.1:{master.port}" for master in self.masters)
        return f"redis+cluster://{nodes}"

    def start(self) -> None:
        cli = shutil.which("redis-cli")
        if cli is None:
            pytest.skip("no redis-cli to create a Redis Cluster with")
        for _ in range(3):
            master = RedisProcess()
            master.options = ("--cluster-enabled", "yes", "--dir", str(self.workdir))
            master.options += ("--cluster-config-file", f"nodes-{master.port}.conf")
            # The bus port defaults to port + 10 000, which may be taken or above 65 535.
            master.options += ("--cluster-port", str(free_port()))
            self.masters.append(master)
            master.start()
        addresses = [f"127.0.0.1:{master.port}" for master in self.masters]
        create = [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0"]
        subprocess.run([*create, "--cluster-yes"], check=True, capture_output=True, timeout=30)
        for master in self.masters:
            wait_until(partial(_ask, master.port, _cluster_ok), 30, f"cluster on {master.port}")

    def stop(self) -> None:
        for master in self.masters:
            master.stop()


def _cluster_ok(client: redis.Redis) -> bool:
    info: Any = client.execute_command("CLUSTER INFO")  # type: ignore[no-untyped-call]
    return bool(info["cluster_state"] == "ok")


@dataclass
class SentinelGroup:
    """A master, one replica and three Sentinels (quorum 2) that fail over to the replica
    ``down_after_ms`` milliseconds after the master stops answering them."""

    workdir: Path
    down_after_ms: int = 500
    master: RedisProcess = field(default_factory=RedisProcess)
    replica: RedisProcess = field(default_factory=RedisProcess)
    sentinels: list[RedisProcess] = field(default_factory=list)

    @property
    def url(self) -> str:
        nodes = ",".join(f"127.0.0.1:{sentinel.port}" for sentinel in self.sentinels)
        return f"redis+sentinel://{nodes}/{SERVICE}/0"

    def start(self) -> None:
        # Replication writes RDB files: into the test's directory, not the working one.
        self.master.options = ("--dir", str(self.workdir))
        self.master.start()
        replica_of = ("--replicaof", "127.0.0.1", str(self.master.port))
        self.replica.options = (*replica_of, "--dir", str(self.workdir))
        self.replica.start()
        wait_until(lambda: _ask(self.replica.port, _linked), 30, "replica in sync")
        for number in range(3):
            config = self.workdir / f"sentinel-{number}.conf"
            config.write_text(self._sentinel_config())
            sentinel = RedisProcess(config=str(config), ready=_SENTINEL_READY)
            sentinel.options = ("--sentinel",)
            self.sentinels.append(sentinel)
            sentinel.start()
        # A failover needs a quorum that knows the replica and each other (hello messages
        # on the master every 2 s): wait until every Sentinel does.
        for sentinel in self.sentinels:
            ready = partial(_ask, sentinel.port, _sentinel_ready)
            wait_until(ready, 30, f"Sentinel on {sentinel.port}")

    def _sentinel_config(self) -> str:
        return (
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.master.port} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} {self.down_after_ms}\n"
            f"sentinel failover-timeout {SERVICE} 10000\n"
            f"sentinel parallel-syncs {SERVICE} 1\n"
        )

    def master_port(self) -> int:
        """The port of the master the Sentinels name now."""
        client = _client(self.sentinels[0].port)
        try:
            address = client.sentinel_get_master_addr_by_name(SERVICE)
            assert isinstance(address, tuple | list), address
            return int(address[1])
        finally:
            client.close()

    def stop(self) -> None:
        for process in [*self.sentinels, self.replica, self.master]:
            process.stop()


def _linked(client: redis.Redis) -> bool:
    return bool(client.info("replication").get("master_link_status") == "up")


def _sentinel_ready(client: redis.Redis) -> bool:
    replicas = client.sentinel_slaves(SERVICE)
    peers = client.sentinel_sentinels(SERVICE)
    assert isinstance(replicas, list) and isinstance(peers, list)
    return len(replicas) == 1 and len(peers) == 2


@dataclass
class TlsRedis:
    """A redis-server that speaks only TLS (a certificate for 127.0.0.1 signed by a test CA)
    and requires a password; ``acl`` adds ``ACL SETUSER`` rules for a user ``kanal``."""

    workdir: Path
    password: str = "default-secret"
    acl: str = ""
    server: RedisProcess = field(default_factory=RedisProcess)

    @property
    def ca_file(self) -> Path:
        return self.workdir / "ca.pem"

    def start(self) -> None:
        _write_certificates(self.workdir)
        self.server.options = (
            *("--port", "0", "--tls-port", str(self.server.port)),
            *("--tls-cert-file", str(self.workdir / "redis.pem")),
            *("--tls-key-file", str(self.workdir / "redis.key")),
            *("--tls-ca-cert-file", str(self.ca_file)),
            *("--tls-auth-clients", "no", "--requirepass", self.password),
        )
        if self.acl:
            self.server.options += ("--user", f"kanal {self.acl}")
        self.server.start()

    def url(self, userinfo: str) -> str:
        """``rediss://`` with ``userinfo`` that trusts the test CA (and checks the name)."""
        port = self.server.port
        return f"rediss://{userinfo}@127.0.0.1:{port}/0?ssl_ca_certs={self.ca_file}"

    def stop(self) -> None:
        self.server.stop()


def _write_certificates(directory: Path) -> None:
    """``ca.pem`` and ``redis.pem``/``redis.key`` for IP 127.0.0.1, valid for a day."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kanal test CA")])
    ca = (
        _builder(ca_name, ca_name, ca_key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    cert = (
        _builder(name, ca_name, key.public_key(), now)
        .add_extension(san, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    (directory / "ca.pem").write_bytes(ca.public_bytes(pem))
    (directory / "redis.pem").write_bytes(cert.public_bytes(pem))
    private = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (directory / "redis.key").write_bytes(private)


def _builder(
    subject: x509.Name, issuer: x509.Name, public: ec.EllipticCurvePublicKey, now: datetime.datetime
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
