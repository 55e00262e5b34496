"""A sample origin for examples/cache: GET /breeds/<id> answers a breed as JSON (404 for an id
that starts with "missing"); PUT and DELETE are accepted. Every request is printed, so that you
can watch the cache ask once per miss."""

import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BREEDS = {"1": "Labrador", "2": "Beagle", "3": "Whippet"}
# A slower origin, for benchmarks (benches/caching.sh): each GET waits this long.
DELAY = float(os.environ.get("ORIGIN_DELAY_MS", "0")) / 1000


class Origin(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self, status, body=b""):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        time.sleep(DELAY)
        bid = self.path.rsplit("/", 1)[-1]
        if bid.startswith("missing"):
            return self.answer(404)
        name = BREEDS.get(bid, f"Breed {bid}")
        self.answer(200, json.dumps({"name": name, "group": "sample"}).encode())

    def do_PUT(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.answer(204)

    def do_DELETE(self):
        self.answer(204)


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8090
    ThreadingHTTPServer.request_queue_size = 1024
    ThreadingHTTPServer(("127.0.0.1", port), Origin).serve_forever()
