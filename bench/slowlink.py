#!/usr/bin/env python3
"""slowlink.py: a TCP proxy that makes a local registry look far away, for bench/bench.sh.

Listens on HOST:PORT and forwards each client connection to 127.0.0.1:UPSTREAM. Per connection:

  * registry -> client is capped at RATE bytes/s: a per-connection cap such as object stores
    have (80 MB/s by default, about what one connection to S3 delivers: ScyllaDB measured
    93 MB/s for a GET over one socket, https://github.com/scylladb/scylladb/pull/22907; AWS
    recommends concurrent range GETs of 8-16 MB for more, https://docs.aws.amazon.com/
    whitepapers/latest/s3-optimizing-performance-best-practices/use-byte-range-fetches.html);
  * each request pays a one-way LATENCY twice (10 ms by default: a 20 ms round trip): client
    -> registry bytes go through a delay line (each piece is forwarded LATENCY after it
    arrived), and the first bytes of each response wait LATENCY after the registry sent them.
    The rest of a response follows at the cap, as on a link whose bandwidth-delay product fits
    in the TCP window.

What it does not model: packet loss, TCP's window dynamics (slow start, congestion control),
a bottleneck shared by the connections (each has its own cap; add them up), the TLS of a real
registry. "A response" is whatever the registry sends after the client sent bytes: right for
HTTP/1.1 without pipelining, which is what registry clients (Go's net/http, hyper) use.

Pacing is by sleeping (time.sleep): it models a link, nothing waits on it for correctness. The
cap is a token bucket in 256 KiB pieces with one piece of credit, so sleeping late is made up
for on the next piece and an idle connection cannot save up a burst.

It must not be the bottleneck itself. Measured on the bench machine (2 vCPU shared with the
registry and with other work, loadavg 2-3), cap off (--rate 0), 10 ms each way, one
connection, curl of the 1.5 GB encrypted weights blob: 0.67-1.2 GB/s through the proxy against
1.1-1.5 GB/s straight from the registry, 8-15x the 80 MB/s cap (bench.sh measures it again in
every run and warns below 4x). Cap on: 79.6 MB/s for one connection, 79.1-79.5 MB/s each for
four at once. Responses go socket -> pipe -> socket with splice(2), so the bytes never enter
Python; forwarding at the cap costs about 0.6 s of CPU per GB, mostly the kernel's TCP work.

Prints "ready PORT" on stdout once listening (PORT is the real one when --port is 0), logs
one line per closed connection on stderr, and stops cleanly on SIGTERM or SIGINT.
"""

import argparse
import collections
import fcntl
import os
import signal
import socket
import sys
import threading
import time

PIECE_CAPPED = 256 * 1024  # bytes per paced send: 3.3 ms at 80 MB/s
PIECE_FREE = 1 << 20  # bytes per send with the cap off
UP_QUEUE_MAX = 4 << 20  # client -> registry bytes held in the delay line at most
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


class Shutdown(Exception):
    """Raised in the main thread by SIGTERM / SIGINT."""


def log(msg):
    print(f"[slowlink] {msg}", file=sys.stderr, flush=True)


