#!/usr/bin/env python3
"""Instructions and heap allocations per request, gateway vs nginx, under callgrind.

Wall-clock CPU on a shared 2-vCPU box moves ±10 % between runs; instruction counts do not.
Each server runs under `valgrind --tool=callgrind` (one worker thread / one worker process,
the same site, certificate and backend as bench.py). Per scenario: a warm-up, counters
zeroed (`callgrind_control -z`), exactly N requests from h2load, a dump (`callgrind_control
-d`). Reported per request:

- instructions (Ir) of the whole server process (every thread: the worker, timers, health
  checks; the window is a few seconds, so background work is noise below 0.5 %);
- heap allocations: calls into the allocator's entry points (gateway: mimalloc's
  `mi_*alloc*` called from Rust; nginx: glibc `malloc`/`calloc`/`realloc`/`posix_memalign`,
  which OpenSSL also uses), counting a call only when the caller is not itself an allocator
  function, so one allocation counts once;
- the same without the bulk memory functions (`memset`/`memcpy`/`memmove`): valgrind counts
  each byte of a `rep stosb`/`rep movsb` as one instruction, where the CPU moves 32–64 bytes
  a cycle, so a 4 KiB zero-fill reads as 4,096 instructions for ≈ 100 cycles of work;
- the top functions by exclusive instructions (`<stamp>-counts/<server>-<scenario>.txt`):
  the profile behind what `benches/RESULTS.md` says bounds each figure.

With `--syscalls` the servers run natively and `strace -c -f` counts system calls per request
instead (`<stamp>-syscalls.{json,md}`).

Usage: python3 benches/counts.py [--only S1-1k-h1,S3-api] [-n 20000] [--servers gateway,nginx,floor-proxy,floor-core,floor-hybrid] [--syscalls]
(release binaries as `benches/run.sh` builds them; valgrind or strace, h2load and nginx are
installed with apt-get when missing).
"""
import argparse, json, os, re, shutil, signal, subprocess, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import bench  # noqa: E402  (shared site, certificates and configs: both tools measure the same thing)

ROOT = bench.ROOT
OUT = ROOT / "target" / "bench-counts"
ALLOC = {"malloc", "calloc", "realloc", "posix_memalign", "memalign", "aligned_alloc",
         "mi_malloc", "mi_malloc_aligned", "mi_zalloc", "mi_zalloc_aligned", "mi_realloc",
         "mi_realloc_aligned", "mi_calloc", "mi_malloc_small", "mi_heap_malloc"}
# Bulk memory functions whose callers the profile lists (who zeroes or copies what).
LIBC_BULK = ("__memset", "__memcpy", "__memmove", "memset", "memcpy", "memmove")


def wait_port(port, timeout=300):
    bench.wait_port(port, timeout)


class Traced(bench.Server):
    """A server under callgrind, instrumentation on from the start, dumps on request (stopped
    as bench.py stops its servers)."""

    def __init__(self, name, argv, port, env=None):
        self.name, self.port = name, port
        self.prefix = OUT / f"callgrind.{name}"
        vg = ["valgrind", "--tool=callgrind", "--compress-strings=no", "--compress-pos=no",
              f"--callgrind-out-file={self.prefix}.%p", "--trace-children=no"]
        log = open(OUT / f"{name}.log", "w")
        self.proc = subprocess.Popen(vg + argv, stdout=log, stderr=log, env=env, start_new_session=True)
        wait_port(port)
        time.sleep(1)

    def control(self, flag):
        subprocess.run(["callgrind_control", flag, str(self.proc.pid)], check=True,
                       capture_output=True, timeout=120)

    def window(self, run):
        """Zero the counters, run, dump; returns (dump path, what `run` returned)."""
        before = set(OUT.glob(f"callgrind.{self.name}.{self.proc.pid}.*"))
        self.control("-z")
        out = run()
        self.control("-d")
        for _ in range(600):
            new = set(OUT.glob(f"callgrind.{self.name}.{self.proc.pid}.*")) - before
            if new:
                time.sleep(0.5)  # the dump is written by the process; let it finish
                return max(new, key=lambda p: p.stat().st_mtime), out
            time.sleep(0.1)
        raise SystemExit(f"{self.name}: no callgrind dump appeared")


class Straced(bench.Server):
    """A server run natively (as bench.py runs it); `window` counts its system calls (every
    thread) with strace."""

    def window(self, run):
        out = OUT / f"strace-{self.name}.txt"
        st = subprocess.Popen(["strace", "-c", "-f", "-p", str(self.proc.pid), "-o", str(out)],
                              stderr=subprocess.DEVNULL)
        time.sleep(1.5)  # attached to every thread before the first request
        reqs = run()
        st.send_signal(signal.SIGINT)
        st.wait(timeout=60)
        calls = {}
        for line in out.read_text().splitlines():
            parts = line.split()
            # % time, seconds, usecs/call, calls, [errors,] syscall
            if len(parts) >= 5 and parts[3].isdigit() and parts[-1] != "total":
                calls[parts[-1]] = int(parts[3])
        return calls, reqs


