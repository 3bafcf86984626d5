"""The command line and the server's life: check, serve, signals, reloads."""

import signal
import smtplib
import subprocess
import time

from conftest import BIN, Raw


def test_version():
    out = subprocess.run([BIN, "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("mailgate ")


def test_check_ok_and_errors(make_server):
    server = make_server(start=False)
    out = server.run("check")
    assert out.returncode == 0, out.stdout + out.stderr
    # -c after the subcommand works too.
    out = subprocess.run([BIN, "check", "-c", str(server.config)], capture_output=True)
    assert out.returncode == 0
    bad = (server.config_text.replace("max_recipients = 20", "max_recipients = 20\nfrobnicate = 1")
           + "\n[mailbox carol@nowhere.test]\n\n[bogus]\nbogus = yes\n")
    server.config.write_text(bad)
    lines = bad.splitlines()
    out = server.run("check")
    assert out.returncode == 1
    text = out.stdout.decode()
    mbox_line = lines.index("[mailbox carol@nowhere.test]") + 1
    assert f"{server.config}:{mbox_line}:" in text, text
    assert "nowhere.test" in text
    frob_line = lines.index("frobnicate = 1") + 1
    assert f"{server.config}:{frob_line}:" in text and "frobnicate" in text, text
    bogus_line = lines.index("[bogus]") + 1
    assert f"{server.config}:{bogus_line}:" in text


def test_serve_refuses_bad_config(make_server):
    server = make_server(start=False)
    server.config.write_text(server.config_text.replace("max_recipients = 20", "max_recipients = lots"))
    out = subprocess.run([BIN, "-c", str(server.config), "serve"], capture_output=True, text=True, timeout=10)
    assert out.returncode != 0
    assert "max_recipients" in out.stderr and "refusing to start" in out.stderr


def test_missing_config_file():
    out = subprocess.run([BIN, "-c", "/nonexistent/mailgate.ini", "check"], capture_output=True, text=True)
    assert out.returncode == 1
    assert "/nonexistent/mailgate.ini:0:" in out.stdout


def test_sigterm_exits_zero(server):
    assert server.stop(signal.SIGTERM) == 0
    assert "stopped" in server.log_text()


def test_sigint_exits_zero(server):
    assert server.stop(signal.SIGINT) == 0


def test_sigterm_lets_transaction_in_flight_finish(server):
    r = Raw(server.ports["smtp"])
    r.reply()
    r.cmd(b"EHLO x")
    r.cmd(b"MAIL FROM:<a@remote.test>")
    r.cmd(b"RCPT TO:<bob@example.test>")
    assert r.cmd(b"DATA").startswith(b"354")
    r.send(b"Subject: in flight\r\n\r\nfirst half\r\n")
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    # New connections are refused while the old one finishes.
    try:
        Raw(server.ports["smtp"], timeout=1).reply()
        refused = False
    except OSError:
        refused = True
    assert refused
    r.send(b"second half\r\n.\r\n")
    assert r.reply().startswith(b"250")
    assert server.proc.wait(10) == 0
    assert [m["Subject"] for m in server.messages("bob@example.test")] == ["in flight"]


def test_idle_connections_closed_on_stop(server):
    r = Raw(server.ports["smtp"])
    r.reply()
    r.cmd(b"EHLO x")
    server.proc.send_signal(signal.SIGTERM)
    assert r.reply().startswith(b"421 4.3.2"), "told why: shutting down"
    assert server.proc.wait(10) == 0


def test_stalled_transaction_at_stop_is_told_shutting_down(server):
    # A client that began a transaction and then says nothing gets the
    # grace period, then the reason: shutting down, not a timeout.
    r = Raw(server.ports["smtp"])
    r.reply()
    r.cmd(b"EHLO x")
    assert r.cmd(b"MAIL FROM:<a@remote.test>").startswith(b"250")
    server.proc.send_signal(signal.SIGTERM)
    reply = r.reply()
    assert reply.startswith(b"421 4.3.2"), reply
    assert b"shutting down" in reply, reply
    assert server.proc.wait(15) == 0


def test_sighup_warns_about_what_needs_a_restart(server):
    server.config.write_text(server.config_text.replace(
        "hostname = mx.example.test", "hostname = mx.example.test\nuser = nobody\n"
        f"data_dir = {server.dir / 'elsewhere'}").replace(f"data_dir = {server.data_dir}\n", ""))
    server.proc.send_signal(signal.SIGHUP)
    deadline = time.time() + 10
    while "reloaded" not in server.log_text() and time.time() < deadline:
        time.sleep(0.1)
    log = server.log_text()
    assert "[server] user changed; it takes effect at the next restart" in log, log[-2000:]
    assert "[server] data_dir changed; it takes effect at the next restart" in log, log[-2000:]
    # Mail still goes to the running data_dir.
    import smtplib
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"]) as s:
        s.sendmail("a@remote.test", ["bob@example.test"], b"Subject: after reload\r\n\r\nx\r\n")
    assert server.wait_messages("bob@example.test", 1)
    assert not (server.dir / "elsewhere").exists()


def test_sighup_reload_good_and_bad(server):
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"]) as s:
        s.ehlo()
        s.mail("a@remote.test")
        assert s.rcpt("dave@example.test")[0] == 550
    server.config.write_text(server.config_text + "\n[mailbox dave@example.test]\n")
    server.proc.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"]) as s:
        s.ehlo()
        s.mail("a@remote.test")
        assert s.rcpt("dave@example.test")[0] == 250
    server.config.write_text(server.config_text + "\n[nonsense]\n")
    server.proc.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    assert "keeping the running config" in server.log_text()
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"]) as s:
        s.ehlo()
        s.mail("a@remote.test")
        assert s.rcpt("dave@example.test")[0] == 250, "old config kept"


def test_second_instance_refused(server):
    out = subprocess.run([BIN, "-c", str(server.config), "serve"], capture_output=True, text=True, timeout=10)
    assert out.returncode != 0
    assert "already serving" in out.stderr


def test_flush_and_fetch_need_a_running_server(make_server):
    server = make_server(start=False)
    out = server.run("flush")
    assert out.returncode != 0 and b"no mailgate server is running" in out.stderr
    server.start()
    out = server.run("flush")
    assert out.returncode == 0, out.stderr
    server.stop()
    out = server.run("flush")
    assert out.returncode != 0


def test_accepted_message_logged(server):
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"]) as s:
        s.sendmail("carol@remote.test", ["bob@example.test"], b"Subject: log\r\n\r\nx\r\n")
    server.wait_messages("bob@example.test", 1)
    time.sleep(0.2)
    log = server.log_text()
    assert "from=<carol@remote.test>" in log and "to=<bob@example.test>" in log, log[-2000:]
