//! The report: an aligned table (a row a request, then its details indented), or JSON.

use super::eval::Outcome;
use std::fmt::Write as _;

/// Interesting headers of an answer the gateway writes itself.
const ANSWER_HEADERS: [&str; 4] = ["www-authenticate", "allow", "location", "retry-after"];

/// The detail lines of one request.
fn details(o: &Outcome) -> Vec<String> {
    let mut d = Vec::new();
    if let Some(ip) = &o.client_ip {
        d.push(format!("client    {ip}"));
    }
    if let Some(r) = &o.rejected {
        d.push(format!("refused   {r}"));
    }
    for r in &o.rate_limits {
        let dry = if r.dry_run { " (dry run)" } else { "" };
        d.push(format!("rate      {} key {}{dry}", r.policy, r.key));
    }
    if let Some(a) = &o.auth {
        let mut line = format!("auth      {}", a.state);
        if let Some(p) = &a.provider {
            let _ = write!(line, " provider={p}");
        }
        if let Some(s) = &a.subject {
            let _ = write!(line, " sub={s}");
        }
        if !a.scopes.is_empty() {
            let _ = write!(line, " scopes={}", a.scopes.join(","));
        }
        if let Some(why) = &a.detail {
            let _ = write!(line, " — {why}");
        }
        d.push(line);
    }
    for (n, v) in o.preflight.iter().flatten() {
        if n.starts_with("access-control-") {
            d.push(format!("cors      {n}: {v}"));
        }
    }
    if let Some(s) = &o.static_file {
        let cc = s.cache_control.as_deref().unwrap_or("-");
        let ct = s.content_type.as_deref().unwrap_or("-");
        d.push(format!(
            "file      {} cache-control: {cc} content-type: {ct}",
            s.file
        ));
    }
    if let Some(u) = &o.upstream {
        let pools: Vec<String> = u
            .pools
            .iter()
            .map(|p| match p.weight {
                Some(w) => format!("{} (weight {w})", p.name),
                None => p.name.clone(),
            })
            .collect();
        let by = u.pools.first().map_or("", |p| p.by);
        d.push(format!(
            "upstream  pool {} by {by} path {}",
            pools.join(", "),
            u.path
        ));
        for (n, v) in &u.headers {
            d.push(format!("  > {n}: {v}"));
        }
    }
    for (n, v) in &o.response_headers {
        if ANSWER_HEADERS.contains(&n.as_str()) {
            d.push(format!("answer    {n}: {v}"));
        }
    }
    for c in &o.checks {
        let key = c.key.as_str();
        if c.pass {
            d.push(format!("PASS      {key}={}", c.want));
        } else {
            d.push(format!("FAIL      {key}={} (got {})", c.want, c.got));
        }
    }
    d
}

/// The aligned table of `outcomes`, with a closing count.
pub fn table(outcomes: &[Outcome]) -> String {
    let head = ["LINE", "METHOD", "PATH", "STATUS", "ROUTE", "OUTCOME"];
    let rows: Vec<[String; 6]> = outcomes
        .iter()
        .map(|o| {
            [
                o.line.to_string(),
                o.method.clone(),
                o.path.clone().unwrap_or_else(|| o.target.clone()),
                o.status.map_or_else(|| "proxy".into(), |s| s.to_string()),
                o.route.clone().unwrap_or_else(|| "-".into()),
                o.summary.clone(),
            ]
        })
        .collect();
    let mut width = head.map(str::len);
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[&str]| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                let _ = write!(s, "{c:<w$}  ", w = width[i]);
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(&head);
    for (o, r) in outcomes.iter().zip(&rows) {
        out.push_str(&line(&r.each_ref().map(String::as_str)));
        for d in details(o) {
            let _ = writeln!(out, "{:w$}{d}", "", w = width[0] + 2);
        }
    }
    let checks = outcomes.iter().flat_map(|o| &o.checks);
    let failed = checks.clone().filter(|c| !c.pass).count();
    let _ = writeln!(
        out,
        "{} request(s), {} expectation(s), {failed} failed",
        outcomes.len(),
        checks.count()
    );
    out
}

/// The outcomes as a JSON array.
pub fn json(outcomes: &[Outcome]) -> String {
    serde_json::to_string_pretty(outcomes).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}
