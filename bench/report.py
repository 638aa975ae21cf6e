#!/usr/bin/env python3
"""Turns the raw output of bench/run.sh (a log directory) into bench/results.md.

Reads runs.tsv (one row per measured wrk / h2load run, with the proxy's CPU
ticks and the cores' busy time around it), the tool outputs it names,
idle.tsv (RSS and drain timings of the idle-connections phase) and
versions.txt. Prints the markdown and writes it to --out.
"""

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
from collections import defaultdict
from datetime import datetime, timezone

TARGETS = ["direct", "drainproxy", "nginx", "haproxy"]
CLK_TCK = os.sysconf("SC_CLK_TCK")
NOISE_MAX = float(os.environ.get("NOISE_MAX", "5"))


def to_us(num, unit):
    return float(num) * {"us": 1.0, "ms": 1e3, "s": 1e6}[unit]


def parse_wrk(text):
    r = {}
    m = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
    if m:
        r["rps"] = float(m.group(1))
    m = re.search(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m)", text, re.M)
    if m:
        r["requests"] = int(m.group(1))
    for pct, key in (("50", "p50"), ("99", "p99")):
        m = re.search(r"^\s+%s%%\s+([\d.]+)(us|ms|s)\s*$" % pct, text, re.M)
        if m:
            r[key] = to_us(m.group(1), m.group(2))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    r["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    r["sock"] = tuple(int(x) for x in m.groups()) if m else (0, 0, 0, 0)
    r["errors"] = r["non2xx"] + sum(r["sock"])
    return r


def parse_h2load(text):
    r = {}
    m = re.search(r"finished in ([\d.]+)s, ([\d.]+) req/s", text)
    if m:
        r["rps"] = float(m.group(2))
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", text)
    if m:
        total, started, done, ok, failed, errored, timeout = (int(x) for x in m.groups())
        r["requests"] = done
        r["failed"], r["errored"], r["timeout"] = failed, errored, timeout
    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    if m:
        r["non2xx"] = sum(int(x) for x in m.groups()[1:])
    m = re.search(r"time for request:\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)", text)
    if m:
        r["mean"] = to_us(m.group(5), m.group(6))
    r["errors"] = r.get("failed", 0) + r.get("errored", 0) + r.get("timeout", 0) + r.get("non2xx", 0)
    return r


def kv(line):
    return dict(x.split("=", 1) for x in line.split()[1:] if "=" in x)


def num(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def core_busy(before, after):
    """% busy of each of the two pinned cores between two snapshots."""
    out = []
    for b, a in zip(before.split(), after.split()):
        b1, t1 = (int(x) for x in b.split(",")[:2])
        b2, t2 = (int(x) for x in a.split(",")[:2])
        out.append(100.0 * (b2 - b1) / (t2 - t1) if t2 > t1 else None)
    return out


class Series(dict):
    """(scenario, target, metric) -> [(value, noisy)] over rounds. Figures use the quiet
    rounds only; when every round was noisy they use them all and carry a dagger."""

    def add(self, scen, target, metric, value, noisy=False):
        if value is not None:
            self.setdefault((scen, target, metric), []).append((value, noisy))

    def vals(self, scen, target, metric):
        v = self.get((scen, target, metric)) or []
        quiet = [x for x, n in v if not n]
        return (quiet, False) if quiet else ([x for x, _ in v], bool(v))

    def med(self, scen, target, metric):
        v, _ = self.vals(scen, target, metric)
        return statistics.median(v) if v else None

    def fmt(self, scen, target, metric, digits=0, unit=""):
        v, dirty = self.vals(scen, target, metric)
        if not v:
            return "–"
        f = lambda x: f"{x:,.{digits}f}"
        s = f(statistics.median(v)) + unit
        if len(v) > 1:
            s += f" ({f(min(v))}–{f(max(v))})"
        return s + (" †" if dirty else "")


def ratio(a, b, digits=2):
    if a is None or b is None or b == 0:
        return "–"
    return f"{a / b:.{digits}f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--logdir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--command", default="bench/run.sh")
    ap.add_argument("--proxy-cpu", default="0")
    ap.add_argument("--load-cpu", default="1")
    ap.add_argument("--idle-conns", type=int, default=0)
    ap.add_argument("--duration", default="?")
    ap.add_argument("--rounds", default="?")
    a = ap.parse_args()
    d = a.logdir

    S = Series()
    errors = defaultdict(list)  # (scen, target) -> [error descriptions per round]
    busy = Series()
    with open(os.path.join(d, "runs.tsv")) as f:
        rows = [line.rstrip("\n").split("\t") for line in f][1:]
    contended = []
    retried = []
    all_rows, rows = rows, []
    for row_ in all_rows:
        row_ = (row_ + ["0", "0", "1"])[:12]
        if row_[11] == "1":
            rows.append(row_)
        else:
            retried.append(f"{row_[1]} {row_[2]} round {row_[0]}: other processes used {row_[10]}% of a core; measured again")
    noisy_run = {}
    for row_ in rows:
        rnd, scen, target, logname, pticks, uticks, wall_ns, k0, k1, wait_ns, foreign, _ = row_
        wait_pct = 100.0 * max(0, int(wait_ns)) / int(wall_ns) if target != "direct" and int(wall_ns) > 0 else None
        noisy = float(foreign) > NOISE_MAX or (wait_pct or 0) > NOISE_MAX
        noisy_run[(rnd, scen, target)] = noisy
        busy.add(scen, target, "foreign", float(foreign), noisy)
        if float(foreign) > NOISE_MAX:
            contended.append(f"{scen} {target} r{rnd}: others {float(foreign):.0f}%")
        if (wait_pct or 0) > NOISE_MAX:
            contended.append(f"{scen} {target} r{rnd}: proxy waited {wait_pct:.0f}%")
        text = open(os.path.join(d, logname), errors="replace").read()
        r = parse_h2load(text) if scen == "h2c" else parse_wrk(text)
        if "rps" not in r:
            errors[(scen, target)].append(f"round {rnd}: no result ({logname})")
            continue
        S.add(scen, target, "rps", r["rps"], noisy)
        for k in ("p50", "p99", "mean"):
            S.add(scen, target, k, r.get(k), noisy)
        reqs = r.get("requests")
        if pticks not in ("NA", "") and reqs:
            S.add(scen, target, "cpu_us", int(pticks) * 1e6 / CLK_TCK / reqs, noisy)
        if reqs:
            S.add(scen, target, "up_cpu_us", int(uticks) * 1e6 / CLK_TCK / reqs, noisy)
        if wait_pct is not None:
            busy.add(scen, target, "proxy_wait", wait_pct, noisy)
        try:
            pb, lb = core_busy(k0, k1)
            busy.add(scen, target, "proxy_core", pb, noisy)
            busy.add(scen, target, "load_core", lb, noisy)
        except Exception:
            pass
        if r["errors"]:
            if scen == "h2c":
                desc = f"round {rnd}: failed {r.get('failed', 0)}, errored {r.get('errored', 0)}, timeout {r.get('timeout', 0)}, non-2xx {r.get('non2xx', 0)} of {reqs}"
            else:
                c, rd, w, t = r["sock"]
                desc = f"round {rnd}: non-2xx {r['non2xx']}, socket errors connect {c} read {rd} write {w} timeout {t} of {reqs}"
            errors[(scen, target)].append(desc)
        if "# exit status" in text:
            errors[(scen, target)].append(f"round {rnd}: tool exited non-zero ({logname})")

    # Idle phase.
    idle_notes = []
    idle_path = os.path.join(d, "idle.tsv")
    if os.path.exists(idle_path):
        with open(idle_path) as f:
            for line in list(f)[1:]:
                parts = line.rstrip("\n").split("\t")
                rnd, target, rss0, rss1, rss2, ready, drain = (parts + [""] * 7)[:7]
                rd, dr = kv(ready) if ready else {}, kv(drain) if drain else {}
                ok = num(rd.get("ok"))
                # Connections closed before the signal (an idle timeout) spoil this round's RSS and drain.
                spoiled = dr.get("early", "0") != "0"
                drain_noisy = noisy_run.get((rnd, "idle1", target), False)
                if spoiled:
                    idle_notes.append(f"{target} round {rnd}: left out of the RSS and drain figures")
                if num(rss0) is not None and num(rss1) is not None and ok and not spoiled:
                    S.add("idle", target, "rss_per_conn", (num(rss1) - num(rss0)) / ok)
                    S.add("idle", target, "rss_idle_mib", num(rss1) / 1024)
                    S.add("idle", target, "rss_base_mib", num(rss0) / 1024)
                S.add("idle", target, "open_ms", num(rd.get("open_ms")))
                S.add("idle", target, "slowest_connect_ms", num(rd.get("slowest_connect_ms")))
                if rd.get("over_200ms", "0") != "0":
                    idle_notes.append(f"{target} round {rnd}: {rd['over_200ms']} of {rd.get('conns')} idle connections took over 200 ms to open (slowest connect {rd.get('slowest_connect_ms')} ms: a SYN dropped by a full accept queue is retransmitted after 1 s)")
                eof, ex = num(dr.get("all_eof_ms")), num(dr.get("exit_ms"))
                if not spoiled:
                    S.add("idle", target, "all_eof_ms", eof, drain_noisy)
                    S.add("idle", target, "exit_ms", ex, drain_noisy)
                    if eof is not None and ex is not None:
                        S.add("idle", target, "drain_ms", max(eof, ex), drain_noisy)
                if not ready:
                    idle_notes.append(f"{target} round {rnd}: the idle clients never got ready")
                elif rd.get("failed", "0") != "0":
                    idle_notes.append(f"{target} round {rnd}: {rd.get('failed')} of {rd.get('conns')} idle connections failed to open ({rd.get('first_error', '?')})")
                if not drain:
                    idle_notes.append(f"{target} round {rnd}: no drain result")
                else:
                    for k, what in (("early", "closed before the signal"), ("reset", "ended by a reset, not a FIN"), ("data", "got bytes while idle"), ("open_left", "still open at the timeout")):
                        if dr.get(k, "0") != "0":
                            idle_notes.append(f"{target} round {rnd}: {dr[k]} connections {what}")
                    if dr.get("timed_out") == "1":
                        idle_notes.append(f"{target} round {rnd}: drain did not finish within the timeout (all_eof_ms={dr.get('all_eof_ms')}, exit_ms={dr.get('exit_ms')})")
        # Throughput with vs without the idle connections, per round of the same instance.
        by_round = defaultdict(dict)
        for rnd, scen, target, logname, *_ in rows:
            if scen in ("idle0", "idle1"):
                r = parse_wrk(open(os.path.join(d, logname), errors="replace").read())
                if "rps" in r:
                    by_round[(target, rnd)][scen] = r["rps"]
        # the idle0 / idle1 req/s rows themselves come from the main loop above
        for (target, rnd), v in by_round.items():
            if "idle0" in v and "idle1" in v and v["idle0"]:
                S.add("idle", target, "with_vs_without", v["idle1"] / v["idle0"],
                      noisy_run.get((rnd, "idle0", target), False) or noisy_run.get((rnd, "idle1", target), False))

    present = [t for t in TARGETS if any(k[1] == t for k in S)]
    proxies = [t for t in present if t != "direct"]
    versions = open(os.path.join(d, "versions.txt")).read().strip().splitlines()
    bg = open(os.path.join(d, "background_busy.txt")).read().split()
    cpu_model = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    L = []
    w = L.append
    w("# drainproxy benchmark results")
    w("")
    w(f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}")
    w(f"- machine: {os.cpu_count()} CPUs (nproc {subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()}), {cpu_model}, Linux {platform.release()}")
    w(f"- pinning: every proxy on core {a.proxy_cpu} (`taskset -c {a.proxy_cpu}`); the load generator, the upstream (`examples/bench_upstream.rs`, 1 thread) and the idle clients share core {a.load_cpu}")
    w(f"- {a.rounds} round(s), interleaved (the order of the targets rotates each round), {a.duration} s per measured run; figures are medians with (min–max) over the rounds")
    w(f"- background CPU busy (both cores, 1 s sample, nothing of ours running) before the run and before each round: {', '.join(x + '%' for x in bg)}")
    for v in versions:
        w(f"- {v}")
    w(f"- command: `{a.command}`")
    w("")
    w("## Results")
    w("")
    head = ["metric"] + present + [f"drainproxy / {t}" for t in present if t != "drainproxy"]
    w("| " + " | ".join(head) + " |")
    w("|" + "---|" * len(head))

    def row(label, scen, metric, digits=0, unit="", only=None, ratio_digits=2):
        cells = [label]
        for t in present:
            cells.append(S.fmt(scen, t, metric, digits, unit) if (only is None or t in only) else "")
        dp = S.med(scen, "drainproxy", metric)
        for t in present:
            if t == "drainproxy":
                continue
            cells.append(ratio(dp, S.med(scen, t, metric), ratio_digits) if (only is None or t in only) else "")
        w("| " + " | ".join(cells) + " |")

    row("HTTP/1.1 small, req/s", "h1-small", "rps")
    row("HTTP/1.1 small, p50 latency µs (lower is better)", "h1-small", "p50")
    row("HTTP/1.1 small, p99 latency µs (lower is better)", "h1-small", "p99")
    row("HTTP/1.1 small, proxy CPU µs/request (lower is better)", "h1-small", "cpu_us", 1, only=proxies)
    row("HTTP/1.1 64 KiB, req/s", "h1-64k", "rps")
    row("HTTP/1.1 64 KiB, p50 latency µs", "h1-64k", "p50")
    row("HTTP/1.1 64 KiB, p99 latency µs", "h1-64k", "p99")
    row("HTTP/1.1 64 KiB, proxy CPU µs/request", "h1-64k", "cpu_us", 1, only=proxies)
    if any(k[0] == "h2c" for k in S):
        row("h2c small (h2load), req/s", "h2c", "rps")
        row("h2c small, mean time per request µs", "h2c", "mean")
        row("h2c small, proxy CPU µs/request", "h2c", "cpu_us", 1, only=proxies)
    if any(k[0] == "idle" for k in S):
        n = f"{a.idle_conns:,}"
        row("idle keep-alive: RSS KiB per connection (lower is better)", "idle", "rss_per_conn", 2)
        row(f"time to open the {n} idle connections (256 at a time), ms", "idle", "open_ms", 0)
        row("RSS MiB before the idle connections", "idle", "rss_base_mib", 1)
        row(f"RSS MiB with {n} idle", "idle", "rss_idle_mib", 1)
        row(f"req/s (h1 small) with {n} idle open", "idle1", "rps")
        row("req/s (h1 small) same instance, before they opened", "idle0", "rps")
        row(f"with {n} idle / without (≥ 0.9 wanted)", "idle", "with_vs_without", 2)
        row(f"drain signal → every idle client saw EOF, ms", "idle", "all_eof_ms", 1)
        row(f"drain signal → process exited, ms", "idle", "exit_ms", 1)
        row(f"drain signal → both (the drain time), ms", "idle", "drain_ms", 1)
    w("")
    w("Drain signal: drainproxy SIGTERM with `--idle-grace 0`, nginx SIGQUIT (graceful shutdown), haproxy SIGUSR1 (soft stop).")
    w("In the idle rows, \"direct\" is the bench upstream itself (a plain hyper 1.x server) holding the idle connections, and its "
      "\"drain\" is SIGTERM's default action: the process dies and the kernel closes every socket. That is the floor for closing "
      "that many loopback connections on this machine, with no drain logic at all.")
    w(f"† = every round of that figure was disturbed by other processes (> {NOISE_MAX:g}% of a core); otherwise figures use only the undisturbed rounds.")
    w("CPU per request is the proxy's utime+stime (all threads; nginx: its worker) over the measured run divided by the requests completed.")
    w("")

    # The table: each proxy against the direct upstream of the same run.
    if "direct" in present and proxies:
        w("## Each proxy against the upstream direct (same run)")
        w("")
        w("| | " + " | ".join(proxies) + " |")
        w("|---|" + "---|" * len(proxies))

        def vs(label, scen, metric="rps"):
            d0 = S.med(scen, "direct", metric)
            w(f"| {label} | " + " | ".join(ratio(S.med(scen, t, metric), d0) for t in proxies) + " |")

        vs("h1 small, req/s vs direct", "h1-small")
        w("| h1 small, proxy CPU per request | " + " | ".join(S.fmt("h1-small", t, "cpu_us", 1, " µs").split(" (")[0] for t in proxies) + " |")
        vs("h1 64 KiB, req/s vs direct", "h1-64k")
        if any(k[0] == "h2c" for k in S):
            vs("h2c small (h2load), req/s vs direct", "h2c")
        if any(k[0] == "idle" for k in S):
            w("| RSS per idle keep-alive | " + " | ".join(S.fmt("idle", t, "rss_per_conn", 2, " KiB").split(" (")[0] for t in proxies) + " |")
            w(f"| {a.idle_conns:,} idle: exit after drain signal | " + " | ".join(
                (f"{S.med('idle', t, 'drain_ms') / 1000:.3f} s" if S.med("idle", t, "drain_ms") is not None else "–") for t in proxies) + " |")
        w("")

    # Targets from issue 6.
    w("## Targets (issue 6)")
    w("")

    def check(label, ok, detail):
        mark = "–" if ok is None else ("PASS" if ok else "FAIL")
        w(f"- {mark}: {label} ({detail})")

    def cmp(label, scen, metric, other, factor, higher=True):
        dp, o = S.med(scen, "drainproxy", metric), S.med(scen, other, metric)
        if dp is None or o is None:
            return check(label, None, f"no {other} figure")
        ok = dp >= factor * o if higher else dp <= factor * o
        check(label, ok, f"drainproxy {dp:,.0f} vs {other} {o:,.0f}: {dp / o:.2f}×")

    cmp("HTTP/1.1 small: req/s ≥ 1.2 × nginx", "h1-small", "rps", "nginx", 1.2)
    cmp("HTTP/1.1 small: p99 ≤ nginx", "h1-small", "p99", "nginx", 1.0, higher=False)
    cmp("64 KiB: req/s ≥ 1.1 × haproxy", "h1-64k", "rps", "haproxy", 1.1)
    cmp("h2c: req/s ≥ 1.1 × haproxy", "h2c", "rps", "haproxy", 1.1)
    v = S.med("idle", "drainproxy", "rss_per_conn")
    check("≤ 2 KiB RSS per idle keep-alive connection", None if v is None else v <= 2, "–" if v is None else f"{v:.2f} KiB")
    v = S.med("idle", "drainproxy", "drain_ms")
    check(f"{a.idle_conns:,} idle connections closed and the process exited within 100 ms of SIGTERM", None if v is None else v <= 100, "–" if v is None else f"{v:.1f} ms")
    v = S.med("idle", "drainproxy", "with_vs_without")
    check("throughput with the idle connections open ≥ 0.9 × without", None if v is None else v >= 0.9, "–" if v is None else f"{v:.2f}")
    w("")

    # Where the time went: is the proxy core the bottleneck?
    w("## Core utilisation during the measured runs (median % over the undisturbed rounds)")
    w("")
    w(f"| scenario | target | core {a.proxy_cpu} (proxy) busy | core {a.load_cpu} (load + upstream) busy | proxy waited for its core | other processes, % of a core | upstream CPU µs/request |")
    w("|---|---|---|---|---|---|---|")
    for scen in ("h1-small", "h1-64k", "h2c", "idle0", "idle1"):
        for t in present:
            if (scen, t, "rps") in S:
                pc, lc, uc = busy.med(scen, t, "proxy_core"), busy.med(scen, t, "load_core"), S.med(scen, t, "up_cpu_us")
                pw = busy.med(scen, t, "proxy_wait")
                pw = "–" if pw is None else f"{pw:.1f}"
                fo = busy.med(scen, t, "foreign")
                fo = "–" if fo is None else f"{fo:.1f}"
                w(f"| {scen} | {t} | {pc:.0f} | {lc:.0f} | {pw} | {fo} | {uc:.1f} |" if None not in (pc, lc, uc) else f"| {scen} | {t} | – | – | {pw} | {fo} | – |")
    w("")
    w("## Errors and oddities")
    w("")
    any_err = False
    for (scen, t), descs in sorted(errors.items()):
        for desc in descs:
            w(f"- {scen} {t}: {desc}")
            any_err = True
    for n in idle_notes:
        w(f"- idle: {n}")
        any_err = True
    if not any_err:
        w("- no errors: every wrk / h2load run completed with only 2xx responses and no socket errors; every idle connection opened and was closed by the drain")
    if contended:
        w(f"- noisy (kept after {len(retried)} re-measurement(s); other processes above {NOISE_MAX:g}% of a core, or the proxy waiting that long for its core): " + "; ".join(contended))
    elif retried:
        w(f"- {len(retried)} run(s) were measured again because other processes used more than {NOISE_MAX:g}% of a core; every kept run was quiet")
    else:
        w(f"- no run was disturbed by other processes (≤ {NOISE_MAX:g}% of a core)")
    w("")
    w(f"Raw tool output: `{os.path.relpath(d, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))}/` (not committed).")
    md = "\n".join(L) + "\n"
    with open(a.out, "w") as f:
        f.write(md)
    sys.stdout.write(md)


if __name__ == "__main__":
    main()
