#!/usr/bin/env python3
"""Side-by-side load test: gateway vs nginx 1.22 on the same files, certificate and backend.

Primary figure: server CPU microseconds per request, from utime+stime deltas in /proc (the
load generator itself takes a core, so requests/s alone would mostly measure wrk). Every run
is bounded in time, on loopback only, interleaved gateway/nginx, repeated; medians reported.

Usage: benches/run.sh [--quick|--full] [--isolated]   (see benches/README.md)
"""
import argparse, json, os, re, shutil, signal, socket, statistics, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "target" / "bench"
CLK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=20):
    t = time.time()
    while time.time() - t < timeout:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"port {port} never opened")


def pids_of(root_pid):
    """root_pid and all its descendants."""
    out, frontier = [root_pid], [root_pid]
    while frontier:
        nxt = []
        for p in frontier:
            try:
                kids = Path(f"/proc/{p}/task/{p}/children").read_text().split()
            except OSError:
                kids = []
            nxt += [int(k) for k in kids]
        out += nxt
        frontier = nxt
    return out


def cpu_ticks(pids):
    total = 0
    for p in pids:
        try:
            f = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(f[11]) + int(f[12])  # utime, stime
        except OSError:
            pass
    return total


def rss_kib(pids):
    total = 0
    for p in pids:
        try:
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * PAGE // 1024
        except OSError:
            pass
    return total


def make_site(d: Path):
    web = d / "web"
    (web / "assets").mkdir(parents=True, exist_ok=True)
    (web / "index.html").write_text("<!doctype html><title>bench</title>" + "<p>shell</p>" * 40)
    js1 = ("export const a=" + "1" * 1000 + ";\n")[:1024]
    (web / "assets" / "s1k.0123abcd.js").write_text(js1)
    (web / "assets" / "s16k.0123abcd.js").write_text(("var x=" + "y" * 16000)[:16384])
    (web / "big.bin").write_bytes(os.urandom(1024 * 1024))
    return web


def certs(d: Path, gateway):
    cdir = d / "certs"
    subprocess.run([gateway, "certs", "dev", "--dir", str(cdir)], check=True, capture_output=True)
    return cdir / "ca.crt", cdir / "server.crt", cdir / "server.key"


def gateway_conf(d, web, crt, key, port, admin, backend_port, threads, jwt):
    auth = ""
    provider = ""
    if jwt:
        provider = f"""
[jwt_providers.b]
issuer = "https://localhost:8443"
audiences = ["expenses-api"]
jwks_url = "http://127.0.0.1:{backend_port}/.well-known/jwks.json"
"""
        auth = 'auth = "jwt"\nauth_provider = "b"\nauth_public = ["GET /api/healthz"]\n'
    text = f"""threads = {threads}
access_log = "{os.environ.get('BENCH_ACCESS_LOG', 'off')}"
[process]
readiness_drain_seconds = 0
shutdown_grace_seconds = 0
upgrade_sock = "{d}/up.sock"
pid_file = "{d}/gw.pid"
[limits]
max_connections_per_ip = 0  # S6 holds 10,000 connections from 127.0.0.1
[listeners]
https = "127.0.0.1:{port}"
http = ""
admin = "127.0.0.1:{admin}"
[tls]
[[tls.certificates]]
name = "bench"
cert = "{crt}"
key = "{key}"
{provider}
[upstreams.backend]
peers = ["127.0.0.1:{backend_port}"]
[[routes]]
name = "api"
prefix = "/api"
kind = "proxy"
upstream = "backend"
{auth}
[[routes]]
name = "web"
prefix = "/"
kind = "static"
root = "{web}"
max_memory_file_bytes = 2097152
"""
    p = d / ("gateway-jwt.toml" if jwt else "gateway.toml")
    p.write_text(text)
    return p


def nginx_conf(d, web, crt, key, port, backend_port, workers):
    text = f"""worker_processes {workers};
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
events {{ worker_connections 16384; }}
http {{
  include /etc/nginx/mime.types;
  access_log off;
  sendfile on;
  tcp_nopush on;
  open_file_cache max=1000 inactive=60s;
  open_file_cache_valid 60s;
  keepalive_requests 10000000;
  keepalive_timeout 75s;
  server_tokens off;
  upstream backend {{ server 127.0.0.1:{backend_port}; keepalive 64; keepalive_requests 10000000; }}
  server {{
    listen 127.0.0.1:{port} ssl http2;
    ssl_certificate {crt};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:10m;
    ssl_session_tickets on;
    root {web};
    gzip_static on;
    add_header Strict-Transport-Security "max-age=31536000" always;
    location /api/ {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto https;
      proxy_set_header X-Request-Id $request_id;
    }}
    location /assets/ {{ add_header Cache-Control "public, max-age=31536000, immutable"; }}
    location / {{ try_files $uri /index.html; add_header Cache-Control "no-cache"; }}
  }}
}}
"""
    p = d / "nginx.conf"
    p.write_text(text)
    return p


