"""A local OAuth2 authorization server for mailgate's OAuth2 tests.

Follows RFC 6749 (token endpoint, refresh_token grant with rotation,
error answers of 5.2), RFC 8628 (device authorization, polling with
authorization_pending / slow_down / expired_token), RFC 7636 (PKCE S256,
checked at the token endpoint) and RFC 7662 (token introspection, which
Dovecot's oauth2 passdb asks to validate the bearer tokens mailgate sends).

The token, device and authorize endpoints are served over HTTPS (the
test CA's certificate, which mailgate trusts through `ca_file`); the
introspection endpoint over plain HTTP on its own port, for Dovecot.

The "user" signs in from the test itself: `approve(user_code, user)` for
the device flow, `authorize(url, user)` for the code flow (returns the
address the browser would end on). `mode` makes the token and device
endpoints misbehave (garbage, html, big, redirect, error500).
"""

import base64
import hashlib
import json
import secrets
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit


class AuthServer:
    def __init__(self, cert, key, clients=None, access_ttl=3600, device_ttl=600, interval=1):
        # client_id -> secret (None: a public client, as mailgate's app is)
        self.clients = clients or {"mailgate-test": None}
        self.access_ttl = access_ttl
        self.device_ttl = device_ttl
        self.interval = interval
        self.mode = None
        # Answer device poll number N (1-based) with slow_down.
        self.slow_down_at = None
        # A rotated refresh also ends the old access token (proves the
        # server uses the new one).
        self.end_old_access_on_refresh = True
        self.lock = threading.Lock()
        self.devices = {}  # device_code -> dict
        self.codes = {}  # code -> dict
        self.access = {}  # token -> dict(user, client, exp)
        self.refresh = {}  # token -> dict(user, client, access)
        self.polls = []  # (time, device_code)
        self.requests = []  # (path, form) of the HTTPS endpoints
        self.introspections = []  # tokens asked about
        handler = self._handler()
        self.https = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(cert), str(key))
        self.https.socket = ctx.wrap_socket(self.https.socket, server_side=True)
        self.http = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = self.https.server_address[1]
        self.introspect_port = self.http.server_address[1]
        self.base = f"https://127.0.0.1:{self.port}"
        for srv in (self.https, self.http):
            threading.Thread(target=srv.serve_forever, daemon=True).start()

    def stop(self):
        for srv in (self.https, self.http):
            srv.shutdown()
            srv.server_close()

    # -- what the tests do as the user ----------------------------------
    def approve(self, user_code, user):
        with self.lock:
            for d in self.devices.values():
                if d["user_code"] == user_code:
                    d["user"] = user
                    return
        raise KeyError(user_code)

    def authorize(self, url, user):
        """The user signs in at `url` (the authorization endpoint): returns
        the address the browser is redirected to (RFC 6749 4.1.2)."""
        q = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
        assert q["response_type"] == "code", q
        assert q["client_id"] in self.clients, q
        assert q["code_challenge_method"] == "S256", q
        code = secrets.token_urlsafe(16)
        with self.lock:
            self.codes[code] = dict(
                user=user, client=q["client_id"], redirect_uri=q["redirect_uri"],
                challenge=q["code_challenge"], exp=time.time() + 600,
            )
        return q["redirect_uri"] + "?" + urlencode({"code": code, "state": q["state"], "scope": q["scope"]})

    def revoke(self, user):
        """The user (or an admin) revokes every grant of `user`."""
        with self.lock:
            for table in (self.access, self.refresh):
                for t in [t for t, v in table.items() if v["user"] == user]:
                    del table[t]

    def issue(self, user, client="mailgate-test", ttl=None):
        """Tokens as a completed sign-in gives them (for tests that start
        with an account already signed in)."""
        with self.lock:
            return self._issue(user, client, ttl)

    # -- the protocol -----------------------------------------------------
    def _issue(self, user, client, ttl=None):
        ttl = self.access_ttl if ttl is None else ttl
        at = "at-" + secrets.token_urlsafe(24)
        rt = "rt-" + secrets.token_urlsafe(24)
        self.access[at] = dict(user=user, client=client, exp=time.time() + ttl)
        self.refresh[rt] = dict(user=user, client=client, access=at)
        return dict(access_token=at, token_type="Bearer", expires_in=ttl, refresh_token=rt,
                    scope="mail")

    def _client(self, form):
        cid = form.get("client_id")
        if cid not in self.clients:
            return None, (401, {"error": "invalid_client"})
        secret = self.clients[cid]
        if secret is not None and form.get("client_secret") != secret:
            return None, (401, {"error": "invalid_client"})
        return cid, None

    def token(self, form):
        cid, err = self._client(form)
        if err:
            return err
        grant = form.get("grant_type")
        with self.lock:
            if grant == "urn:ietf:params:oauth:grant-type:device_code":
                self.polls.append((time.time(), form.get("device_code")))
                d = self.devices.get(form.get("device_code"))
                if d is None or d["client"] != cid:
                    return 400, {"error": "invalid_grant"}
                if time.time() > d["exp"]:
                    return 400, {"error": "expired_token"}
                if len(self.polls) == self.slow_down_at:
                    return 400, {"error": "slow_down"}
                if d["user"] is None:
                    return 400, {"error": "authorization_pending"}
                del self.devices[form["device_code"]]
                return 200, self._issue(d["user"], cid)
            if grant == "authorization_code":
                c = self.codes.pop(form.get("code"), None)
                if c is None or c["client"] != cid or time.time() > c["exp"]:
                    return 400, {"error": "invalid_grant", "error_description": "unknown code"}
                if form.get("redirect_uri") != c["redirect_uri"]:
                    return 400, {"error": "invalid_grant", "error_description": "redirect_uri"}
                verifier = form.get("code_verifier", "")
                digest = hashlib.sha256(verifier.encode()).digest()
                if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != c["challenge"]:
                    return 400, {"error": "invalid_grant", "error_description": "PKCE verifier"}
                return 200, self._issue(c["user"], cid)
            if grant == "refresh_token":
                r = self.refresh.pop(form.get("refresh_token"), None)
                if r is None or r["client"] != cid:
                    return 400, {"error": "invalid_grant",
                                 "error_description": "Token has been expired or revoked."}
                if self.end_old_access_on_refresh:
                    self.access.pop(r["access"], None)
                return 200, self._issue(r["user"], cid)
        return 400, {"error": "unsupported_grant_type"}

    def device(self, form):
        cid, err = self._client(form)
        if err:
            return err
        code = secrets.token_urlsafe(16)
        user_code = "%04d-%04d" % (secrets.randbelow(10000), secrets.randbelow(10000))
        with self.lock:
            self.devices[code] = dict(user_code=user_code, client=cid, user=None,
                                      exp=time.time() + self.device_ttl)
        return 200, dict(device_code=code, user_code=user_code,
                         verification_uri=f"{self.base}/device",
                         expires_in=self.device_ttl, interval=self.interval)

    def introspect(self, form):
        tok = form.get("token", "")
        with self.lock:
            self.introspections.append(tok)
            a = self.access.get(tok)
            if a is None or time.time() > a["exp"]:
                return 200, {"active": False}
            return 200, {"active": True, "username": a["user"], "client_id": a["client"],
                         "exp": int(a["exp"]), "token_type": "Bearer"}

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n).decode()
                form = {k: v[0] for k, v in parse_qs(raw, keep_blank_values=True).items()}
                path = urlsplit(self.path).path
                if path == "/introspect":
                    return self.json(*server.introspect(form))
                server.requests.append((path, form))
                mode = server.mode
                if mode == "garbage":
                    return self.raw(200, "application/json", b"\x00\xff{{garbage")
                if mode == "html":
                    return self.raw(200, "text/html", b"<html><body>Sign in to continue</body></html>")
                if mode == "big":
                    return self.raw(200, "application/json", b"{\"a\":\"" + b"x" * (10 << 20) + b"\"}")
                if mode == "redirect":
                    self.send_response(302)
                    self.send_header("Location", f"{server.base}{self.path}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if mode == "error500":
                    return self.raw(500, "text/plain", b"internal error")
                if path == "/token":
                    return self.json(*server.token(form))
                if path == "/devicecode":
                    return self.json(*server.device(form))
                self.json(404, {"error": "not_found"})

            def json(self, status, obj):
                self.raw(status, "application/json", json.dumps(obj).encode())

            def raw(self, status, ctype, body):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                    pass

        return Handler
