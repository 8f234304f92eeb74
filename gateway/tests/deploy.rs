//! Deployment artefacts: Kubernetes manifests (rendered, schema-validated, policy-checked,
//! alert rules through promtool), the cluster's gateway config, and the Dockerfiles.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn kubernetes_overlays_render_validate_and_pass_policy() {
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
fn cluster_gateway_config_passes_check() {
    // Mount paths of the pod mapped to local fixtures, as the kubelet would mount them, and the
    // cluster DNS name of the backend to loopback (peers are resolved at load, like nginx).
    let dir = tempfile::tempdir().expect("tmp");
    let certs = gateway::certs::DevCa::generate("k8s test CA")
        .expect("ca")
        .issue_for_days(&["expenses.example.com"], 30)
        .expect("leaf");
    std::fs::write(dir.path().join("tls.crt"), certs.cert_pem).expect("crt");
    std::fs::write(dir.path().join("tls.key"), certs.key_pem).expect("key");
    let text = std::fs::read_to_string(root().join("k8s/base/gateway/gateway.toml"))
        .expect("cluster config")
        .replace("/etc/gateway/tls/", &format!("{}/", dir.path().display()))
        .replace("/srv/web", &root().join("web").display().to_string())
        .replace("backend.backend.svc.cluster.local", "127.0.0.1");
    let file = dir.path().join("gateway.toml");
    std::fs::write(&file, text).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["check", "-c"])
        .arg(&file)
        .output()
        .expect("gateway check");
    assert!(
        out.status.success(),
        "{}",
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
