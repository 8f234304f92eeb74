#!/usr/bin/env python3
"""Side-by-side load test: gateway vs nginx 1.22 on the same files, certificate and backend.

Primary figure: server CPU microseconds per request, from utime+stime deltas in /proc (the
load generator itself takes a core, so requests/s alone would mostly measure wrk). Every run
is bounded in time, on loopback only, interleaved gateway/nginx, repeated; medians reported.

Usage: benches/run.sh [--quick|--full] [--isolated]   (see benches/README.md)
"""
import select
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


def gateway_conf(d, web, crt, key, port, admin, backend_port, threads, jwt, blob_port, name="gateway", access_log="off"):
    auth = ""
    provider = ""
    if jwt:
        provider = f"""
[jwt_providers.b]
issuer = "https://localhost:8443"
audiences = ["expenses-api"]
jwks_url = "http://127.0.0.1:{backend_port}/.well-known/jwks.json"
"""
        # S4: every /api request needs a verified token and passes a per-subject quota
        # (high enough never to reject; the check itself is what is measured).
        provider += '''
[rate_limits.per_subject]
key = "subject"
quota = 100000000
per = "second"
'''
        auth = 'auth = "jwt"\nauth_provider = "b"\nrate_limits = ["per_subject"]\n'
    text = f"""threads = {threads}
access_log = "{access_log}"
[process]
readiness_drain_seconds = 0
shutdown_grace_seconds = 0
upgrade_sock = "{d}/{name}-up.sock"
pid_file = "{d}/{name}.pid"
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
[upstreams.blob]
peers = ["127.0.0.1:{blob_port}"]
health_check_path = ""
[[routes]]
name = "blob"
prefix = "/blob"
kind = "proxy"
upstream = "blob"
compress = true
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
    p = d / f"{name}.toml"
    p.write_text(text)
    return p


# The headers the gateway adds by default (and the nginx tier it replaces sent): nginx drops
# server-level add_header in a location that has its own, so each location repeats them.
NGINX_API_HEADERS = """add_header Strict-Transport-Security "max-age=31536000" always;
      add_header X-Request-Id $request_id always;
      add_header X-Content-Type-Options nosniff always;
      add_header Referrer-Policy strict-origin-when-cross-origin always;"""
NGINX_STATIC_HEADERS = NGINX_API_HEADERS + """
      add_header Content-Security-Policy "default-src 'self'; base-uri 'self'; object-src 'none'; frame-ancestors 'none'; form-action 'self'" always;
      add_header X-Frame-Options DENY always;
      add_header Permissions-Policy "camera=(), microphone=(), geolocation=(), payment=()" always;"""


def nginx_conf(d, web, crt, key, port, backend_port, workers, blob_port, name="nginx", access_log=False):
    log = f"access_log {d}/{name}-access.log combined buffer=64k flush=1s;" if access_log else "access_log off;"
    text = f"""worker_processes {workers};
pid {d}/{name}.pid;
error_log {d}/{name}-error.log warn;
events {{ worker_connections 16384; }}
http {{
  include /etc/nginx/mime.types;
  {log}
  sendfile on;
  tcp_nopush on;
  open_file_cache max=1000 inactive=60s;
  open_file_cache_valid 60s;
  keepalive_requests 10000000;
  keepalive_timeout 75s;
  server_tokens off;
  upstream backend {{ server 127.0.0.1:{backend_port}; keepalive 64; keepalive_requests 10000000; }}
  upstream blob {{ server 127.0.0.1:{blob_port}; keepalive 64; keepalive_requests 10000000; }}
  server {{
    listen 127.0.0.1:{port} ssl http2;
    ssl_certificate {crt};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:10m;
    ssl_session_tickets on;
    root {web};
    gzip_static on;
    location /api/ {{
      {NGINX_API_HEADERS}
      proxy_hide_header X-Powered-By;
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto https;
      proxy_set_header X-Request-Id $request_id;
    }}
    location /blob/ {{
      {NGINX_API_HEADERS}
      proxy_pass http://blob;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      gzip on;
      gzip_comp_level 1;
      gzip_proxied any;
      gzip_min_length 1024;
      gzip_types application/json;
    }}
    location /assets/ {{
      {NGINX_STATIC_HEADERS}
      add_header Cache-Control "public, max-age=31536000, immutable";
    }}
    location / {{
      {NGINX_STATIC_HEADERS}
      try_files $uri /index.html;
      add_header Cache-Control "no-cache";
    }}
  }}
}}
"""
    p = d / f"{name}.conf"
    p.write_text(text)
    return p


def blob_upstream_conf(d, port):
    """A plain nginx serving a 10 KiB JSON document: the upstream of the compression scenario
    (the same for both servers; its CPU is not counted)."""
    root = d / "blob-root"
    (root / "blob").mkdir(parents=True, exist_ok=True)
    item = '{"id":1,"amount_cents":1250,"currency":"EUR","category":"food","note":"lunch with the team"},'
    doc = '{"items":[' + item * (10240 // len(item)) + '{}]}'
    (root / "blob" / "expenses.json").write_text(doc)
    text = f"""worker_processes 1;
