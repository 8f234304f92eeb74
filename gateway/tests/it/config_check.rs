//! `gateway check` and `gateway run` refusing bad configs with file:line:column.

use crate::harness::*;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn good_conf(dir: &Path, ports: &Ports, certs: &TestCerts) -> String {
    format!(
        "{}{}\n[upstreams.backend]\npeers = [\"127.0.0.1:9\"]\n\n[[routes]]\nname = \"api\"\nprefix = \"/api\"\nkind = \"proxy\"\nupstream = \"backend\"\n",
        ports.sections(dir),
        tls_section(certs)
    )
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p
}

/// 1-based line of the first occurrence of `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .expect("needle")
        + 1
}

#[test]
fn shipped_configs_pass_check() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    gateway::certs::ensure_dev(&root.join("certs/dev")).expect("dev certs");
    let mut n = 0;
    for entry in std::fs::read_dir(root.join("conf")).expect("conf dir") {
        let p = entry.expect("entry").path();
        if p.extension().is_some_and(|e| e == "toml") {
            let (ok, out) = check(&p);
            assert!(ok, "{}: {out}", p.display());
            n += 1;
        }
    }
    assert!(n >= 1, "no config checked");
}

#[test]
fn good_config_passes() {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = TestCerts::new(dir.path());
    let f = write(
        dir.path(),
        "g.toml",
        &good_conf(dir.path(), &Ports::new(), &certs),
    );
    let (ok, out) = check(&f);
    assert!(ok, "{out}");
    assert!(out.contains("ok"), "{out}");
}

#[test]
fn unknown_key_and_type_error_are_located() {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = TestCerts::new(dir.path());
    let base = good_conf(dir.path(), &Ports::new(), &certs);

    let text = base
        .replace("[limits]", "")
        .replace("[upstreams.backend]\n", "[upstreams.backend]\nretrys = 3\n");
    let f = write(dir.path(), "unknown.toml", &text);
    let (ok, out) = check(&f);
    assert!(!ok);
    let line = line_of(&text, "retrys");
    assert!(out.contains(&format!("{}:{line}:1", f.display())), "{out}");
    assert!(out.contains("retrys"), "{out}");

    let text = base.replace("threads = 2", "threads = \"many\"");
    let f = write(dir.path(), "type.toml", &text);
    let (ok, out) = check(&f);
    assert!(!ok);
    assert!(out.contains(&format!("{}:1:11", f.display())), "{out}");
}

#[test]
fn every_certificate_problem_is_reported_at_once() {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = TestCerts::new(dir.path());
    let now = time::OffsetDateTime::now_utc();
    let expired = certs
        .ca
        .issue(
            &["localhost"],
            now - time::Duration::days(30),
            now - time::Duration::days(1),
        )
        .expect("expired");
    let (exp_cert, exp_key) = write_pair(dir.path(), "expired", &expired);
    let other = certs.ca.issue_for_days(&["localhost"], 30).expect("other");
    let (_, other_key) = write_pair(dir.path(), "other", &other);
    let ports = Ports::new();
    let text = format!(
        r#"{}
[tls]
[[tls.certificates]]
name = "missing"
cert = "{d}/nope.crt"
key = "{key}"

[[tls.certificates]]
name = "mismatch"
cert = "{cert}"
key = "{other_key}"

[[tls.certificates]]
name = "expired"
cert = "{exp_cert}"
key = "{exp_key}"
default = true

[upstreams.backend]
peers = ["127.0.0.1:9"]

[[routes]]
name = "api"
prefix = "/api"
kind = "proxy"
upstream = "nopool"
"#,
        ports.sections(dir.path()),
        d = dir.path().display(),
        key = certs.key.display(),
        cert = certs.cert.display(),
        other_key = other_key.display(),
        exp_cert = exp_cert.display(),
        exp_key = exp_key.display(),
    );
    let f = write(dir.path(), "certs.toml", &text);
    let (ok, out) = check(&f);
    assert!(!ok);
    let at = |needle: &str| format!("{}:{}:", f.display(), line_of(&text, needle));
    assert!(
        out.contains(&at("nope.crt")) && out.contains("nope.crt"),
        "missing cert: {out}"
    );
    assert!(
        out.contains(&at(&format!("key = \"{}\"", other_key.display())))
            && out.contains("does not match"),
        "mismatch: {out}"
    );
    assert!(
        out.contains(&at(&format!("cert = \"{}\"", exp_cert.display()))) && out.contains("expired"),
        "expired: {out}"
    );
    assert!(
        out.contains(&at("upstream = \"nopool\"")) && out.contains("nopool"),
        "missing pool: {out}"
    );
    assert!(out.contains("4 problem(s)"), "{out}");

    // `run` refuses the same file without binding its ports.
    let t = Instant::now();
    let status = Command::new(gateway_bin())
        .args(["run", "-c"])
        .arg(&f)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run");
    assert!(!status.success());
    assert!(t.elapsed() < Duration::from_secs(10));
    for port in [ports.https, ports.http, ports.admin] {
        assert!(
            !accepts(&format!("127.0.0.1:{port}")),
            "port {port} was bound"
        );
        std::net::TcpListener::bind(("127.0.0.1", port)).expect("port still free");
    }
}