class Server:
    def __init__(self, name, argv, port, cpu=None, env=None):
        self.name, self.port = name, port
        pre = ["taskset", "-c", cpu] if cpu is not None else []
        log = open(OUT / f"{name}.log", "w")
        self.proc = subprocess.Popen(pre + argv, stdout=log, stderr=log, env=env,
                                     start_new_session=True)
        wait_port(port)
        time.sleep(0.3)

    def pids(self):
        return pids_of(self.proc.pid)

    def stop(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except OSError:
            pass
        self.proc.wait()


def wrk(url, secs, conns, headers=(), cpu=None, close=False):
    argv = ["wrk", "-t1", f"-c{conns}", f"-d{secs}s", "--latency"]
    for h in headers:
        argv += ["-H", h]
    if close:
        argv += ["-H", "Connection: close"]
    argv.append(url)
    if cpu is not None:
        argv = ["taskset", "-c", cpu] + argv
    out = subprocess.run(argv, capture_output=True, text=True, timeout=secs + 30).stdout
    reqs = int(re.search(r"(\d+) requests in", out).group(1))
    errs = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    lat = {}
    for q in ("50", "99"):
        m = re.search(rf"\s{q}%\s+([\d.]+)(us|ms|s)", out)
        if m:
            v = float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)]
            lat[q] = v
    errors = (int(errs.group(1)) if errs else 0) + (sum(map(int, sock.groups())) if sock else 0)
    return reqs, errors, lat


def h2load(url, n, conns, streams, cpu=None):
    argv = ["h2load", "-n", str(n), "-c", str(conns), "-m", str(streams), url]
    if cpu is not None:
        argv = ["taskset", "-c", cpu] + argv
    out = subprocess.run(argv, capture_output=True, text=True, timeout=300).stdout
    m = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
    if not m:
        raise SystemExit("h2load failed:\n" + out)
    return int(m.group(3)), int(m.group(4)) + int(m.group(5))


