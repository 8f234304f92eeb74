#!/usr/bin/env python3
"""Mutation test of k8s/validate.py: renders both overlays once, then applies deliberate
breakages — each one a mistake that renders and passes schema validation but breaks
production — to in-memory copies, and asserts the validator's checks catch every one.

Prints a table (breakage, environment, caught, the first problem reported). Exit status 0 when
the unbroken manifests pass and every breakage is caught.
"""
import copy, sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import validate as v  # noqa: E402


def find(objs, kind, name, ns=None):
    for o in objs:
        if o.get("kind") == kind and v.name_of(o) == name and (ns is None or v.ns_of(o) == ns):
            return o
    raise LookupError(f"{kind}/{name} not rendered")


def container(objs, kind, name, cname=None):
    w = find(objs, kind, name)
    return next(c for c in v.containers(w) if cname is None or c["name"] == cname)


def env_var(c, name):
    return next(e for e in c["env"] if e["name"] == name)


def mount(c, name):
    return next(m for m in c["volumeMounts"] if m["name"] == name)


def gateway_toml(objs, old, new):
    cm = next(o for o in objs if o["kind"] == "ConfigMap" and "gateway.toml" in (o.get("data") or {}))
    assert old in cm["data"]["gateway.toml"], old
    cm["data"]["gateway.toml"] = cm["data"]["gateway.toml"].replace(old, new)


def alert(objs, name):
    pr = next(o for o in objs if o["kind"] == "PrometheusRule")
    return next(r for g in pr["spec"]["groups"] for r in g["rules"] if r.get("alert") == name)


def netpol_port(objs, name, direction, value):
    rule = find(objs, "NetworkPolicy", name)["spec"][direction][0]
    rule["ports"][0]["port"] = value