#[test]
fn missing_static_root_and_bad_listener_are_reported() {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = TestCerts::new(dir.path());
    let text = good_conf(dir.path(), &Ports::new(), &certs)
        .replace("https = \"127.0.0.1:", "https = \"nohost:")
        + "\n[[routes]]\nname = \"web\"\nprefix = \"/\"\nkind = \"static\"\nroot = \"does/not/exist\"\n";
    let f = write(dir.path(), "root.toml", &text);
    let (ok, out) = check(&f);
    assert!(!ok);
    assert!(
        out.contains(&format!(
            "{}:{}:",
            f.display(),
            line_of(&text, "does/not/exist")
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("{}:{}:", f.display(), line_of(&text, "nohost"))),
        "{out}"
    );
}

#[test]
fn unknown_auth_modes_and_algorithms_are_reported_together_with_positions() {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = TestCerts::new(dir.path());
    std::fs::write(dir.path().join("hmac.secret"), [7u8; 40]).expect("secret");
    let text = format!(
        "{}\n[jwt_providers.p]\nissuer = \"i\"\naudiences = [\"a\"]\nalgorithms = [\"HS256\", \"HS257\"]\nsecret_file = \"hmac.secret\"\n\n\
         [[routes]]\nname = \"api\"\nprefix = \"/api\"\nkind = \"static\"\nroot = \".\"\nauth = \"jwtt\"\n",
        good_conf(dir.path(), &Ports::new(), &certs)
    );
    let f = write(dir.path(), "g.toml", &text);
    let (ok, out) = check(&f);
    assert!(!ok, "{out}");
    let at = format!("g.toml:{}:", line_of(&text, "auth = \"jwtt\""));
    assert!(
        out.lines()
            .any(|l| l.contains(&at) && l.contains("auth must be \"jwt\" or \"none\", not `jwtt`")),
        "{out}"
    );
    assert!(out.contains("algorithm `HS257` is not supported"), "{out}");
}

/// Runs `gateway check -c new --diff old`; returns (exit code, stdout, stderr).
fn check_diff(new: &Path, old: &Path) -> (i32, String, String) {
    let out = Command::new(gateway_bin())
        .args(["check", "-c"])
        .arg(new)
        .arg("--diff")
        .arg(old)
        .output()
        .expect("run gateway check --diff");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_diff_prints_one_line_per_change() {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = TestCerts::new(dir.path());
    let base = good_conf(dir.path(), &Ports::new(), &certs);
    let old = write(dir.path(), "old.toml", &base);
    let text = base
        .replace(
            "peers = [\"127.0.0.1:9\"]",
            "peers = [\"127.0.0.1:9\", \"127.0.0.1:10\"]\nretries = 2",
        )
        .replace("upstream = \"backend\"\n", "upstream = \"backend\"\nstrip_prefix = true\n")
        + "\n[[routes]]\nname = \"docs\"\nprefix = \"/docs\"\nkind = \"proxy\"\nupstream = \"backend\"\n\
           \n[limits]\nmax_body_bytes = 1024\n";
    let new = write(dir.path(), "new.toml", &text);
    let (code, out, err) = check_diff(&new, &old);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            format!("{}: ok (2 routes, 1 pools, 1 certificates)", new.display()).as_str(),
            "route api: changed keys strip_prefix",
            "route docs: added",
            "upstream backend: changed keys retries",
            "upstream backend: peer added 127.0.0.1:10",
            "limits: changed keys max_body_bytes",
        ]
    );

    // The same config laid out otherwise, with comments: no changes.
    let relaid = write(
        dir.path(),
        "relaid.toml",
        &format!("# reformatted\n{}\n\n", base.replace(" = ", "=")),
    );
    let (code, out, err) = check_diff(&relaid, &old);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().nth(1), Some("no changes"), "{out}");
    assert_eq!(out.lines().count(), 2, "{out}");
}

#[test]
fn check_diff_against_a_missing_or_invalid_file_fails_with_its_location() {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = TestCerts::new(dir.path());
    let base = good_conf(dir.path(), &Ports::new(), &certs);
    let good = write(dir.path(), "good.toml", &base);

    let missing = dir.path().join("missing.toml");
    let (code, out, err) = check_diff(&good, &missing);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains(&format!("{}: cannot read config", missing.display())),
        "{err}"
    );
    assert!(out.is_empty(), "no diff printed: {out}");

    let text = base.replace("[upstreams.backend]\n", "[upstreams.backend]\nretrys = 3\n");
    let bad = write(dir.path(), "bad.toml", &text);
    let at = format!("{}:{}:1", bad.display(), line_of(&text, "retrys"));
    // Invalid on either side: exit 2 with the problem located.
    for (new, old) in [(&good, &bad), (&bad, &good)] {
        let (code, out, err) = check_diff(new, old);
        assert_eq!(code, 2, "{out}{err}");
        assert!(err.contains(&at) && err.contains("retrys"), "{err}");
        assert!(out.is_empty(), "no diff printed: {out}");
    }
}