def measure(server, fn):
    pids = server.pids()
    c0, t0 = cpu_ticks(pids), time.time()
    reqs, errors, lat = fn()
    c1, t1 = cpu_ticks(pids), time.time()
    return {
        "requests": reqs,
        "errors": errors,
        "rps": reqs / (t1 - t0),
        "cpu_us_per_req": (c1 - c0) * 1e6 / CLK / max(reqs, 1),
        "p50_ms": lat.get("50"),
        "p99_ms": lat.get("99"),
        "rss_kib": rss_kib(pids),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--isolated", action="store_true", help="server on CPU 0, load on CPU 1")
    ap.add_argument("--only", default="", help="comma-separated scenario ids")
    args = ap.parse_args()
    secs, rounds = (4, 3) if not args.full else (10, 5)
    threads = 1 if args.isolated else 2
    srv_cpu, gen_cpu = ("0", "1") if args.isolated else (None, None)

    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    gateway = str(ROOT / "target/release/gateway")
    backend_bin = str(ROOT / "target/release/backend")
    web = make_site(OUT)
    ca, crt, key = certs(OUT, gateway)

    bport, gport, gadmin, nport = free_port(), free_port(), free_port(), free_port()
    env = dict(os.environ, RUST_LOG="warn")
    backend = Server("backend", [backend_bin, "--listen", f"127.0.0.1:{bport}", "--db",
                                 str(OUT / "bench.db"), "--keys-dir", str(OUT / "keys")], bport, env=env)
    gconf = gateway_conf(OUT, web, crt, key, gport, gadmin, bport, threads, jwt=False)
    nconf = nginx_conf(OUT, web, crt, key, nport, bport, threads)
    gw = Server("gateway", [gateway, "run", "-c", str(gconf)], gport, cpu=srv_cpu, env=env)
    ng = Server("nginx", ["nginx", "-c", str(nconf), "-g", "daemon off;"], nport, cpu=srv_cpu)
    servers = {"gateway": (gw, gport), "nginx": (ng, nport)}

    idle_rss = {"gateway": rss_kib(gw.pids()), "nginx": rss_kib(ng.pids())}
    scenarios = [
        ("S1-1k-h1", "1 KB fingerprinted asset, HTTP/1.1 keep-alive", lambda p: lambda: wrk(f"https://localhost:{p}/assets/s1k.0123abcd.js", secs, 32, cpu=gen_cpu)),
        ("S1-16k-h1", "16 KB asset, HTTP/1.1 keep-alive", lambda p: lambda: wrk(f"https://localhost:{p}/assets/s16k.0123abcd.js", secs, 32, cpu=gen_cpu)),
        ("S1-1k-h2", "1 KB asset, HTTP/2 (h2load, 8 conns x 10 streams)", lambda p: lambda: (*h2load(f"https://localhost:{p}/assets/s1k.0123abcd.js", 60000 if args.full else 30000, 8, 10, cpu=gen_cpu), {})),
        ("S2-deeplink", "SPA deep link -> index.html", lambda p: lambda: wrk(f"https://localhost:{p}/expenses/42", secs, 32, headers=["Accept: text/html"], cpu=gen_cpu)),
        ("S3-api", "/api/healthz proxied to the backend", lambda p: lambda: wrk(f"https://localhost:{p}/api/healthz", secs, 32, cpu=gen_cpu)),
        ("S5-handshake", "new TLS connection per request", lambda p: lambda: wrk(f"https://localhost:{p}/assets/s1k.0123abcd.js", secs, 16, close=True, cpu=gen_cpu)),
        ("S7-1m", "1 MiB asset", lambda p: lambda: wrk(f"https://localhost:{p}/big.bin", secs, 8, cpu=gen_cpu)),
    ]
    if args.only:
        keep = set(args.only.split(","))
        scenarios = [s for s in scenarios if s[0] in keep]

    results = {}
    for sid, desc, make in scenarios:
        runs = {"gateway": [], "nginx": []}
        # warm-up both
        for name, (srv, port) in servers.items():
            make(port)
        for r in range(rounds):
            order = ["gateway", "nginx"] if r % 2 == 0 else ["nginx", "gateway"]
            for name in order:
                srv, port = servers[name]
                runs[name].append(measure(srv, make(port)))
        row = {"description": desc}
        for name in runs:
            rs = runs[name]
            row[name] = {
                k: statistics.median([x[k] for x in rs if x[k] is not None]) if any(x[k] is not None for x in rs) else None
                for k in ("rps", "cpu_us_per_req", "p50_ms", "p99_ms", "rss_kib")
            }
            row[name]["cpu_range"] = [min(x["cpu_us_per_req"] for x in rs), max(x["cpu_us_per_req"] for x in rs)]
            row[name]["errors"] = sum(x["errors"] for x in rs)
        row["cpu_ratio"] = row["gateway"]["cpu_us_per_req"] / row["nginx"]["cpu_us_per_req"]
        results[sid] = row
        print(f"{sid:14} gateway {row['gateway']['cpu_us_per_req']:7.2f} us/req  nginx {row['nginx']['cpu_us_per_req']:7.2f} us/req  "
              f"ratio {row['cpu_ratio']:.2f}  rps {row['gateway']['rps']:.0f}/{row['nginx']['rps']:.0f}  "
              f"errors {row['gateway']['errors']}/{row['nginx']['errors']}", flush=True)

    # S6: idle keep-alive TLS connections, RSS.
    s6 = {}
    if not args.only or "S6-idle" in args.only:
        for name, (srv, port) in servers.items():
            before = rss_kib(srv.pids())
            n = 2000 if not args.full else 10000
            p = subprocess.Popen([sys.executable, str(Path(__file__).parent / "idle.py"), str(port), str(n), "8"],
                                 stdout=subprocess.PIPE, text=True)
            time.sleep(6 if not args.full else 15)
            after = rss_kib(srv.pids())
            p.terminate(); p.wait()
            s6[name] = {"connections": n, "rss_kib_before": before, "rss_kib_with_idle": after}
        results["S6-idle"] = {"description": "idle TLS keep-alive connections: RSS", **s6}
        print("S6-idle", json.dumps(s6), flush=True)

    for s in (gw, ng, backend):
        s.stop()
    stamp = time.strftime("%Y%m%dT%H%M%S")
    res_dir = ROOT / "benches" / "results"
    res_dir.mkdir(exist_ok=True)
    doc = {"timestamp": stamp, "mode": "isolated" if args.isolated else "shared", "threads": threads,
           "seconds_per_run": secs, "rounds": rounds, "idle_rss_kib": idle_rss,
           "machine": {"cpus": os.cpu_count(), "kernel": os.uname().release}, "results": results}
    (res_dir / f"{stamp}.json").write_text(json.dumps(doc, indent=2))
    lines = ["| scenario | gateway µs/req | nginx µs/req | ratio | gateway req/s | nginx req/s | gateway p99 ms | nginx p99 ms | errors |",
             "|---|---|---|---|---|---|---|---|---|"]
    for sid, row in results.items():
        if "cpu_ratio" not in row:
            continue
        g, n = row["gateway"], row["nginx"]
        fmt = lambda v, f: (f % v) if v is not None else "–"
        lines.append(f"| {sid} | {g['cpu_us_per_req']:.2f} | {n['cpu_us_per_req']:.2f} | {row['cpu_ratio']:.2f} | "
                     f"{g['rps']:.0f} | {n['rps']:.0f} | {fmt(g['p99_ms'], '%.2f')} | {fmt(n['p99_ms'], '%.2f')} | {g['errors']}/{n['errors']} |")
    table = "\n".join(lines)
    (res_dir / f"{stamp}.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
