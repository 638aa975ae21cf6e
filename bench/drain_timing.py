#!/usr/bin/env python3
"""Time from SIGTERM to drainproxy's exit, in three situations (issue #2's figures).

    cargo build --release --bins && python3 bench/drain_timing.py [ROUNDS]

1. no client connection;
2. 100 idle HTTP/1.1 keep-alive connections, with --idle-grace 0;
3. one in-flight request whose response comes 1 s after the signal.

Loopback only; starts the demo upstream and drainproxy itself and ends both.
Prints median and min-max over ROUNDS (default 5) runs.
"""
import os, signal, socket, statistics, subprocess, sys, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")


def start(cmd, marker, stream):
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE if stream == "stdout" else subprocess.DEVNULL,
                            stderr=subprocess.PIPE if stream == "stderr" else subprocess.DEVNULL, text=True)
    pipe = proc.stdout if stream == "stdout" else proc.stderr
    while True:
        line = pipe.readline()
        if not line:
            raise SystemExit(f"{cmd[0]} exited early")
        if marker in line and "admin" not in line:
            return proc, line


def addr_of(line):
    for word in line.split():
        if word.startswith("addr="):
            host, port = word[5:].rsplit(":", 1)
            return host, int(port)
    host, port = line.split()[-1].rsplit(":", 1)
    return host, int(port)


def get(sock, path):
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())


def read_response(sock):
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, body = data.split(b"\r\n\r\n", 1)
    length = int([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0])
    while len(body) < length:
        body += sock.recv(65536)
    return head


def run(upstream, scenario):
    args = [os.path.join(BIN, "drainproxy"), "--listen", "127.0.0.1:0", "--admin", "off",
            "--upstream", f"{upstream[0]}:{upstream[1]}", "--grace", "30s"]
    if scenario == "idle100":
        args += ["--idle-grace", "0"]
    proxy, line = start(args, "listening", "stderr")
    addr = addr_of(line)
    socks = []
    if scenario == "idle100":
        for _ in range(100):
            s = socket.create_connection(addr)
            get(s, "/")
            read_response(s)
            socks.append(s)
    elif scenario == "inflight1s":
        s = socket.create_connection(addr)
        get(s, "/slow?ms=1000")
        socks.append(s)
        time.sleep(0.05)  # let the request reach the app before the signal
    t0 = time.monotonic()
    proxy.send_signal(signal.SIGTERM)
    proxy.wait(timeout=60)
    took = time.monotonic() - t0
    for s in socks:
        s.close()
    return took


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    upstream, line = start([os.path.join(BIN, "demo-upstream"), "--listen", "127.0.0.1:0"], "listening", "stdout")
    try:
        up = addr_of(line)
        print(f"| situation (grace 30s) | SIGTERM to exit, median | min-max | runs |")
        print(f"|---|---|---|---|")
        for name, label in [("none", "no connections"), ("idle100", "100 idle keep-alives, --idle-grace 0"),
                            ("inflight1s", "1 in-flight request answered ~1 s later")]:
            times = [run(up, name) for _ in range(rounds)]
            ms = [t * 1000 for t in times]
            print(f"| {label} | {statistics.median(ms):.1f} ms | {min(ms):.1f}-{max(ms):.1f} ms | {rounds} |")
    finally:
        upstream.kill()
        upstream.wait()


if __name__ == "__main__":
    main()
