#!/usr/bin/env python3
"""Renders each overlay with `kubectl kustomize`, validates every core object against the
Kubernetes OpenAPI schemas of a pinned version (kubernetes-validate, strict), checks the
custom resources' shape, and enforces the workload policy:

- every workload: non-root, read-only root filesystem, all capabilities dropped, no
  privilege escalation, seccomp RuntimeDefault, CPU/memory requests and limits, liveness and
  readiness probes, no service-account token automount;
- every namespace has a default-deny NetworkPolicy (ingress and egress);
- gateway: replicas 2 in staging / 3 in production, PDB minAvailable 1, HPA on CPU.

Exit status 0 when everything passes; every problem is printed otherwise.
"""
import json, subprocess, sys
from pathlib import Path

import yaml
import kubernetes_validate

K8S_VERSION = "1.31.0"
ROOT = Path(__file__).resolve().parent
CRDS = {"Certificate", "ServiceMonitor", "PrometheusRule", "Application"}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet"}


def render(overlay):
    out = subprocess.run(["kubectl", "kustomize", str(ROOT / "overlays" / overlay)],
                         check=True, capture_output=True, text=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def check_workload(o, problems):
    name = f"{o['kind']}/{o['metadata']['name']}"
    spec = o["spec"]["template"]["spec"]
    psc = spec.get("securityContext", {})
    if spec.get("automountServiceAccountToken") is not False:
        problems.append(f"{name}: automountServiceAccountToken must be false")
    if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        problems.append(f"{name}: seccompProfile RuntimeDefault required")
    for c in spec["containers"]:
        cn = f"{name}/{c['name']}"
        sc = c.get("securityContext", {})
        if not (sc.get("runAsNonRoot") or psc.get("runAsNonRoot")):
            problems.append(f"{cn}: runAsNonRoot required")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{cn}: readOnlyRootFilesystem required")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{cn}: allowPrivilegeEscalation must be false")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []):
            problems.append(f"{cn}: capabilities must drop ALL")
        res = c.get("resources", {})
        for kind in ("requests", "limits"):
            for r in ("cpu", "memory"):
                if r not in res.get(kind, {}):
                    problems.append(f"{cn}: resources.{kind}.{r} missing")
        for probe in ("livenessProbe", "readinessProbe"):
            if probe not in c:
                problems.append(f"{cn}: {probe} missing")


def main():
    problems = []
    for overlay, replicas in (("staging", 2), ("production", 3)):
        objs = render(overlay)
        namespaces = {o["metadata"]["name"] for o in objs if o["kind"] == "Namespace"}
        for o in objs:
            kind, name = o["kind"], o["metadata"]["name"]
            if kind in CRDS:
                if not o.get("spec"):
                    problems.append(f"{overlay}: {kind}/{name} has no spec")
                continue
            try:
                kubernetes_validate.validate(o, K8S_VERSION, strict=True)
            except kubernetes_validate.ValidationError as e:
                problems.append(f"{overlay}: {kind}/{name}: {e.message} at {list(e.path)}")
            except kubernetes_validate.SchemaNotFoundError as e:
                problems.append(f"{overlay}: {kind}/{name}: no schema ({e})")
            if kind in WORKLOADS:
                check_workload(o, problems)
        for ns in namespaces:
            deny = [o for o in objs if o["kind"] == "NetworkPolicy" and o["metadata"].get("namespace") == ns
                    and o["spec"].get("podSelector") == {}
                    and set(o["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
                    and not o["spec"].get("ingress") and not o["spec"].get("egress")]
            if not deny:
                problems.append(f"{overlay}: namespace {ns} has no default-deny NetworkPolicy")
        gw = next(o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] == "gateway")
        if gw["spec"]["replicas"] != replicas:
            problems.append(f"{overlay}: gateway replicas {gw['spec']['replicas']} != {replicas}")
        pdb = [o for o in objs if o["kind"] == "PodDisruptionBudget"]
        if not pdb or pdb[0]["spec"].get("minAvailable") != 1:
            problems.append(f"{overlay}: PDB minAvailable 1 missing")
        hpa = [o for o in objs if o["kind"] == "HorizontalPodAutoscaler"]
        if not hpa or hpa[0]["spec"]["metrics"][0]["resource"]["name"] != "cpu":
            problems.append(f"{overlay}: HPA on CPU missing")
        print(f"{overlay}: {len(objs)} objects rendered and checked")
    for app in sorted((ROOT / "argocd").glob("*.yaml")):
        a = yaml.safe_load(app.read_text())
        auto = a["spec"]["syncPolicy"]["automated"]
        if not (auto.get("prune") and auto.get("selfHeal")):
            problems.append(f"{app.name}: automated sync needs prune and selfHeal")
        if not (ROOT.parent / a["spec"]["source"]["path"]).is_dir():
            problems.append(f"{app.name}: source path does not exist")
    json.loads((ROOT / "base/monitoring/gateway-dashboard.json").read_text())
    # Alert rules: the PrometheusRule's groups, checked by promtool.
    rule = yaml.safe_load((ROOT / "base/monitoring/prometheusrule.yaml").read_text())
    tmp = Path("/tmp") / f"gateway-rules-{__import__('os').getpid()}.yml"
    tmp.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    try:
        r = subprocess.run(["promtool", "check", "rules", str(tmp)], capture_output=True, text=True)
        if r.returncode != 0:
            problems.append("promtool: " + (r.stdout + r.stderr).strip())
        else:
            print("alert rules:", r.stdout.strip().splitlines()[-1] if r.stdout.strip() else "ok")
    except FileNotFoundError:
        problems.append("promtool not installed (Debian package prometheus)")
    finally:
        tmp.unlink(missing_ok=True)
    for p in problems:
        print("PROBLEM:", p)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