# (description, environment, mutation of the rendered objects in place)
MUTATIONS = [
    ("Service selector typo (backend)", "production",
     lambda o: find(o, "Service", "backend")["spec"]["selector"].update({"app.kubernetes.io/name": "backnd"})),
    ("Service targetPort typo (gateway https → htps)", "production",
     lambda o: find(o, "Service", "gateway")["spec"]["ports"][0].update(targetPort="htps")),
    ("NetworkPolicy port typo (backend-ingress 8000 → 8080)", "production",
     lambda o: netpol_port(o, "backend-ingress", "ingress", 8080)),
    ("NetworkPolicy pod label typo (gateway-egress → backend-api)", "production",
     lambda o: find(o, "NetworkPolicy", "gateway-egress")["spec"]["egress"][0]["to"][0]["podSelector"]
     ["matchLabels"].update({"app.kubernetes.io/name": "backend-api"})),
    ("NetworkPolicy namespace typo in staging (edge-staging → edge)", "staging",
     lambda o: find(o, "NetworkPolicy", "backend-ingress")["spec"]["ingress"][0]["from"][0]
     ["namespaceSelector"]["matchLabels"].update({"kubernetes.io/metadata.name": "edge"})),
    ("monitoring namespace allowed on the backend API port", "production",
     lambda o: find(o, "NetworkPolicy", "backend-ingress")["spec"]["ingress"][0]["from"].append(
         {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}})),
    ("Redis NetworkPolicy deleted (gateway cannot reach Redis)", "staging",
     lambda o: o.remove(find(o, "NetworkPolicy", "redis-ingress"))),
    ("default-deny deleted in backend", "production",
     lambda o: o.remove(find(o, "NetworkPolicy", "default-deny", "backend"))),
    ("Certificate secretName no longer the mounted volume", "production",
     lambda o: find(o, "Certificate", "gateway-tls")["spec"].update(secretName="gateway-tls-v2")),
    ("Certificate in staging with the production hostname", "staging",
     lambda o: find(o, "Certificate", "gateway-tls")["spec"].update(dnsNames=["expenses.example.com"])),
    ("TLS cert path in gateway.toml outside the TLS mount", "production",
     lambda o: gateway_toml(o, 'cert = "/etc/gateway/tls/tls.crt"', 'cert = "/etc/gateway/certs/tls.crt"')),
    ("ServiceMonitor wrong port (backend metrics → http-metrics)", "production",
     lambda o: find(o, "ServiceMonitor", "backend")["spec"]["endpoints"][0].update(port="http-metrics")),
    ("ServiceMonitor selector matches no Service", "staging",
     lambda o: find(o, "ServiceMonitor", "gateway")["spec"]["selector"]["matchLabels"].update(
         {"app.kubernetes.io/component": "metrics"})),
    ("misspelled metric in an alert", "production",
     lambda o: alert(o, "GatewayPoolWithoutHealthyPeer").update(
         expr="max by (namespace, pool) (gateway_upstream_peers_healthy) == 0")),
    ("target-down alert on a job nothing scrapes", "production",
     lambda o: alert(o, "GatewayTargetDown").update(expr='up{job="gateway"} == 0')),
    ("HPA target typo", "production",
     lambda o: find(o, "HorizontalPodAutoscaler", "gateway")["spec"]["scaleTargetRef"].update(name="gatewy")),
    ("replicas set on the HPA-managed gateway", "staging",
     lambda o: find(o, "Deployment", "gateway")["spec"].update(replicas=2)),
    ("PDB selector typo (gateway)", "production",
     lambda o: find(o, "PodDisruptionBudget", "gateway")["spec"]["selector"]["matchLabels"].update(
         {"app.kubernetes.io/name": "gateways"})),
    ("PDB selector typo (postgres)", "production",
     lambda o: find(o, "PodDisruptionBudget", "postgres")["spec"]["selector"]["matchLabels"].update(
         {"app.kubernetes.io/name": "postgresql"})),
    ("ConfigMap mount path no longer matches the args", "production",
     lambda o: mount(container(o, "Deployment", "gateway"), "conf").update(mountPath="/etc/gateway/config")),
    ("admin token_file outside its Secret mount", "staging",
     lambda o: gateway_toml(o, '"/etc/gateway/admin/token"', '"/etc/gateway/admin-token/token"')),
    ("5 s grace period, shorter than preStop + drain + shutdown", "production",
     lambda o: v.pod_spec(find(o, "Deployment", "gateway")).update(terminationGracePeriodSeconds=5)),
    ("missing Pod Security label", "production",
     lambda o: find(o, "Namespace", "backend")["metadata"]["labels"].pop("pod-security.kubernetes.io/enforce")),
    ("image by tag in production", "production",
     lambda o: container(o, "Deployment", "backend").update(image="ghcr.io/example/expenses-backend:0.1.0")),
    ("JWT keys back on an emptyDir", "production",
     lambda o: next(x for x in v.pod_spec(find(o, "Deployment", "backend"))["volumes"]
                    if x["name"] == "jwt-keys").update(secret=None, emptyDir={}) or
     next(x for x in v.pod_spec(find(o, "Deployment", "backend"))["volumes"] if x["name"] == "jwt-keys").pop("secret")),
    ("identity Secret mounted read-write", "production",
     lambda o: mount(container(o, "Deployment", "backend"), "identity").pop("readOnly")),
    ("backend metrics env port != metrics container port", "staging",
     lambda o: env_var(container(o, "Deployment", "backend"), "BACKEND_METRICS_LISTEN").update(value="0.0.0.0:9200")),
    ("redis_url naming the production namespace in staging", "staging",
     lambda o: gateway_toml(o, "redis.edge-staging.svc", "redis.edge.svc")),
    ("upstream peer port typo in gateway.toml", "production",
     lambda o: gateway_toml(o, 'peers = ["backend.backend.svc.cluster.local:8000"]',
                            'peers = ["backend.backend.svc.cluster.local:8080"]')),
    ("plain-http JWKS in the cluster without allow_insecure_http", "production",
     lambda o: gateway_toml(o, "allow_insecure_http = true", "allow_insecure_http = false")),
    ("backup job pointing at a misspelled database host", "production",
     lambda o: container(o, "CronJob", "postgres-backup").update(
         args=[container(o, "CronJob", "postgres-backup")["args"][0].replace(
             "postgres.backend.svc", "postgres.backnd.svc")])),
    ("PVC without Argo CD Prune=false", "staging",
     lambda o: find(o, "PersistentVolumeClaim", "backend-data")["metadata"].pop("annotations")),
    ("no per-node spread on the backend", "production",
     lambda o: v.pod_spec(find(o, "Deployment", "backend")).pop("topologySpreadConstraints")),
    ("gateway container port != [listeners] https", "staging",
     lambda o: next(p for p in container(o, "Deployment", "gateway")["ports"] if p["name"] == "https")
     .update(containerPort=8444)),
    ("staging object left in the production namespace", "staging",
     lambda o: find(o, "Deployment", "gateway")["metadata"].update(namespace="edge")),
]


def main():
    metrics = v.registered_metrics()
    cluster = v.render(v.ROOT / "cluster")
    rendered = {e: v.render(v.ROOT / "overlays" / e) for e in v.ENVIRONMENTS}
    failures = 0
    for e, objs in rendered.items():
        base = v.check_env(e, objs, cluster, metrics)
        if base:
            failures += 1
            print(f"baseline {e} is not clean:", *base, sep="\n  ")
    rows = []
    for desc, e, mutate in MUTATIONS:
        objs = copy.deepcopy(rendered[e])
        mutate(objs)
        try:
            found = v.check_env(e, objs, cluster, metrics)
            first = found[0] if found else "NOT CAUGHT"
        except Exception as ex:  # a crash is a validator bug, not a catch
            found, first = [], f"validator crashed: {type(ex).__name__}: {ex}"
        rows.append((desc, e, bool(found), first))
        failures += not found
    w = max(len(r[0]) for r in rows)
    print(f"{'#':>2}  {'breakage':<{w}}  {'env':<10}  caught  first problem reported")
    for i, (desc, e, ok, first) in enumerate(rows, 1):
        print(f"{i:>2}  {desc:<{w}}  {e:<10}  {'yes' if ok else 'NO':<6}  {first[:150]}")
    caught = sum(r[2] for r in rows)
    print(f"mutations: {caught} of {len(rows)} breakages caught")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
