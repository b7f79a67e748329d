"""Start the real `mosquitto` binary on a free loopback port, plain or with mutual TLS."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.pki import CertFiles, TestCA


def mosquitto_binary() -> str | None:
    """The broker binary, also where Debian puts it outside a non-root PATH."""
    found = shutil.which("mosquitto")
    if found:
        return found
    return "/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class TlsMaterial:
    """What a TLS client needs to reach the broker: the CA and named client certificates."""

    ca: Path
    clients: dict[str, CertFiles] = field(default_factory=dict)


class BrokerStartError(RuntimeError):
    """The broker did not come up; carries its log."""


class Mosquitto:
    """One broker process with its own folder, config, port and log."""

    def __init__(
        self,
        folder: Path,
        *,
        tls: TlsMaterial | None = None,
        server_cert: CertFiles | None = None,
        acl: str | None = None,
        persistence: bool = False,
        port: int | None = None,
    ) -> None:
        self.folder = folder
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.tls = tls
        self.log_path = folder / "mosquitto.log"
        self.config_path = folder / "mosquitto.conf"
        lines = [
            "per_listener_settings false",
            f"listener {self.port} {self.host}",
            f"log_dest file {self.log_path}",
            "log_type all",
            "connection_messages true",
            f"persistence {'true' if persistence else 'false'}",
            # A headend's session must hold a gateway's post-outage burst: the default
            # (1,000) drops the rest (docs/mqtt.md, Connection).
            "max_queued_messages 100000",
            # Also the Receive Maximum granted to MQTT 5 clients (default 20, below the
            # gateway's window of 64; docs/mqtt.md, Connection).
            "max_inflight_messages 256",
            f"persistence_location {folder}/",
        ]
        if os.geteuid() == 0:
            # Mosquitto started as root drops to the `mosquitto` user and then cannot
            # read our owner-only key files.
            lines.append("user root")
        if tls is not None:
            assert server_cert is not None
            lines += [
                f"cafile {tls.ca}",
                f"certfile {server_cert.cert}",
                f"keyfile {server_cert.key}",
                "require_certificate true",
                "use_identity_as_username true",
                "allow_anonymous false",
            ]
        else:
            lines.append("allow_anonymous true")
        if acl is not None:
            acl_path = folder / "acl"
            acl_path.write_text(acl)
            lines.append(f"acl_file {acl_path}")
        self.config_path.write_text("\n".join(lines) + "\n")
        self._proc: subprocess.Popen[bytes] | None = None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log written)"

    def start(self, timeout: float = 10.0) -> None:
        binary = mosquitto_binary()
        if binary is None:
            raise BrokerStartError("mosquitto not found: install Debian's 'mosquitto' package")
        self._proc = subprocess.Popen(
            [binary, "-c", str(self.config_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                raise BrokerStartError(f"mosquitto exited at start:\n{err}\n{self.log()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise BrokerStartError(f"mosquitto did not listen within {timeout}s:\n{self.log()}")

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        """Stop gracefully (SIGTERM), as an operator would."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._proc is not None and self._proc.stderr:
            self._proc.stderr.close()

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        if self._proc is not None and self._proc.stderr:
            self._proc.stderr.close()  # a start() after this makes a new process


#: The ACL the TLS fixture installs: the gateway writes its own tree, the headend
#: reads every gateway and commands them, anyone else only gets a sandbox.
TEST_ACL = """\
user gw-test
topic readwrite prepaid/v1/gw-test/#

user headend
topic read prepaid/v1/#
topic write prepaid/v1/+/cmd
topic write prepaid/v1/+/meters/+/cmd

user intruder
topic readwrite sandbox/#
"""


def tls_broker(folder: Path) -> Mosquitto:
    """A broker that requires client certificates and enforces :data:`TEST_ACL`."""
    ca = TestCA(folder)
    server = ca.issue("localhost", server=True)
    material = TlsMaterial(ca=ca.cert_path)
    for cn in ("gw-test", "headend", "intruder"):
        material.clients[cn] = ca.issue(cn, server=False)
    return Mosquitto(folder, tls=material, server_cert=server, acl=TEST_ACL)