def parse_dump(path):
    """Total Ir, allocator calls (from outside the allocator) and exclusive Ir per function."""
    total, allocs, excl, callers = 0, 0, {}, {}
    fn, cfn = None, None
    pending_call = False
    for line in open(path, errors="replace"):
        if line.startswith("fn="):
            fn, pending_call = line[3:].strip(), False
        elif line.startswith("cfn="):
            cfn = line[4:].strip()
        elif line.startswith("calls="):
            if cfn in ALLOC and fn not in ALLOC:
                allocs += int(line[6:].split()[0])
            pending_call = True  # the next cost line is inclusive cost of the call
        elif line.startswith("totals:") or line.startswith("summary:"):
            total = int(line.split()[1])
        elif line[:1].isdigit() or line[:1] in "+-*":
            if pending_call:
                pending_call = False
                if cfn.startswith(LIBC_BULK):
                    parts = line.split()
                    key = (cfn, fn)
                    callers[key] = callers.get(key, 0) + int(parts[1])
                continue
            parts = line.split()
            if len(parts) >= 2 and fn is not None:
                excl[fn] = excl.get(fn, 0) + int(parts[1])
    return total, allocs, excl, callers


def table(results):
    """One markdown row per scenario and server, with ratios to nginx's figures of the run."""
    lines = ["| scenario | server | Ir/req | vs nginx | Ir/req without memset/memcpy | vs nginx | allocations/req | vs nginx |",
             "|---|---|---|---|---|---|---|---|"]
    net = lambda r: r["instructions_per_req"] - r["bulk_memory_instructions_per_req"]
    for sid, row in results.items():
        x = row.get("nginx")
        for name, r in row.items():
            if not isinstance(r, dict):
                continue
            ratio = lambda a, b: f"{a / b:.2f}" if x and b else "–"
            lines.append(f"| {sid} | {name} | {r['instructions_per_req']:,.0f} | "
                         f"{ratio(r['instructions_per_req'], x and x['instructions_per_req'])} | {net(r):,.0f} | "
                         f"{ratio(net(r), x and net(x))} | {r['allocations_per_req']:.1f} | "
                         f"{ratio(r['allocations_per_req'], x and x['allocations_per_req'])} |")
    return lines


