#!/usr/bin/env python3
"""A demo upstream for `make up`: answers every request with JSON saying who answered and
what it saw, so routing, rewrites and header forwarding are visible with curl."""
import json
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Echo(BaseHTTPRequestHandler):
    name = "upstream"

    def _answer(self):
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        body = json.dumps({
            "upstream": self.name,
            "method": self.command,
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items() if k.lower() != "authorization"},
        }, indent=2).encode() + b"\n"
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _answer

    def log_message(self, fmt, *args):
        pass


def main():
    # demo_upstream.py NAME PORT [ADDRESS]: loopback unless told otherwise (a container
    # listens on all of its interfaces).
    name, port = sys.argv[1], int(sys.argv[2])
    address = sys.argv[3] if len(sys.argv) > 3 else "127.0.0.1"
    Echo.name = name
    # As a container's first process, SIGTERM would otherwise be ignored until `docker stop`
    # gives up and kills it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    ThreadingHTTPServer((address, port), Echo).serve_forever()


if __name__ == "__main__":
    main()
