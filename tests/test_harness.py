"""The test harness itself: a server whose chosen port was taken before it
could bind (parallel tests, clients' ephemeral ports) starts on fresh
ports instead of failing the test that wanted it."""

import socket

import conftest


def test_a_port_taken_before_bind_is_chosen_again(tmp_path):
    s = conftest.Server(tmp_path / "s")
    taken = s.ports["imap"]
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", taken))
        blocker.listen()
        try:
            s.start()
            assert "Address already in use" in s.log_text(), "the first try met the taken port"
            assert s.ports["imap"] != taken
            with socket.create_connection(("127.0.0.1", s.ports["imap"]), timeout=10) as c:
                assert c.recv(100).startswith(b"* OK")
        finally:
            s.stop()