def parse_rate(text):
    """A rate in bytes/s: a number with an optional SI suffix k, M or G (80M = 80,000,000)."""
    mult = {"k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9}
    num = text[:-1] if text and text[-1] in mult else text
    try:
        value = float(num) * mult.get(text[-1:], 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a rate: {text!r} (e.g. 80M, 80000000, 0)")
    if value < 0:
        raise argparse.ArgumentTypeError("a rate cannot be negative")
    return value


def non_negative(text):
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


class Link:
    """One client connection and its connection to the registry: three threads."""

    def __init__(self, proxy, client, peer):
        self.proxy = proxy
        self.client = client
        self.peer = peer
        self.upstream = None
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.queue = collections.deque()  # (due time, bytes) client -> registry; None = EOF
        self.queued = 0
        self.request_pending = False  # client bytes went up since the last response started
        self.open_dirs = 2
        self.requests = 0
        self.down_bytes = 0
        self.up_bytes = 0
        self.t0 = time.monotonic()
        self.failed = None

    def start(self):
        try:
            self.upstream = socket.create_connection(("127.0.0.1", self.proxy.upstream))
        except OSError as e:
            log(f"{self.peer}: cannot connect to 127.0.0.1:{self.proxy.upstream}: {e}")
            self.client.close()
            self.proxy.forget(self)
            return
        for s in (self.client, self.upstream):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for target in (self.up_reader, self.up_sender, self.down):
            threading.Thread(target=target, daemon=True).start()

    def abort(self, why):
        """Tear both sockets down, waking every thread of this link."""
        with self.lock:
            if self.failed is None:
                self.failed = why
            self.queue.clear()
            self.queue.append(None)
            self.cond.notify_all()
        for s in (self.client, self.upstream):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def dir_done(self):
        with self.lock:
            self.open_dirs -= 1
            last = self.open_dirs == 0
        if last:
            self.client.close()
            self.upstream.close()
            secs = time.monotonic() - self.t0
            rate = self.down_bytes / secs / 1e6 if secs > 0 else 0.0
            log(f"{self.peer}: closed after {secs:.2f} s, {self.requests} request(s), "
                f"{self.down_bytes} bytes down ({rate:.1f} MB/s), {self.up_bytes} up"
                + (f"; {self.failed}" if self.failed else ""))
            self.proxy.forget(self)

    # client -> registry: a delay line of LATENCY.
    def up_reader(self):
        lat = self.proxy.latency
        try:
            while True:
                data = self.client.recv(65536)
                due = time.monotonic() + lat
                with self.cond:
                    while self.queued >= UP_QUEUE_MAX and self.failed is None:
                        self.cond.wait()
                    if self.failed is not None:
                        return
                    self.queue.append((due, data) if data else None)
                    self.queued += len(data)
                    self.cond.notify_all()
                if not data:
                    return
        except OSError as e:
            self.abort(f"client read: {e}")

    def up_sender(self):
        try:
            while True:
                with self.cond:
                    while not self.queue:
                        self.cond.wait()
                    item = self.queue.popleft()
                    if item is not None:
                        self.queued -= len(item[1])
                        self.cond.notify_all()
                if item is None:
                    if self.failed is None:
                        self.upstream.shutdown(socket.SHUT_WR)
                    return
                due, data = item
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                with self.lock:
                    if not self.request_pending:
                        self.requests += 1
                    self.request_pending = True
                self.upstream.sendall(data)
                self.up_bytes += len(data)
        except OSError as e:
            self.abort(f"registry write: {e}")
        finally:
            self.dir_done()

    # registry -> client: the first bytes of a response wait LATENCY, all at RATE at most. The
    # bytes go socket -> pipe -> socket with splice(2), never through Python.
    def down(self):
        rate, lat = self.proxy.rate, self.proxy.latency
        piece = PIECE_CAPPED if rate else PIECE_FREE
        credit = piece / rate if rate else 0.0
        src, dst = self.upstream.fileno(), self.client.fileno()
        pipe_r, pipe_w = os.pipe()
        try:
            fcntl.fcntl(pipe_w, F_SETPIPE_SZ, PIECE_FREE)
        except OSError:
            piece = min(piece, 65536)  # the default pipe size
        next_free = 0.0  # when the bucket allows the next piece
        try:
            while True:
                n = os.splice(src, pipe_w, piece)
                if n == 0:
                    if self.failed is None:
                        self.client.shutdown(socket.SHUT_WR)
                    return
                now = time.monotonic()
                with self.lock:
                    starts = self.request_pending
                    self.request_pending = False
                if starts:
                    time.sleep(lat)
                    now = time.monotonic()
                if rate:
                    next_free = max(next_free, now - credit)
                    if next_free > now:
                        time.sleep(next_free - now)
                    next_free += n / rate
                left = n
                while left:
                    left -= os.splice(pipe_r, dst, left)
                self.down_bytes += n
        except OSError as e:
            self.abort(f"client write / registry read: {e}")
        finally:
            os.close(pipe_r)
            os.close(pipe_w)
            self.dir_done()


class Proxy:
    def __init__(self, args):
        self.upstream = args.upstream
        self.rate = args.rate
        self.latency = args.latency_ms / 1000.0
        self.links = set()
        self.lock = threading.Lock()
        self.accepted = 0

    def forget(self, link):
        with self.lock:
            self.links.discard(link)

    def serve(self, host, port):
        lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsock.bind((host, port))
        lsock.listen(128)
        print(f"ready {lsock.getsockname()[1]}", flush=True)
        cap = f"{self.rate / 1e6:g} MB/s" if self.rate else "no cap"
        log(f"listening on {host}:{lsock.getsockname()[1]} -> 127.0.0.1:{self.upstream}, "
            f"{cap} per connection, {self.latency * 1e3:g} ms each way")
        try:
            while True:
                client, addr = lsock.accept()
                link = Link(self, client, f"{addr[0]}:{addr[1]}")
                with self.lock:
                    self.links.add(link)
                    self.accepted += 1
                link.start()
        except Shutdown:
            pass
        finally:
            lsock.close()
            with self.lock:
                links = list(self.links)
            for link in links:
                link.abort("proxy stopped")
            log(f"stopped: {self.accepted} connection(s) accepted, {len(links)} open at the end")


def main():
    ap = argparse.ArgumentParser(
        description="A TCP proxy that models a far registry: a per-connection cap on the "
        "registry -> client direction and a one-way latency on each request and response.")
    ap.add_argument("--host", default="127.0.0.1",
                    help="address to listen on (default: 127.0.0.1)")
    ap.add_argument("--port", type=int, default=0,
                    help="port to listen on; 0 picks a free one (default: 0)")
    ap.add_argument("--upstream", type=int, required=True,
                    help="the registry's port on 127.0.0.1")
    ap.add_argument("--rate", type=parse_rate, default=80e6,
                    help="registry -> client bytes/s per connection, with an optional k/M/G "
                    "(powers of 10) suffix; 0 = no cap (default: 80M)")
    ap.add_argument("--latency-ms", type=non_negative, default=10.0,
                    help="one-way latency in ms: each request and each response start wait "
                    "this long, a round trip is twice it (default: 10)")
    args = ap.parse_args()

    def on_signal(signum, _frame):
        raise Shutdown(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        Proxy(args).serve(args.host, args.port)
    except Shutdown:
        pass  # before the listener was up
    except OSError as e:
        log(f"error: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