def h2load(url, n, conns, streams=1, h1=False, extra=()):
    argv = ["h2load", "-n", str(n), "-c", str(conns), "-m", str(streams), *extra, url]
    if h1:
        argv.insert(1, "--h1")
    out = subprocess.run(argv, capture_output=True, text=True, timeout=1800).stdout
    m = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded", out)
    if not m or int(m.group(3)) != n:
        raise SystemExit(f"h2load: not every request succeeded:\n{out}")
    return n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="")
    ap.add_argument("-n", type=int, default=20000, help="requests per scenario (handshakes: n/100)")
    ap.add_argument("--servers", default="gateway,nginx",
                    help="also floor-proxy / floor-core / floor-hybrid: the proxy-only spike of #23 (S3 only); "
                         "floor-fixed: pingora answering a constant (S1 only)")
    ap.add_argument("--keep", action="store_true", help="keep the callgrind dumps (target/bench-counts)")
    ap.add_argument("--syscalls", action="store_true",
                    help="count system calls per request with strace (servers run natively) instead")
    args = ap.parse_args()
    # Debian packages, installed only when missing (as benches/run.sh does).
    subprocess.run(["bash", str(ROOT / "scripts/deps.sh"), "strace" if args.syscalls else "valgrind",
                    "nghttp2-client", "nginx-light"], check=True)
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    bench.OUT = OUT
    gateway = str(ROOT / "target/release/gateway")
    backend_bin = str(ROOT / "target/release/backend")
    web = bench.make_site(OUT)
    _, crt, key = bench.certs(OUT, gateway)
    env = dict(os.environ, RUST_LOG="warn")
    bport, upport = bench.free_port(), bench.free_port()
    backend = bench.Server("backend", [backend_bin, "--listen", f"127.0.0.1:{bport}", "--db",
                                       str(OUT / "bench.db"), "--keys-dir", str(OUT / "keys")], bport, env=env)
    upstream = bench.Server("blob-upstream", ["nginx", "-c", str(bench.blob_upstream_conf(OUT, upport)),
                                              "-g", "daemon off;"], upport)
    n = args.n
    asset = "/assets/s1k.0123abcd.js"
    scenarios = [
        ("S1-1k-h1", lambda p: h2load(f"https://localhost:{p}{asset}", n, 8, h1=True)),
        ("S1-1k-h2", lambda p: h2load(f"https://localhost:{p}{asset}", n, 8, streams=10)),
        ("S3-api", lambda p: h2load(f"https://localhost:{p}/api/healthz", n, 8, h1=True)),
        # One request per connection: a full handshake each (no resumption: h2load keeps no
        # session between clients).
        ("S5-handshake", lambda p: h2load(f"https://localhost:{p}{asset}", n // 100, n // 100, h1=True)),
    ]
    if args.only:
        keep = set(args.only.split(","))
        scenarios = [s for s in scenarios if s[0] in keep]
    stamp = time.strftime("%Y%m%dT%H%M%S")
    res = ROOT / "benches" / "results"
    prof_dir = res / f"{stamp}-counts"
    prof_dir.mkdir(parents=True, exist_ok=True)
    results = {}
    Probe = Straced if args.syscalls else Traced
    try:
        for name in args.servers.split(","):
            port = bench.free_port()
            if name == "gateway":
                admin = bench.free_port()
                conf = bench.gateway_conf(OUT, web, crt, key, port, admin, bport, 1, jwt=False, blob_port=upport)
                srv = Probe(name, [gateway, "run", "-c", str(conf)], port, env=env)
            elif name == "floor-fixed":
                # pingora + rustls answering a constant `200 ok` (REF-pingora-fixed): the floor under S1.
                fixed = str(ROOT / "target/release/examples/fixed_response")
                srv = Probe(name, [fixed, f"127.0.0.1:{port}", str(crt), str(key), "1"], port, env=env)
            elif name.startswith("floor-"):
                # The #23 spike (gateway/examples/proxy_floor.rs): proxying only, nothing of ours.
                floor = str(ROOT / "target/release/examples/proxy_floor")
                srv = Probe(name, [floor, name.removeprefix("floor-"), f"127.0.0.1:{port}", str(crt), str(key),
                                   f"127.0.0.1:{bport}"], port, env=env)
            else:
                conf = bench.nginx_conf(OUT, web, crt, key, port, bport, 1, upport)
                srv = Probe(name, ["nginx", "-c", str(conf), "-g", "daemon off; master_process off;"], port)
            try:
                for sid, run in scenarios:
                    if name == "floor-fixed" and not sid.startswith("S1"):
                        continue  # the static floor only answers
                    if name.startswith("floor-") and name != "floor-fixed" and sid != "S3-api":
                        continue  # the proxy floors only proxy
                    run(port) if sid != "S5-handshake" else None  # warm-up (pools, caches, pages)
                    if args.syscalls:
                        calls, reqs = srv.window(lambda: run(port))
                        per = {k: v / reqs for k, v in sorted(calls.items(), key=lambda kv: -kv[1]) if v / reqs >= 0.01}
                        results.setdefault(sid, {})[name] = {"requests": reqs, "syscalls_per_req": sum(calls.values()) / reqs,
                                                            "by_syscall": per}
                        print(f"{sid:14} {name:8} {sum(calls.values()) / reqs:6.2f} syscalls/req  "
                              + " ".join(f"{k} {v:.2f}" for k, v in per.items()), flush=True)
                        continue
                    dump, reqs = srv.window(lambda: run(port))
                    total, allocs, excl, callers = parse_dump(dump)
                    row = results.setdefault(sid, {})
                    bulk = sum(v for k, v in excl.items() if k.startswith(LIBC_BULK))
                    row[name] = {"requests": reqs, "instructions_per_req": total / reqs,
                                 "bulk_memory_instructions_per_req": bulk / reqs,
                                 "allocations_per_req": allocs / reqs}
                    top = sorted(excl.items(), key=lambda kv: -kv[1])[:40]
                    lines = [f"{sid} {name}: {total / reqs:,.0f} instructions/request, {allocs / reqs:.1f} allocations/request",
                             "exclusive instructions per request, top 40 functions:"]
                    lines += [f"{v / reqs:12,.0f}  {k}" for k, v in top]
                    lines += ["", "callers of memset/memcpy/memmove, instructions per request (top 25):"]
                    lines += [f"{v / reqs:12,.0f}  {c} <- {f}"
                              for (c, f), v in sorted(callers.items(), key=lambda kv: -kv[1])[:25]]
                    (prof_dir / f"{name}-{sid}.txt").write_text("\n".join(lines) + "\n")
                    print(f"{sid:14} {name:8} {total / reqs:12,.0f} Ir/req ({bulk / reqs:,.0f} in memset/memcpy)"
                          f"  {allocs / reqs:7.1f} allocs/req", flush=True)
                    if not args.keep:
                        dump.unlink()  # tens of MB each; --keep to inspect them with callgrind_annotate
            finally:
                srv.stop()
    finally:
        backend.stop()
        upstream.stop()
    if args.syscalls:
        lines = ["| scenario | server | syscalls/req | by call |", "|---|---|---|---|"]
        for sid, row in results.items():
            for name, r in row.items():
                by = ", ".join(f"{k} {v:.2f}" for k, v in r["by_syscall"].items())
                lines.append(f"| {sid} | {name} | {r['syscalls_per_req']:.2f} | {by} |")
        (res / f"{stamp}-syscalls.json").write_text(json.dumps({"timestamp": stamp, "requests": n, "tool": "strace -c -f",
                                                               "results": results}, indent=2))
        (res / f"{stamp}-syscalls.md").write_text("\n".join(lines) + "\n")
        prof_dir.rmdir()
        print("\n".join(lines))
        return
    lines = table(results)
    doc = {"timestamp": stamp, "requests": n, "tool": "valgrind callgrind", "results": results}
    (res / f"{stamp}-counts.json").write_text(json.dumps(doc, indent=2))
    (res / f"{stamp}-counts.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
