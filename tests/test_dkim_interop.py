"""DKIM interoperability with dkimpy, the reference implementation.

mailgate's signer (`mailgate dkim keygen` keys, the internal `mailgate dkim
sign`) is checked by dkimpy's verifier; dkimpy's signatures (RSA 1024 and
2048 bits, Ed25519, every canonicalisation, folded headers, l=) are checked
by mailgate's verifier (the internal `mailgate dkim verify --keys FILE`,
where FILE stands in for DNS), and tampered copies must fail.
"""

import base64
import os
import stat
import subprocess

import dkim
import nacl.signing
import pytest

from conftest import BIN

DOMAIN = "example.test"

MESSAGE = (
    b"From: Alice Example <alice@example.test>\r\n"
    b"To: bob@example.net\r\n"
    b"Subject: a subject that is folded\r\n"
    b"\tover two lines\r\n"
    b"Date: Tue, 01 Dec 2026 10:00:00 +0000\r\n"
    b"Message-ID: <interop-1@example.test>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Hello  Bob,\t \r\n"
    b"\r\n"
    b"this is the body.\r\n"
    b"\r\n"
    b"\r\n"
)


def write_config(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    cfg = tmp_path / "mailgate.ini"
    cfg.write_text(
        f"[server]\nhostname = mx.{DOMAIN}\ndata_dir = {data}\n\n"
        f"[domain {DOMAIN}]\ndkim_selector = mg2026\n\n"
        f"[mailbox alice@{DOMAIN}]\npassword = {{PLAIN}}x\n"
    )
    return cfg, data


def mailgate(*args, stdin=b"", check=True):
    proc = subprocess.run(
        [BIN, *args], input=stdin, capture_output=True, timeout=120
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"mailgate {' '.join(args)}: {proc.returncode}\n{proc.stderr.decode()}"
        )
    return proc


def txt_records(keygen_output):
    """{name: record text} from the lines keygen prints."""
    records = {}
    for line in keygen_output.splitlines():
        if " IN TXT " in line:
            name, _, rest = line.partition(" IN TXT ")
            records[name.strip()] = rest.strip().strip('"')
    return records


def test_check_warns_until_keys_exist(tmp_path):
    cfg, data = write_config(tmp_path)
    out = mailgate("-c", str(cfg), "check").stdout.decode()
    assert out.count("dkim_selector = mg2026, but") == 2, out
    assert f"{cfg}:5: warning:" in out, out
    mailgate("-c", str(cfg), "dkim", "keygen", DOMAIN)
    out = mailgate("-c", str(cfg), "check").stdout.decode()
    assert "dkim_selector" not in out, out


@pytest.fixture
def keyed(tmp_path):
    cfg, data = write_config(tmp_path)
    out = mailgate("-c", str(cfg), "dkim", "keygen", DOMAIN).stdout.decode()
    return cfg, data, txt_records(out)


def test_keygen_writes_private_keys_and_prints_records(keyed):
    cfg, data, records = keyed
    assert set(records) == {
        f"mg2026-rsa._domainkey.{DOMAIN}",
        f"mg2026-ed25519._domainkey.{DOMAIN}",
    }
    assert records[f"mg2026-rsa._domainkey.{DOMAIN}"].startswith("v=DKIM1; k=rsa; p=MII")
    assert records[f"mg2026-ed25519._domainkey.{DOMAIN}"].startswith("v=DKIM1; k=ed25519; p=")
    for name in ("mg2026-rsa.pem", "mg2026-ed25519.pem"):
        path = data / "dkim" / DOMAIN / name
        assert path.read_text().startswith("-----BEGIN PRIVATE KEY-----\n")
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    # A second keygen would orphan the published keys: refused.
    again = mailgate("-c", str(cfg), "dkim", "keygen", DOMAIN, check=False)
    assert again.returncode != 0
    assert b"exists" in again.stderr
    # openssl reads the RSA key and agrees it is 2048 bits.
    text = subprocess.run(
        ["openssl", "pkey", "-in", str(data / "dkim" / DOMAIN / "mg2026-rsa.pem"), "-noout", "-text"],
        capture_output=True, check=True,
    ).stdout
    assert b"2048 bit" in text


def dnsfunc_for(records):
    def dnsfunc(name, timeout=5):
        name = name.decode() if isinstance(name, bytes) else name
        return records.get(name.rstrip(".").lower(), "").encode()
    return dnsfunc


def test_mailgate_signature_verifies_in_dkimpy(keyed):
    cfg, _, records = keyed
    signed = mailgate("-c", str(cfg), "dkim", "sign", DOMAIN, stdin=MESSAGE).stdout
    d = dkim.DKIM(signed)
    sigs = [h for h in d.headers if h[0].lower() == b"dkim-signature"]
    assert len(sigs) == 2
    dnsfunc = dnsfunc_for(records)
    for idx in range(2):
        assert dkim.DKIM(signed).verify(idx=idx, dnsfunc=dnsfunc), f"signature {idx}"
    assert b"a=rsa-sha256" in signed and b"a=ed25519-sha256" in signed
    assert b"c=relaxed/relaxed" in signed
    # From is over-signed.
    h = [v for k, v in sigs if b"a=rsa" in v][0]
    h_tag = b"".join(h.split()).split(b"h=")[1].split(b";")[0]
    assert h_tag.split(b":").count(b"from") == 2
    # dkimpy rejects a tampered copy of our signature too.
    tampered = signed.replace(b"this is the body", b"this is the b0dy")
    for idx in range(2):
        with pytest.raises(dkim.ValidationError, match="body hash mismatch"):
            dkim.DKIM(tampered).verify(idx=idx, dnsfunc=dnsfunc)
    # LF line ends in, CRLF semantics out: the same signature.
    lf = mailgate("-c", str(cfg), "dkim", "sign", DOMAIN, stdin=MESSAGE.replace(b"\r\n", b"\n")).stdout
    assert dkim.DKIM(lf.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")).verify(idx=1, dnsfunc=dnsfunc)


def rsa_key(tmp_path, bits):
    pem = tmp_path / f"rsa{bits}.pem"
    subprocess.run(["openssl", "genrsa", "-out", str(pem), str(bits)], check=True, capture_output=True)
    der = subprocess.run(
        ["openssl", "rsa", "-in", str(pem), "-pubout", "-outform", "DER"],
        check=True, capture_output=True,
    ).stdout
    return pem.read_bytes(), "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()


def ed25519_key():
    sk = nacl.signing.SigningKey.generate()
    priv = base64.b64encode(bytes(sk))
    pub = base64.b64encode(bytes(sk.verify_key)).decode()
    return priv, "v=DKIM1; k=ed25519; p=" + pub


def mailgate_verify(tmp_path, message, records):
    keys = tmp_path / "keys.txt"
    keys.write_text("".join(f"{n} {t}\n" for n, t in records.items()))
    out = mailgate("dkim", "verify", "--keys", str(keys), stdin=message).stdout.decode()
    return [line.split()[0] for line in out.splitlines()], out


@pytest.fixture(scope="module")
def dkimpy_keys(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("keys")
    return {
        "rsa1024": rsa_key(tmp, 1024),
        "rsa2048": rsa_key(tmp, 2048),
        "ed25519": ed25519_key(),
    }


CANONS = [(b"simple", b"simple"), (b"relaxed", b"relaxed"), (b"relaxed", b"simple"), (b"simple", b"relaxed")]


@pytest.mark.parametrize("kind", ["rsa1024", "rsa2048", "ed25519"])
@pytest.mark.parametrize("canon", CANONS, ids=lambda c: b"/".join(c).decode())
@pytest.mark.parametrize("length", [False, True], ids=["full", "l="])
def test_dkimpy_signature_verifies_in_mailgate(tmp_path, dkimpy_keys, kind, canon, length):
    priv, record = dkimpy_keys[kind]
    selector = kind.encode()
    alg = b"ed25519-sha256" if kind == "ed25519" else b"rsa-sha256"
    sig = dkim.sign(
        MESSAGE, selector, DOMAIN.encode(), priv,
        canonicalize=canon, signature_algorithm=alg, length=length,
        include_headers=[b"from", b"to", b"subject", b"date", b"message-id"],
    )
    signed = sig + MESSAGE
    records = {f"{kind}._domainkey.{DOMAIN}": record}
    assert dkim.verify(signed, dnsfunc=dnsfunc_for(records)), "dkimpy's own check"
    results, out = mailgate_verify(tmp_path, signed, records)
    assert results == ["pass"], out

    # Tampered copies fail: a header, and the body.
    # (relaxed keeps the case of values, so this is a change for both)
    bad_header = signed.replace(b"Subject: a subject", b"Subject: A subject")
    results, out = mailgate_verify(tmp_path, bad_header, records)
    assert results == ["fail"], out
    bad_body = signed.replace(b"this is the body", b"this is the bodY")
    results, out = mailgate_verify(tmp_path, bad_body, records)
    assert results == ["fail"], out
    if length:
        # l= covers what was signed: text added after it does not break it.
        results, out = mailgate_verify(tmp_path, signed + b"appended by a list\r\n", records)
        assert results == ["pass"], out
    # Refolded header whitespace survives only relaxed header canonicalisation.
    refolded = signed.replace(b"is folded\r\n\tover", b"is folded\r\n    over")
    results, out = mailgate_verify(tmp_path, refolded, records)
    assert results == (["pass"] if canon[0] == b"relaxed" else ["fail"]), out


def test_several_dkimpy_signatures_each_judged(tmp_path, dkimpy_keys):
    priv_r, rec_r = dkimpy_keys["rsa2048"]
    priv_e, rec_e = dkimpy_keys["ed25519"]
    s1 = dkim.sign(MESSAGE, b"rsa2048", DOMAIN.encode(), priv_r, canonicalize=(b"relaxed", b"relaxed"))
    s2 = dkim.sign(MESSAGE, b"ed25519", DOMAIN.encode(), priv_e,
                   canonicalize=(b"relaxed", b"relaxed"), signature_algorithm=b"ed25519-sha256")
    records = {f"rsa2048._domainkey.{DOMAIN}": rec_r, f"ed25519._domainkey.{DOMAIN}": rec_e}
    results, out = mailgate_verify(tmp_path, s2 + s1 + MESSAGE, records)
    assert results == ["pass", "pass"], out
    # Only the Ed25519 key published: that one passes, the other is permerror.
    results, out = mailgate_verify(tmp_path, s2 + s1 + MESSAGE, {f"ed25519._domainkey.{DOMAIN}": rec_e})
    assert results == ["pass", "permerror"], out
    # Testing flag is reported.
    results, out = mailgate_verify(tmp_path, s2 + MESSAGE, {f"ed25519._domainkey.{DOMAIN}": rec_e + "; t=y"})
    assert results == ["pass"] and " testing " in out, out