pid {d}/blob.pid;
error_log {d}/blob-error.log warn;
events {{ worker_connections 4096; }}
http {{
  include /etc/nginx/mime.types;
  access_log off;
  keepalive_requests 10000000;
  server {{ listen 127.0.0.1:{port}; root {root}; }}
}}
"""
    p = d / "blob.conf"
    p.write_text(text)
    return p


def tcp_active_opens():
    """System-wide TCP active opens (connect() calls that started a handshake)."""
    lines = Path("/proc/net/snmp").read_text().splitlines()
    tcp = [l.split() for l in lines if l.startswith("Tcp:")]
    return int(tcp[1][tcp[0].index("ActiveOpens")])


# More distinct tokens than the gateway's verified-token cache holds (10,000): cycled in
# order, every request misses the cache and is verified in full.
STORM_TOKENS = 30000


def token_storm(d, backend_bin):
    """Mints STORM_TOKENS valid, distinct tokens (one user each) with the backend's signing key
    and writes a wrk script that sends them in turn: the cache-miss storm of S4."""
    tokens = d / "storm-tokens.txt"
    with open(tokens, "w") as f:
        subprocess.run([backend_bin, "--keys-dir", str(d / "keys"), "mint-tokens",
                        "--count", str(STORM_TOKENS), "--first", "1000000"],
                       stdout=f, check=True, env=dict(os.environ, RUST_LOG="warn"), timeout=120)
    script = d / "storm.lua"
    script.write_text(f"""local tokens = {{}}
