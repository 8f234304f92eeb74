#!/usr/bin/env python3
"""Mutation test of k8s/validate.py: renders both overlays once, then applies deliberate
breakages — each one a mistake that renders and passes schema validation but breaks
production — to in-memory copies, and asserts the validator's checks catch every one.

Each breakage names a fragment of the problem the validator must report for it: a breakage
counts as caught only when some reported problem contains that fragment (a problem reported for
another reason, by a check that happens to trip too, is not a catch). Prints a table
(breakage, environment, caught, the matching problem, or the first one reported). Exit status 0
when the unbroken manifests pass and every breakage is caught.
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


# (description, environment, expected problem fragment, mutation of the rendered objects in place)
MUTATIONS = [
    ("Service selector typo (backend)", "production",
     "Service backend/backend: selector {'app.kubernetes.io/name': 'backnd'} matches no pod",
     lambda o: find(o, "Service", "backend")["spec"]["selector"].update({"app.kubernetes.io/name": "backnd"})),
    ("Service targetPort typo (gateway https → htps)", "production",
     "targetPort 'htps' is no container port",
     lambda o: find(o, "Service", "gateway")["spec"]["ports"][0].update(targetPort="htps")),
    ("NetworkPolicy port typo (backend-ingress 8000 → 8080)", "production",
     'ingress[0] port 8080 is no container port',
     lambda o: netpol_port(o, "backend-ingress", "ingress", 8080)),
    ("NetworkPolicy pod label typo (gateway-egress → backend-api)", "production",
     "'backend-api'}}} selects no pod",
     lambda o: find(o, "NetworkPolicy", "gateway-egress")["spec"]["egress"][0]["to"][0]["podSelector"]
     ["matchLabels"].update({"app.kubernetes.io/name": "backend-api"})),
    ("NetworkPolicy namespace typo in staging (edge-staging → edge)", "staging",
     "namespaceSelector {'matchLabels': {'kubernetes.io/metadata.name': 'edge'}} selects no namespace",
     lambda o: find(o, "NetworkPolicy", "backend-ingress")["spec"]["ingress"][0]["from"][0]
     ["namespaceSelector"]["matchLabels"].update({"kubernetes.io/metadata.name": "edge"})),
    ("monitoring namespace allowed on the backend API port", "production",
     'backend port 8000 open to more than gateway pods',
     lambda o: find(o, "NetworkPolicy", "backend-ingress")["spec"]["ingress"][0]["from"].append(
         {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}})),
    ("Redis NetworkPolicy deleted (gateway cannot reach Redis)", "staging",
     'no ingress policy lets gateway into edge-staging/redis:6379',
     lambda o: o.remove(find(o, "NetworkPolicy", "redis-ingress"))),
    ("default-deny deleted in backend", "production",
     'namespace backend has no default-deny NetworkPolicy',
     lambda o: o.remove(find(o, "NetworkPolicy", "default-deny", "backend"))),
    ("Certificate secretName no longer the mounted volume", "production",
     'secretName gateway-tls-v2 is mounted by no gateway volume',
     lambda o: find(o, "Certificate", "gateway-tls")["spec"].update(secretName="gateway-tls-v2")),
    ("Certificate in staging with the production hostname", "staging",
     "dnsNames ['expenses.example.com'] != [staging.expenses.example.com]",
     lambda o: find(o, "Certificate", "gateway-tls")["spec"].update(dnsNames=["expenses.example.com"])),
    ("TLS cert path in gateway.toml outside the TLS mount", "production",
     'cert /etc/gateway/certs/tls.crt is not in the mount of Certificate secret',
     lambda o: gateway_toml(o, 'cert = "/etc/gateway/tls/tls.crt"', 'cert = "/etc/gateway/certs/tls.crt"')),
    ("ServiceMonitor wrong port (backend metrics → http-metrics)", "production",
     "port 'http-metrics' is no named port of Service backend-metrics",
     lambda o: find(o, "ServiceMonitor", "backend")["spec"]["endpoints"][0].update(port="http-metrics")),
    ("ServiceMonitor selector matches no Service", "staging",
     'ServiceMonitor edge-staging/gateway: selector matches no Service',
     lambda o: find(o, "ServiceMonitor", "gateway")["spec"]["selector"]["matchLabels"].update(
         {"app.kubernetes.io/component": "metrics"})),
    ("misspelled metric in an alert", "production",
     'metric gateway_upstream_peers_healthy is not registered',
     lambda o: alert(o, "GatewayPoolWithoutHealthyPeer").update(
         expr='max by (namespace, pool) (gateway_upstream_peers_healthy{namespace="edge"}) == 0')),
    ("target-down alert on a job nothing scrapes", "production",
     "job 'gateway' is no scraped Service",
     lambda o: alert(o, "GatewayTargetDown").update(expr='up{job="gateway", namespace="edge"} == 0')),
    ("absent() alert without its namespace matcher (masked by the other environment)", "production",
     "alert GatewayTargetsAbsent: selector up has no namespace matcher",
     lambda o: alert(o, "GatewayTargetsAbsent").update(expr='absent(up{job="gateway-admin"})')),
    ("staging alert on the production namespace", "staging",
     "alert GatewayTargetDown: selector up matches namespace 'edge', not one of this environment's",
     lambda o: alert(o, "GatewayTargetDown").update(expr='up{job="gateway-admin", namespace="edge"} == 0')),
    ("gateway metric matched in the backend namespace", "production",
     "alert GatewayJwksStale: selector gateway_jwks_last_success_seconds matches namespace 'backend', "
     "but its series come from 'edge'",
     lambda o: alert(o, "GatewayJwksStale").update(
         expr='(time() - gateway_jwks_last_success_seconds{namespace="backend"}) > 3600')),
    ("critical (paging) alert in staging", "staging",
     "alert BackendTargetsAbsent: severity critical in staging",
     lambda o: alert(o, "BackendTargetsAbsent")["labels"].update(severity="critical")),
    ("HPA target typo", "production",
     'scaleTargetRef Deployment/gatewy is no workload here',
     lambda o: find(o, "HorizontalPodAutoscaler", "gateway")["spec"]["scaleTargetRef"].update(name="gatewy")),
    ("replicas set on the HPA-managed gateway", "staging",
     'spec.replicas set although HPA gateway owns it',
     lambda o: find(o, "Deployment", "gateway")["spec"].update(replicas=2)),
    ("PDB selector typo (gateway)", "production",
     'PDB edge/gateway: selector matches no pod',
     lambda o: find(o, "PodDisruptionBudget", "gateway")["spec"]["selector"]["matchLabels"].update(
         {"app.kubernetes.io/name": "gateways"})),
    ("PDB selector typo (postgres)", "production",
     'PDB backend/postgres: selector matches no pod',
     lambda o: find(o, "PodDisruptionBudget", "postgres")["spec"]["selector"]["matchLabels"].update(
         {"app.kubernetes.io/name": "postgresql"})),
    ("ConfigMap mount path no longer matches the args", "production",
     'path /etc/gateway/conf/gateway.toml is on no volume mount',
     lambda o: mount(container(o, "Deployment", "gateway"), "conf").update(mountPath="/etc/gateway/config")),
    ("admin token_file outside its Secret mount", "staging",
     'path /etc/gateway/admin-token/token is on no volume mount',
     lambda o: gateway_toml(o, '"/etc/gateway/admin/token"', '"/etc/gateway/admin-token/token"')),
    ("5 s grace period, shorter than preStop + drain + shutdown", "production",
     'terminationGracePeriodSeconds 5 <',
     lambda o: v.pod_spec(find(o, "Deployment", "gateway")).update(terminationGracePeriodSeconds=5)),
    ("shutdown_timeout_seconds raised beyond the grace period", "production",
     "shutdown_timeout_seconds 30 =",
     lambda o: gateway_toml(o, "shutdown_timeout_seconds = 10", "shutdown_timeout_seconds = 30")),
    ("missing Pod Security label", "production",
     'Namespace backend: label pod-security.kubernetes.io/enforce=restricted missing',
     lambda o: find(o, "Namespace", "backend")["metadata"]["labels"].pop("pod-security.kubernetes.io/enforce")),
    ("image by tag in production", "production",
     'expenses-backend:0.1.0 not by digest in production',
     lambda o: container(o, "Deployment", "backend-blue").update(image="ghcr.io/example/expenses-backend:0.1.0")),
    ("JWT keys back on an emptyDir", "production",
     'BACKEND_KEYS_DIR is not the mount of Secret backend-jwt-keys',
     lambda o: next(x for x in v.pod_spec(find(o, "Deployment", "backend-blue"))["volumes"]
                    if x["name"] == "jwt-keys").update(secret=None, emptyDir={}) or
     next(x for x in v.pod_spec(find(o, "Deployment", "backend-blue"))["volumes"] if x["name"] == "jwt-keys").pop("secret")),
    ("identity Secret mounted read-write", "production",
     'Secret volume identity must be mounted readOnly',
     lambda o: mount(container(o, "Deployment", "backend-blue"), "identity").pop("readOnly")),
    ("backend metrics env port != metrics container port", "staging",
     "BACKEND_METRICS_LISTEN '0.0.0.0:9200' != container port metrics",
     lambda o: env_var(container(o, "Deployment", "backend-blue"), "BACKEND_METRICS_LISTEN").update(value="0.0.0.0:9200")),
    ("redis_url naming the production namespace in staging", "staging",
     'redis.edge.svc.cluster.local:6379: no Service edge/redis',
     lambda o: gateway_toml(o, "redis.edge-staging.svc", "redis.edge.svc")),
    ("upstream peer port typo in gateway.toml", "production",
     'Service backend/backend-blue has no port 8080',
     lambda o: gateway_toml(o, 'peers = ["backend-blue.backend.svc.cluster.local:8000"]',
                            'peers = ["backend-blue.backend.svc.cluster.local:8080"]')),
    ("plain-http JWKS in the cluster without allow_insecure_http", "production",
     'plain http jwks_url off loopback is refused',
     lambda o: gateway_toml(o, "allow_insecure_http = true", "allow_insecure_http = false")),
    ("backup job pointing at a misspelled database host", "production",
     'no Service backnd/postgres',
     lambda o: container(o, "CronJob", "postgres-backup").update(
         args=[container(o, "CronJob", "postgres-backup")["args"][0].replace(
             "postgres.backend.svc", "postgres.backnd.svc")])),
    ("PVC without Argo CD Prune=false", "staging",
     'backend-data: Argo CD may prune it',
     lambda o: find(o, "PersistentVolumeClaim", "backend-data")["metadata"].pop("annotations")),
    ("no per-node spread on the backend", "production",
     'backend: backend-blue: no topologySpreadConstraint',
     lambda o: v.pod_spec(find(o, "Deployment", "backend-blue")).pop("topologySpreadConstraints")),
    ("gateway container port != [listeners] https", "staging",
     '[listeners] https 0.0.0.0:8443 != container port https',
     lambda o: next(p for p in container(o, "Deployment", "gateway")["ports"] if p["name"] == "https")
     .update(containerPort=8444)),
    # Blue-green (docs/kubernetes.md "Blue-green").
    ("colour label dropped from a Deployment selector (adopts the other colour's pods)", "production",
     "Deployment/backend-green: selector {'matchLabels': {'app.kubernetes.io/name': 'backend'}} also "
     "matches the pods of Deployment/backend-blue",
     lambda o: find(o, "Deployment", "backend-green")["spec"]["selector"]["matchLabels"].pop(
         "app.kubernetes.io/instance")),
    ("colour Service selecting both colours", "staging",
     "pools backend-blue and backend-green reach the same pods (backend-blue)",
     lambda o: find(o, "Service", "backend-green")["spec"]["selector"].pop("app.kubernetes.io/instance")),
    ("weight shifted to a colour scaled to 0", "production",
     "pool backend-green has weight 10 but backend-green has 0 replicas",
     lambda o: gateway_toml(o, '{ pool = "backend-green", weight = 0 }', '{ pool = "backend-green", weight = 10 }')),
    ("live colour scaled to 0 while it has the weight", "staging",
     "pool backend-blue has weight 100 but backend-blue has 0 replicas",
     lambda o: find(o, "Deployment", "backend-blue")["spec"].update(replicas=0)),
    ("DATABASE_URL on one colour only (green on another database)", "production",
     "Deployment backend-green differs from backend-blue beyond image and colour (containers)",
     lambda o: container(o, "Deployment", "backend-green")["env"].pop()),
    ("PDB spanning both colours", "production",
     "PDB backend/backend-blue: selects pods of several workloads",
     lambda o: find(o, "PodDisruptionBudget", "backend-blue")["spec"]["selector"]["matchLabels"].pop(
         "app.kubernetes.io/instance")),
    ("a colour without its PDB", "production",
     "Deployment/backend-green: no PodDisruptionBudget covers its pods",
     lambda o: o.remove(find(o, "PodDisruptionBudget", "backend-green"))),
    ("colour image handle left unmapped by the overlay", "staging",
     "image backend-green:0.1.0 is not ghcr.io/example/expenses-backend",
     lambda o: container(o, "Deployment", "backend-green").update(image="backend-green:0.1.0")),
    ("sticky key outside its Secret mount", "production",
     "path /etc/gateway/sticky-key/key is on no volume mount",
     lambda o: gateway_toml(o, '"/etc/gateway/sticky/key"', '"/etc/gateway/sticky-key/key"')),
    ("replica-count Service without publishNotReadyAddresses", "staging",
     "counted by gateway.toml replicas without publishNotReadyAddresses: true",
     lambda o: find(o, "Service", "gateway-headless")["spec"].pop("publishNotReadyAddresses")),
    ("replica-count Service with a cluster IP (counts 1)", "production",
     "counted by gateway.toml replicas but not headless",
     lambda o: find(o, "Service", "gateway-headless")["spec"].pop("clusterIP")),
    ("staging object left in the production namespace", "staging",
     "Deployment/edge/gateway: namespace edge is not one of this environment's",
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
    for desc, e, expect, mutate in MUTATIONS:
        objs = copy.deepcopy(rendered[e])
        mutate(objs)
        try:
            found = v.check_env(e, objs, cluster, metrics)
            hit = next((x for x in found if expect in x), None)
            if hit is not None:
                shown = hit
            elif found:
                shown = f"NOT CAUGHT: expected a problem containing {expect!r}; reported: {found[0]}"
            else:
                shown = f"NOT CAUGHT: nothing reported (expected {expect!r})"
        except Exception as ex:  # a crash is a validator bug, not a catch
            hit, shown = None, f"validator crashed: {type(ex).__name__}: {ex}"
        rows.append((desc, e, hit is not None, shown))
        failures += hit is None
    w = max(len(r[0]) for r in rows)
    print(f"{'#':>2}  {'breakage':<{w}}  {'env':<10}  caught  the expected problem (or what was reported)")
    for i, (desc, e, ok, shown) in enumerate(rows, 1):
        print(f"{i:>2}  {desc:<{w}}  {e:<10}  {'yes' if ok else 'NO':<6}  {shown[:200]}")
    caught = sum(r[2] for r in rows)
    print(f"mutations: {caught} of {len(rows)} breakages caught")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
