#!/usr/bin/env python3
"""An HTTPS feed server on loopback for guardline's tests.

Issues a certificate for 127.0.0.1 from a new CA (trustme), writes the CA to DIR/ca.pem,
serves the file --body for every GET, prints "READY <port>", and stops when stdin closes.
"""
import argparse
import http.server
import os
import ssl
import sys
import threading

import trustme


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--body", required=True)
    a = ap.parse_args()
    body = open(a.body, "rb").read()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    ca = trustme.CA()
    ca.cert_pem.write_to_path(os.path.join(a.dir, "ca.pem"))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    print(f"READY {srv.server_address[1]}", flush=True)
    sys.stdin.read()
    srv.shutdown()


if __name__ == "__main__":
    main()