for line in io.lines("{tokens}") do tokens[#tokens + 1] = line end
local i = 0
request = function()
  i = i % #tokens + 1
  return wrk.format(nil, nil, {{["Authorization"] = "Bearer " .. tokens[i]}})
end
""")
    return script


def login_token(backend_port):
    """Registers a bench user on the backend and returns a fresh access token."""
    import urllib.request
    body = json.dumps({"email": "bench@example.com", "password": "correct horse battery"}).encode()
    for path in ("/api/auth/register", "/api/auth/login"):
        req = urllib.request.Request(f"http://127.0.0.1:{backend_port}{path}", data=body,
                                     headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(req) as r:
                out = json.loads(r.read())
        except urllib.error.HTTPError as e:
            if path.endswith("register") and e.code == 409:
                continue
            raise
    return out["access_token"]


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


def wrk(url, secs, conns, headers=(), cpu=None, close=False, script=None):
    argv = ["wrk", "-t1", f"-c{conns}", f"-d{secs}s", "--latency"]
    if script is not None:
        argv += ["-s", str(script)]
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


def oha(url, secs, rate, conns=32, cpu=None):
    """Open-loop load at a fixed rate with latency correction (coordinated omission): tail
    latency as a user sees it. Returns p50/p99/p99.9 in ms and the error count."""
    argv = ["oha", "-z", f"{secs}s", "-q", str(int(rate)), "-c", str(conns), "--latency-correction",
            "-w", "--no-tui", "--output-format", "json", "--insecure", url]
    if cpu is not None:
        argv = ["taskset", "-c", cpu] + argv
    out = subprocess.run(argv, capture_output=True, text=True, timeout=secs + 60)
    doc = json.loads(out.stdout)
    pct = doc["latencyPercentiles"]
    codes = doc.get("statusCodeDistribution", {})
    bad = sum(v for k, v in codes.items() if not k.startswith("2"))
    errs = sum(doc.get("errorDistribution", {}).values())
    return {"p50_ms": pct["p50"] * 1000, "p99_ms": pct["p99"] * 1000, "p99.9_ms": pct["p99.9"] * 1000,
            "errors": bad + errs, "rps": doc["summary"]["requestsPerSec"]}


def measure(server, fn, client_conns=None):
    pids = server.pids()
    o0 = tcp_active_opens()
    c0, t0 = cpu_ticks(pids), time.time()
    reqs, errors, lat = fn()
    c1, t1 = cpu_ticks(pids), time.time()
    opens = tcp_active_opens() - o0
    return {
        # Connections opened towards upstreams: every active open in the run minus the load
        # generator's own (proxy scenarios only; health checks make this an upper bound).
        "upstream_conns_per_1000": (max(0, opens - client_conns) * 1000 / max(reqs, 1)
                                    if client_conns is not None else None),
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

    bport, upport = free_port(), free_port()
    env = dict(os.environ, RUST_LOG="warn")
    backend = Server("backend", [backend_bin, "--listen", f"127.0.0.1:{bport}", "--db",
                                 str(OUT / "bench.db"), "--keys-dir", str(OUT / "keys")], bport, env=env)
    upstream = Server("blob-upstream", ["nginx", "-c", str(blob_upstream_conf(OUT, upport)), "-g", "daemon off;"], upport)
    token = login_token(bport)
    storm = token_storm(OUT, backend_bin)

    def gw_server(name, **kw):
        port, admin = free_port(), free_port()
        conf = gateway_conf(OUT, web, crt, key, port, admin, bport, threads, blob_port=upport, name=name, **kw)
        return Server(name, [gateway, "run", "-c", str(conf)], port, cpu=srv_cpu, env=env), port

    def nginx_server(name, **kw):
        port = free_port()
        conf = nginx_conf(OUT, web, crt, key, port, bport, threads, upport, name=name, **kw)
        return Server(name, ["nginx", "-c", str(conf), "-g", "daemon off;"], port, cpu=srv_cpu), port

    servers = {
        "gateway": gw_server("gateway", jwt=False),
        "nginx": nginx_server("nginx"),
        # Variants: S4 (JWT + rate limit) and the access-log-on runs.
        "gateway-jwt": gw_server("gateway-jwt", jwt=True),
        "gateway-log": gw_server("gateway-log", jwt=False, access_log="json"),
        "nginx-log": nginx_server("nginx-log", access_log=True),
    }
    # Reference rows: pingora + rustls with a fixed answer and nothing of ours (the floor under
    # S1), and the backend hit directly over plain HTTP (the ceiling for proxying).
    fport = free_port()
    servers["pingora-fixed"] = (Server("pingora-fixed", [str(ROOT / "target/release/examples/fixed_response"),
                                                         f"127.0.0.1:{fport}", str(crt), str(key), str(threads)],
                                       fport, cpu=srv_cpu), fport)
    servers["backend-direct"] = (backend, bport)
    # The #23 spike (gateway/examples/proxy_floor.rs): HTTPS -> backend with none of our phases,
    # through pingora-proxy's proxy_1to1, through pingora-core's pieces in one function, and
    # that function run from pingora-proxy's request_filter (what proxy::exchange does).
    for mode in ("proxy", "hybrid", "core"):
        p = free_port()
        servers[f"floor-{mode}"] = (Server(f"floor-{mode}", [str(ROOT / "target/release/examples/proxy_floor"), mode,
                                                           f"127.0.0.1:{p}", str(crt), str(key), f"127.0.0.1:{bport}",
                                                           str(threads)], p, cpu=srv_cpu), p)
    gw, ng = servers["gateway"][0], servers["nginx"][0]
    idle_rss = {"gateway": rss_kib(gw.pids()), "nginx": rss_kib(ng.pids())}

    def url(p, path):
        return f"https://localhost:{p}{path}"

    W = lambda path, conns=32, **kw: (lambda p: lambda: wrk(url(p, path), secs, conns, cpu=gen_cpu, **kw))
    auth = [f"Authorization: Bearer {token}"]
    pair = ("gateway", "nginx")
    # Logs on vs off interleaved in one scenario: the overhead is not a comparison of two runs
    # minutes apart.
    logs = ("gateway-log", "nginx-log", "gateway", "nginx")
    # (id, description, servers compared, load, client connections for the upstream count)
    scenarios = [
        ("S1-1k-h1", "1 KB fingerprinted asset, HTTP/1.1 keep-alive", pair, W("/assets/s1k.0123abcd.js"), None),
        ("S1-16k-h1", "16 KB asset, HTTP/1.1 keep-alive", pair, W("/assets/s16k.0123abcd.js"), None),
        ("S1-1k-h2", "1 KB asset, HTTP/2 (h2load, 8 conns x 10 streams)", pair,
         lambda p: lambda: (*h2load(url(p, "/assets/s1k.0123abcd.js"), 60000 if args.full else 30000, 8, 10, cpu=gen_cpu), {}), None),
        ("S2-deeplink", "SPA deep link -> index.html", pair, W("/expenses/42", headers=["Accept: text/html"]), None),
        ("S3-api", "/api/healthz proxied to the backend", pair, W("/api/healthz"), 32),
        ("S4-jwt", "S3 with JWT verification (warm cache) and a per-subject rate limit; vs our S3",
         ("gateway-jwt",), W("/api/healthz", headers=auth), 32),
        ("S4-miss", "S4 with a verified-token cache-miss storm: every request a new valid token",
         ("gateway-jwt",), W("/api/healthz", script=storm), 32),
        ("S4-401", "S4 with a forged token: the 401 path (nothing proxied)", ("gateway-jwt",),
         W("/api/healthz", headers=[f"Authorization: Bearer {token[:-4]}AAAA"]), None),
        ("S5-handshake", "new TLS connection per request", pair, W("/assets/s1k.0123abcd.js", 16, close=True), None),
        ("S7-1m", "1 MiB asset", pair, W("/big.bin", 8), None),
        ("S8-gzip", "10 KiB JSON proxied and gzip-compressed (gateway level 4 vs nginx gzip_comp_level 1)", pair,
         W("/blob/expenses.json", headers=["Accept-Encoding: gzip"]), 32),
        ("S1-1k-h1-logs", "S1 1 KB with access logs on (gateway JSON to stdout, nginx buffered file)", logs,
         W("/assets/s1k.0123abcd.js"), None),
        ("S3-api-logs", "S3 with access logs on", logs, W("/api/healthz"), 32),
        ("REF-pingora-fixed", "pingora 0.9 + rustls answering a fixed 200, no gateway code: the floor under S1",
         ("pingora-fixed",), W("/"), None),
        ("REF-floor-proxy", "/api/healthz through pingora-proxy with nothing of ours (proxy_floor proxy): the floor under S3",
         ("floor-proxy", "nginx"), W("/api/healthz"), 32),
        ("REF-floor-core", "/api/healthz through pingora-core's sessions and pool in one function (proxy_floor core)",
         ("floor-core", "nginx"), W("/api/healthz"), 32),
        ("REF-floor-hybrid", "/api/healthz exchanged on pingora-core's pool from pingora-proxy's request_filter (proxy_floor hybrid)",
         ("floor-hybrid", "nginx"), W("/api/healthz"), 32),
        ("REF-backend-direct", "/api/healthz on the backend over plain HTTP: the ceiling for S3 (backend CPU)",
         ("backend-direct",),
         lambda p: lambda: wrk(f"http://127.0.0.1:{p}/api/healthz", secs, 32, cpu=gen_cpu), None),
    ]
    if args.only:
        keep = set(args.only.split(","))
        scenarios = [sc for sc in scenarios if sc[0] in keep]

    results = {}
    for sid, desc, names, make, conns in scenarios:
        runs = {name: [] for name in names}
        for name in names:  # warm-up
            make(servers[name][1])()
        for r in range(rounds):
            order = list(names) if r % 2 == 0 else list(reversed(names))
            for name in order:
                srv, port = servers[name]
                runs[name].append(measure(srv, make(port), conns))
        row = {"description": desc, "servers": list(names)}
        for name in runs:
            rs = runs[name]
            row[name] = {
                k: statistics.median([x[k] for x in rs if x[k] is not None]) if any(x[k] is not None for x in rs) else None
                for k in ("rps", "cpu_us_per_req", "p50_ms", "p99_ms", "rss_kib", "upstream_conns_per_1000")
            }
            row[name]["cpu_range"] = [min(x["cpu_us_per_req"] for x in rs), max(x["cpu_us_per_req"] for x in rs)]
            row[name]["errors"] = sum(x["errors"] for x in rs)
        if len(names) >= 2:
            row["cpu_ratio"] = row[names[0]]["cpu_us_per_req"] / row[names[1]]["cpu_us_per_req"]
        results[sid] = row
        first = row[names[0]]
        line = f"{sid:14} {names[0]} {first['cpu_us_per_req']:7.2f} us/req"
        if len(names) >= 2:
            second = row[names[1]]
            line += (f"  {names[1]} {second['cpu_us_per_req']:7.2f} us/req  ratio {row['cpu_ratio']:.2f}"
                     f"  rps {first['rps']:.0f}/{second['rps']:.0f}  errors {first['errors']}/{second['errors']}")
        else:
            line += f"  rps {first['rps']:.0f}  errors {first['errors']}"
        print(line, flush=True)

    # Tail latency at fixed rates: 25/50/75 % of the slower side's maximum (from the wrk runs
    # above), open loop with latency correction, interleaved.
    if shutil.which("oha"):
        for sid, path in (("S1-1k-h1", "/assets/s1k.0123abcd.js"), ("S3-api", "/api/healthz")):
            if sid not in results:
                continue
            slower = min(results[sid][n]["rps"] for n in pair)
            fixed = {}
            for pct in (25, 50, 75):
                rate = slower * pct / 100
                row = {}
                for name in (pair if pct != 50 else tuple(reversed(pair))):
                    row[name] = oha(url(servers[name][1], path), secs, rate, cpu=gen_cpu)
                row["p99_ratio"] = row["gateway"]["p99_ms"] / row["nginx"]["p99_ms"]
                row["p99.9_ratio"] = row["gateway"]["p99.9_ms"] / row["nginx"]["p99.9_ms"]
                fixed[f"{pct}%"] = {"rate": rate, **row}
                print(f"{sid} at {pct}% ({rate:.0f} req/s): p99 {row['gateway']['p99_ms']:.2f}/{row['nginx']['p99_ms']:.2f} ms "
                      f"p99.9 {row['gateway']['p99.9_ms']:.2f}/{row['nginx']['p99.9_ms']:.2f} ms "
                      f"errors {row['gateway']['errors']}/{row['nginx']['errors']}", flush=True)
            results[sid]["fixed_rate"] = fixed
    else:
        print("oha not installed: fixed-rate tail latencies skipped (benches/run.sh installs it)", flush=True)

    # Overheads against our own baselines, in the same run.
    def overhead(sid, base_sid, name, base_name):
        if sid in results and base_sid in results:
            a = results[sid][name]["cpu_us_per_req"]
            b = results[base_sid][base_name]["cpu_us_per_req"]
            results[sid].setdefault("overhead", {})[name] = {"vs": f"{base_sid}/{base_name}", "ratio": a / b}
    overhead("S4-jwt", "S3-api", "gateway-jwt", "gateway")
    overhead("S4-miss", "S3-api", "gateway-jwt", "gateway")
    overhead("S4-401", "S3-api", "gateway-jwt", "gateway")
    for sid in ("S1-1k-h1-logs", "S3-api-logs"):
        overhead(sid, sid, "gateway-log", "gateway")
        overhead(sid, sid, "nginx-log", "nginx")

    # S6: idle keep-alive TLS connections, RSS.
    s6 = {}
    if not args.only or "S6-idle" in args.only:
        for name in ("gateway", "nginx"):
            srv, port = servers[name]
            before = rss_kib(srv.pids())
            n = 2000 if not args.full else 10000
            p = subprocess.Popen([sys.executable, str(Path(__file__).parent / "idle.py"), str(port), str(n), "8"],
                                 stdout=subprocess.PIPE, text=True)
            # idle.py prints how many connections it holds once all are open (each has had its
            # request answered); RSS is read only then, so a slow opener can't shrink the figure.
            ready, _, _ = select.select([p.stdout], [], [], 120)
            held = int(p.stdout.readline() or 0) if ready else 0
            time.sleep(2)
            after = rss_kib(srv.pids())
            p.terminate(); p.wait()
            if held < n:
                print(f"S6-idle: only {held} of {n} connections to {name} opened", flush=True)
            s6[name] = {"connections": held, "rss_kib_before": before, "rss_kib_with_idle": after}
        results["S6-idle"] = {"description": "idle TLS keep-alive connections: RSS", **s6}
        print("S6-idle", json.dumps(s6), flush=True)

    for srv, _ in servers.values():
        srv.stop()
    backend.stop()
    upstream.stop()
    stamp = time.strftime("%Y%m%dT%H%M%S")
    res_dir = ROOT / "benches" / "results"
    res_dir.mkdir(exist_ok=True)
    doc = {"timestamp": stamp, "mode": "isolated" if args.isolated else "shared", "threads": threads,
           "seconds_per_run": secs, "rounds": rounds, "idle_rss_kib": idle_rss,
           "machine": {"cpus": os.cpu_count(), "kernel": os.uname().release}, "results": results}
    (res_dir / f"{stamp}.json").write_text(json.dumps(doc, indent=2))
    lines = ["| scenario | server A | A µs/req | server B | B µs/req | A/B | A req/s | B req/s | A p99 ms | B p99 ms | upstream conns / 1000 req (A/B) | errors |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    fmt = lambda v, f: (f % v) if v is not None else "–"
    for sid, row in results.items():
        names = row.get("servers")
        if not names:
            continue
        a = row[names[0]]
        b = row[names[1]] if len(names) >= 2 else None
        ratio = row.get("cpu_ratio")
        if ratio is None and row.get("overhead"):
            o = next(iter(row["overhead"].values()))
            ratio_txt = f"{o['ratio']:.2f} vs {o['vs']}"
        else:
            ratio_txt = fmt(ratio, "%.2f")
        lines.append(
            f"| {sid} | {names[0]} | {a['cpu_us_per_req']:.2f} | {names[1] if b else '–'} | {fmt(b and b['cpu_us_per_req'], '%.2f')} | {ratio_txt} | "
            f"{a['rps']:.0f} | {fmt(b and b['rps'], '%.0f')} | {fmt(a['p99_ms'], '%.2f')} | {fmt(b and b['p99_ms'], '%.2f')} | "
            f"{fmt(a['upstream_conns_per_1000'], '%.2f')}/{fmt(b and b['upstream_conns_per_1000'], '%.2f')} | {a['errors']}/{b['errors'] if b else '–'} |")
    for sid, row in results.items():
        for pct, fr in row.get("fixed_rate", {}).items():
            lines.append(f"\n{sid} at {pct} of the slower maximum ({fr['rate']:.0f} req/s, oha, latency-corrected): "
                         f"p50 {fr['gateway']['p50_ms']:.2f}/{fr['nginx']['p50_ms']:.2f} ms, "
                         f"p99 {fr['gateway']['p99_ms']:.2f}/{fr['nginx']['p99_ms']:.2f} ms ({fr['p99_ratio']:.2f}x), "
                         f"p99.9 {fr['gateway']['p99.9_ms']:.2f}/{fr['nginx']['p99.9_ms']:.2f} ms ({fr['p99.9_ratio']:.2f}x), "
                         f"errors {fr['gateway']['errors']}/{fr['nginx']['errors']}")
    for sid, row in results.items():
        for name, o in row.get("overhead", {}).items():
            lines.append(f"\n{sid}: {name} = {o['ratio']:.3f} x {o['vs']}")
    table = "\n".join(lines)
    (res_dir / f"{stamp}.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
