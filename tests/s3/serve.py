"""An S3-compatible server on loopback for ferry's tests: moto's S3, with
every request applied one at a time (S3 is strongly consistent and its
conditional writes are atomic; moto's threads alone would let two
If-None-Match writes both win), and the faults S3 really has:

  --slowdown-every N   every Nth request is refused 503 SlowDown, unapplied
  --drop-every N       every Nth PUT is applied, then the connection is cut
                       before the reply (the client cannot tell it landed)

Prints "listening on PORT" once it accepts connections. Bucket "ferry" is
created at start.
Usage: python serve.py [--port P] [--slowdown-every N] [--drop-every N]
"""

import argparse
import socket
import sys
import threading

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import make_server


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--slowdown-every", type=int, default=0)
    p.add_argument("--drop-every", type=int, default=0)
    p.add_argument("--bucket", default="ferry")
    args = p.parse_args()

    app = DomainDispatcherApplication(create_backend_app)
    lock = threading.Lock()
    counts = {"all": 0, "put": 0}

    def serialized(environ, start_response):
        with lock:
            counts["all"] += 1
            if args.slowdown_every and counts["all"] % args.slowdown_every == 0:
                body = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
                        b"<Message>Please reduce your request rate.</Message></Error>")
                environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
                start_response("503 Slow Down", [("Content-Type", "application/xml"),
                                                 ("Content-Length", str(len(body)))])
                return [body]
            drop = False
            if environ["REQUEST_METHOD"] == "PUT":
                counts["put"] += 1
                drop = args.drop_every and counts["put"] % args.drop_every == 0
            out = []
            status = {}

            def capture(s, headers, exc_info=None):
                status["s"], status["h"] = s, headers
                return out.append

            for chunk in app(environ, capture):
                out.append(chunk)
            start_response(status["s"], status["h"])
            if drop:
                sock = environ.get("werkzeug.socket")
                if sock is not None:
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                return []
            return out

    server = make_server("127.0.0.1", args.port, serialized, threaded=True)
    # Create the bucket through the app itself.
    from werkzeug.test import Client

    Client(app).put(f"/{args.bucket}", headers={"Host": "127.0.0.1"})
    print(f"listening on {server.port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
