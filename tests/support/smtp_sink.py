#!/usr/bin/env python3
"""A real SMTP server on loopback for guardline's tests (aiosmtpd).

Each accepted message is decoded with Python's own e-mail parser (an implementation
independent of the one that encoded it) and appended to --out as one JSON line:
{"from", "to", "subject", "message_id", "body", "auth"}. With --fail-first N the first N
messages are refused with a temporary error (451) to exercise retries. With --user and
--password, AUTH is required. Prints "READY <port>" when listening; stops when stdin closes.
"""
import argparse
import email
import email.policy
import json
import socket
import sys
import threading
import warnings

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


class Sink:
    def __init__(self, out, fail_first):
        self.out = out
        self.fail_left = fail_first
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            if self.fail_left > 0:
                self.fail_left -= 1
                return "451 4.3.0 temporarily unavailable, try again later"
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        rec = {
            "from": envelope.mail_from,
            "to": envelope.rcpt_tos,
            "subject": str(msg["subject"]),
            "message_id": str(msg["message-id"]),
            "content_type": str(msg["content-type"]),
            "body": msg.get_content(),
            "auth": bool(session.authenticated),
            "tls": session.ssl is not None,
        }
        with self.lock, open(self.out, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        return "250 2.0.0 OK"


def main():
    # AUTH without TLS is deliberate here: loopback only, to test guardline's login.
    warnings.filterwarnings("ignore", message="Requiring AUTH while not requiring TLS")
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--fail-first", type=int, default=0)
    ap.add_argument("--user")
    ap.add_argument("--password")
    ap.add_argument("--starttls-dir", help="issue a certificate for 127.0.0.1 from a new CA "
                    "(trustme), write the CA to DIR/ca.pem and require STARTTLS")
    a = ap.parse_args()

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()

    kwargs = {}
    if a.user:
        def auth(server, session, envelope, mechanism, data):
            ok = (isinstance(data, LoginPassword)
                  and data.login == a.user.encode() and data.password == a.password.encode())
            return AuthResult(success=ok)
        kwargs = dict(authenticator=auth, auth_required=True, auth_require_tls=False)
    if a.starttls_dir:
        import os
        import ssl
        import trustme
        ca = trustme.CA()
        ca.cert_pem.write_to_path(os.path.join(a.starttls_dir, "ca.pem"))
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(ctx)
        kwargs.update(tls_context=ctx, require_starttls=True, auth_require_tls=True)
    c = Controller(Sink(a.out, a.fail_first), hostname="127.0.0.1", port=port, **kwargs)
    c.start()
    print(f"READY {port}", flush=True)
    sys.stdin.read()
    c.stop()


if __name__ == "__main__":
    main()
