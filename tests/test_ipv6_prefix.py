"""Per-client limits group IPv6 clients by /64, proved with real IPv6
connections from several addresses, inside a network namespace (the host's
own network is left alone). See netns_ipv6_probe.py."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import BIN, Server

HERE = Path(__file__).parent


def ip(*args, ns=None):
    cmd = ["ip"] + (["-n", ns] if ns else []) + list(args)
    subprocess.run(cmd, check=True, capture_output=True)


@pytest.fixture
def netns():
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("needs root and iproute2 for a network namespace")
    name = f"mg-v6-{os.getpid()}"
    ip("netns", "add", name)
    try:
        ip("link", "set", "lo", "up", ns=name)
        ip("addr", "add", "fd00:64::1/64", "dev", "lo", "nodad", ns=name)
        for i in range(0x10, 0x18):
            ip("addr", "add", f"fd00:64::{i:x}/128", "dev", "lo", "nodad", ns=name)
        ip("addr", "add", "fd00:65::10/64", "dev", "lo", "nodad", ns=name)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def probe(netns, server, mode):
    assert "[fd00:64::1]:" in server.config.read_text()
    out = subprocess.run(
        ["ip", "netns", "exec", netns, "python3", str(HERE / "netns_ipv6_probe.py"),
         BIN, str(server.config), mode, str(server.ports["smtp"]), str(server.ports["pop3"])],
        capture_output=True, timeout=120, text=True,
    )
    log = Path(str(server.config) + ".log")
    assert out.returncode == 0, out.stderr + (log.read_text()[-3000:] if log.exists() else "")
    return json.loads(out.stdout)


def test_limits_count_the_slash_64_not_the_address(netns, tmp_path):
    server = Server(tmp_path, replace={
        "listen = 127.0.0.1:": "listen = [fd00:64::1]:",
        "max_recipients = 20": "max_recipients = 20\nmax_connections_per_ip = 2\n"
                               "allow_plaintext_auth = yes",
    })
    got = probe(netns, server, "limits")
    assert all(g.startswith("220") for g in got["held"]), got
    # A third address of the same /64 is the same client: over its limit.
    assert got["third_same_64"].startswith("421"), got
    assert got["other_64"].startswith("220"), got
    assert all(g.startswith("-ERR") for g in got["guesses"]), got
    # Ten failures from five addresses of the /64 blocked all of it ...
    assert got["right_password_same_64"].startswith("-ERR"), got
    # ... and nobody else.
    assert got["right_password_other_64"].startswith("+OK"), got


def test_plaintext_login_refused_off_loopback(netns, tmp_path):
    """Without TLS, passwords are taken only from loopback (the default):
    a client on the network is told to use STLS / STARTTLS first."""
    server = Server(tmp_path, replace={"listen = 127.0.0.1:": "listen = [fd00:64::1]:"})
    # The port-25 listener offers no AUTH at all; submission on the
    # namespace address is what a laptop on the LAN would use.
    text = server.config.read_text().replace(
        f"submission = 127.0.0.1:{server.ports['submission']}",
        f"submission = [fd00:64::1]:{server.ports['submission']}")
    server.config.write_text(text)
    server.ports["smtp"] = server.ports["submission"]
    got = probe(netns, server, "plaintext")
    assert got["pop3"].startswith("-ERR") and "STLS" in got["pop3"], got
    assert not any("AUTH" in line for line in got["ehlo"]), got
    assert got["smtp_auth"][:3] in ("530", "538", "503"), got
