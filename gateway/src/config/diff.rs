//! What changed between two config generations: the line a reload logs, the `changes` of admin
//! `/config`, and what `gateway check -c NEW --diff OLD` prints.
//!
//! The diff compares a [`Summary`] of each generation: the file as written, parsed into a
//! generic TOML tree (so comments and layout never count as a change), plus the compiled facts
//! the file does not show — certificate serials and expiry, the files of each static bundle,
//! the contents of other referenced files (pages, keys). Named entries (routes, pools,
//! providers, policies, certificates) are matched by name and report their changed top-level
//! keys; every other section reports its changed keys. Values are compared as written: writing
//! out a default that was implicit counts as a change.

use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use toml::{Table, Value};

/// The facts of one generation that a diff needs, built when it is compiled.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// The config file as written.
    pub file: Table,
    /// Loaded certificates by configured name.
    pub certificates: BTreeMap<String, CertFacts>,
    /// Static bundles by route name.
    pub bundles: BTreeMap<String, BundleFacts>,
    /// Other files the config references (pages, JWKS, key files) → content digest.
    pub inputs: BTreeMap<String, String>,
}

/// What identifies a loaded certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertFacts {
    /// Leaf serial number, hex.
    pub serial: String,
    /// Leaf `notAfter`, RFC 3339.
    pub expires: String,
}

/// The files of a static bundle.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BundleFacts {
    /// URL path → content tag (the file's ETag).
    pub files: BTreeMap<String, String>,
    /// `previous_assets_grace_seconds` of the route.
    pub grace_seconds: u64,
}

/// File-list changes of one static bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BundleChange {
    /// Files added.
    pub added: usize,
    /// Files removed.
    pub removed: usize,
    /// Files with other contents.
    pub changed: usize,
    /// A few of the paths concerned (added first, then removed, then changed).
    pub examples: Vec<String>,
    /// How long the previous fingerprinted files stay servable (0: not kept).
    pub grace_seconds: u64,
}

/// One change; `section` is what `gateway_config_changes_total` counts it under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum Change {
    /// A named entry appeared.
    Added { section: String, name: String },
    /// A named entry disappeared.
    Removed { section: String, name: String },
    /// A named entry (or, with no name, a whole section) has these keys changed.
    Changed {
        section: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        keys: Vec<String>,
    },
    /// Same routes, another match order.
    Reordered { section: String, order: Vec<String> },
    /// A peer joined a pool.
    PeerAdded {
        section: String,
        name: String,
        peer: String,
    },
    /// A peer left a pool.
    PeerRemoved {
        section: String,
        name: String,
        peer: String,
    },
    /// A certificate with the same name now has another leaf.
    Rotated {
        section: String,
        name: String,
        old: CertFacts,
        new: CertFacts,
    },
    /// A static route serves other files.
    Bundle {
        section: String,
        name: String,
        #[serde(flatten)]
        files: BundleChange,
    },
    /// A referenced file (page, key, JWKS) has new content.
    Content { section: String, name: String },
    /// A route's traffic split moved: each pool whose weight changed (0: not in the split).
    Weights {
        section: String,
        name: String,
        weights: Vec<WeightChange>,
    },
}

/// One pool's weight before and after.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WeightChange {
    /// Pool name.
    pub pool: String,
    /// Weight before.
    pub old: u64,
    /// Weight after.
    pub new: u64,
}

impl Change {
    /// The section counted in metrics.
    pub fn section(&self) -> &str {
        match self {
            Change::Added { section, .. }
            | Change::Removed { section, .. }
            | Change::Changed { section, .. }
            | Change::Reordered { section, .. }
            | Change::PeerAdded { section, .. }
            | Change::PeerRemoved { section, .. }
            | Change::Rotated { section, .. }
            | Change::Bundle { section, .. }
            | Change::Content { section, .. }
            | Change::Weights { section, .. } => section,
        }
    }
}

/// Every change from one generation to the next, in a stable order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ConfigDiff {
    /// The changes; empty means "no changes".
    pub changes: Vec<Change>,
}

// Section labels (also the file's keys, but for the compiled-only ones).
const ROUTES: &str = "routes";
const UPSTREAMS: &str = "upstreams";
const CERTIFICATES: &str = "certificates";
const JWT_PROVIDERS: &str = "jwt_providers";
const RATE_LIMITS: &str = "rate_limits";
const STATIC_BUNDLES: &str = "static_bundles";
const FILES: &str = "files";

/// Sections with entries by name; all others are diffed as plain settings.
pub const NAMED_SECTIONS: [&str; 7] = [
    ROUTES,
    UPSTREAMS,
    CERTIFICATES,
    JWT_PROVIDERS,
    RATE_LIMITS,
    STATIC_BUNDLES,
    FILES,
];

impl ConfigDiff {
    /// The changes from `old` to `new`.
    pub fn between(old: &Summary, new: &Summary) -> Self {
        let mut out = Vec::new();
        let (o, n) = (&old.file, &new.file);
        let old_routes = by_name(o.get(ROUTES));
        let new_routes = by_name(n.get(ROUTES));
        named(ROUTES, &old_routes, &new_routes, &mut out);
        weights(&old_routes, &new_routes, &mut out);
        // Routes match in order: the routes of both generations in another order is a change
        // of its own (added and removed ones aside).
        let kept = |file: &Table, other: &BTreeMap<String, &Table>| -> Vec<String> {
            let order = names(file.get(ROUTES));
            order
                .into_iter()
                .filter(|r| other.contains_key(r))
                .collect()
        };
        let (order_old, order_new) = (kept(o, &new_routes), kept(n, &old_routes));
        if order_old != order_new {
            out.push(Change::Reordered {
                section: ROUTES.into(),
                order: order_new,
            });
        }
        bundles(&old.bundles, &new.bundles, &mut out);
        let (old_pools, new_pools) = (entries(o.get(UPSTREAMS)), entries(n.get(UPSTREAMS)));
        named(UPSTREAMS, &old_pools, &new_pools, &mut out);
        peers(&old_pools, &new_pools, &mut out);
        named(CERTIFICATES, &tls_certs(o), &tls_certs(n), &mut out);
        certificates(&old.certificates, &new.certificates, &mut out);
        for section in [JWT_PROVIDERS, RATE_LIMITS] {
            named(
                section,
                &entries(o.get(section)),
                &entries(n.get(section)),
                &mut out,
            );
        }
        settings(o, n, &mut out);
        for (path, digest) in &new.inputs {
            if old.inputs.get(path).is_some_and(|d| d != digest) {
                out.push(Change::Content {
                    section: FILES.into(),
                    name: path.clone(),
                });
            }
        }
        Self { changes: out }
    }

    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// Sections with at least one change, each once.
    pub fn sections(&self) -> BTreeSet<&str> {
        self.changes.iter().map(Change::section).collect()
    }

    /// One line per change, or just `no changes`.
    pub fn lines(&self) -> Vec<String> {
        if self.is_empty() {
            return vec!["no changes".into()];
        }
        self.changes.iter().map(ToString::to_string).collect()
    }

    /// All changes on one line (`; ` between them), for the reload log.
    pub fn one_line(&self) -> String {
        self.lines().join("; ")
    }
}

/// One line per change, or `no changes`.
impl fmt::Display for ConfigDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.lines().join("\n"))
    }
}

/// Pool → weight of a route as written: `upstreams` entries (weight default 1), or its one
/// `upstream` at weight 1.
fn split_of(route: &Table) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    if let Some(Value::String(pool)) = route.get("upstream") {
        out.insert(pool.clone(), 1);
    }
    for e in route
        .get("upstreams")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_table)
    {
        if let Some(pool) = e.get("pool").and_then(Value::as_str) {
            let w = e.get("weight").and_then(Value::as_integer).unwrap_or(1);
            out.insert(pool.to_string(), u64::try_from(w).unwrap_or(0));
        }
    }
    out
}

/// Weight shifts of routes kept across the reload (what a blue-green step looks like).
fn weights(old: &BTreeMap<String, &Table>, new: &BTreeMap<String, &Table>, out: &mut Vec<Change>) {
    for (name, n) in new {
        let Some(o) = old.get(name) else { continue };
        if !o.contains_key("upstreams") && !n.contains_key("upstreams") {
            // No split on either side: a changed `upstream` is a changed key, said already.
            continue;
        }
        let (before, after) = (split_of(o), split_of(n));
        let pools: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
        let moved: Vec<WeightChange> = pools
            .into_iter()
            .map(|p| WeightChange {
                pool: p.clone(),
                old: before.get(p).copied().unwrap_or(0),
                new: after.get(p).copied().unwrap_or(0),
            })
            .filter(|w| w.old != w.new)
            .collect();
        if !moved.is_empty() {
            out.push(Change::Weights {
                section: ROUTES.into(),
                name: name.clone(),
                weights: moved,
            });
        }
    }
}

/// The word an entry of `section` is called in a line (`route api`, `upstream backend`).
fn singular(section: &str) -> &str {
    match section {
        ROUTES => "route",
        UPSTREAMS => "upstream",
        CERTIFICATES => "certificate",
        JWT_PROVIDERS => "jwt_provider",
        RATE_LIMITS => "rate_limit",
        STATIC_BUNDLES => "static route",
        FILES => "file",
        other => other,
    }
}

/// The date part of an RFC 3339 time.
fn day(rfc3339: &str) -> &str {
    rfc3339.get(..10).unwrap_or(rfc3339)
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = |section: &str, name: &str| format!("{} {name}", singular(section));
        match self {
            Change::Added { section, name } => write!(f, "{}: added", what(section, name)),
            Change::Removed { section, name } => write!(f, "{}: removed", what(section, name)),
            Change::Changed {
                section,
                name: Some(name),
                keys,
            } => write!(
                f,
                "{}: changed keys {}",
                what(section, name),
                keys.join(", ")
            ),
            Change::Changed {
                section,
                name: None,
                keys,
            } if keys.is_empty() => write!(f, "{section}: changed"),
            Change::Changed {
                section,
                name: None,
                keys,
            } => write!(f, "{section}: changed keys {}", keys.join(", ")),
            Change::Reordered { section, order } => {
                write!(f, "{section}: order changed to {}", order.join(", "))
            }
            Change::PeerAdded {
                section,
                name,
                peer,
            } => write!(f, "{}: peer added {peer}", what(section, name)),
            Change::PeerRemoved {
                section,
                name,
                peer,
            } => write!(f, "{}: peer removed {peer}", what(section, name)),
            Change::Weights {
                section,
                name,
                weights,
            } => {
                let moved: Vec<String> = weights
                    .iter()
                    .map(|w| format!("{} {} → {}", w.pool, w.old, w.new))
                    .collect();
                write!(f, "{}: weights {}", what(section, name), moved.join(", "))
            }
            Change::Rotated {
                section,
                name,
                old,
                new,
            } => write!(
                f,
                "{}: rotated serial {} (expires {}) → {} (expires {})",
                what(section, name),
                old.serial,
                day(&old.expires),
                new.serial,
                day(&new.expires)
            ),
            Change::Bundle {
                section,
                name,
                files,
            } => {
                write!(
                    f,
                    "{}: files {} added, {} removed, {} changed",
                    what(section, name),
                    files.added,
                    files.removed,
                    files.changed
                )?;
                if !files.examples.is_empty() {
                    let more = files.added + files.removed + files.changed > files.examples.len();
                    write!(
                        f,
                        " ({}{})",
                        files.examples.join(", "),
                        if more { ", …" } else { "" }
                    )?;
                }
                match files.grace_seconds {
                    0 => f.write_str("; previous assets not kept"),
                    s => write!(f, "; previous fingerprinted assets servable for {s} s"),
                }
            }
            Change::Content { section, name } => {
                write!(f, "{}: content changed", what(section, name))
            }
        }
    }
}

/// Entries of a `[section.name]` table, by name.
fn entries(v: Option<&Value>) -> BTreeMap<String, &Table> {
    v.and_then(Value::as_table)
        .map(|t| {
            t.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_table()?)))
                .collect()
        })
        .unwrap_or_default()
}

/// Entries of a `[[section]]` array, by their `name` key (the first of a duplicated name).
fn by_name(v: Option<&Value>) -> BTreeMap<String, &Table> {
    let mut out = BTreeMap::new();
    for t in v.and_then(Value::as_array).into_iter().flatten() {
        if let Some((name, t)) = t
            .as_table()
            .and_then(|t| Some((t.get("name")?.as_str()?.to_string(), t)))
        {
            out.entry(name).or_insert(t);
        }
    }
    out
}

/// `[[tls.certificates]]` by name.
fn tls_certs(file: &Table) -> BTreeMap<String, &Table> {
    by_name(
        file.get("tls")
            .and_then(Value::as_table)
            .and_then(|t| t.get(CERTIFICATES)),
    )
}

/// The `name`s of a `[[section]]` array, in file order.
fn names(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| Some(t.get("name")?.as_str()?.to_string()))
        .collect()
}

/// Keys whose values differ between two tables (present in only one counts).
fn changed_keys(old: &Table, new: &Table) -> Vec<String> {
    let keys: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    keys.into_iter()
        .filter(|k| old.get(*k) != new.get(*k))
        .cloned()
        .collect()
}

/// Added, removed and changed entries of a named section. A pool whose peers changed as a set
/// reports them as peers instead (see [`peers`]).
fn named(
    section: &str,
    old: &BTreeMap<String, &Table>,
    new: &BTreeMap<String, &Table>,
    out: &mut Vec<Change>,
) {
    for (name, n) in new {
        let Some(o) = old.get(name) else {
            out.push(Change::Added {
                section: section.into(),
                name: name.clone(),
            });
            continue;
        };
        let mut keys = changed_keys(o, n);
        if section == UPSTREAMS && peer_set(o) != peer_set(n) {
            keys.retain(|k| k != "peers");
        }
        // A weights line says it all (`upstreams` holds only pools and weights).
        if section == ROUTES && split_of(o) != split_of(n) {
            keys.retain(|k| k != "upstreams");
        }
        if !keys.is_empty() {
            out.push(Change::Changed {
                section: section.into(),
                name: Some(name.clone()),
                keys,
            });
        }
    }
    for name in old.keys().filter(|n| !new.contains_key(*n)) {
        out.push(Change::Removed {
            section: section.into(),
            name: name.clone(),
        });
    }
}

fn peer_set(pool: &Table) -> BTreeSet<&str> {
    pool.get("peers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

/// Peers added to and removed from pools present in both generations.
fn peers(old: &BTreeMap<String, &Table>, new: &BTreeMap<String, &Table>, out: &mut Vec<Change>) {
    for (name, n) in new {
        let Some(o) = old.get(name) else { continue };
        let (before, after) = (peer_set(o), peer_set(n));
        for p in after.difference(&before) {
            out.push(Change::PeerAdded {
                section: UPSTREAMS.into(),
                name: name.clone(),
                peer: (*p).into(),
            });
        }
        for p in before.difference(&after) {
            out.push(Change::PeerRemoved {
                section: UPSTREAMS.into(),
                name: name.clone(),
                peer: (*p).into(),
            });
        }
    }
}

/// Certificates present in both generations whose leaf changed.
fn certificates(
    old: &BTreeMap<String, CertFacts>,
    new: &BTreeMap<String, CertFacts>,
    out: &mut Vec<Change>,
) {
    for (name, n) in new {
        if let Some(o) = old.get(name).filter(|o| *o != n) {
            out.push(Change::Rotated {
                section: CERTIFICATES.into(),
                name: name.clone(),
                old: o.clone(),
                new: n.clone(),
            });
        }
    }
}

/// How many paths a bundle line names.
const EXAMPLES: usize = 3;

/// Static routes present in both generations that serve other files.
fn bundles(
    old: &BTreeMap<String, BundleFacts>,
    new: &BTreeMap<String, BundleFacts>,
    out: &mut Vec<Change>,
) {
    for (name, n) in new {
        let Some(o) = old.get(name) else { continue };
        let added: Vec<&String> = n
            .files
            .keys()
            .filter(|p| !o.files.contains_key(*p))
            .collect();
        let removed: Vec<&String> = o
            .files
            .keys()
            .filter(|p| !n.files.contains_key(*p))
            .collect();
        let changed: Vec<&String> = n
            .files
            .iter()
            .filter(|(p, tag)| o.files.get(*p).is_some_and(|t| t != *tag))
            .map(|(p, _)| p)
            .collect();
        if added.is_empty() && removed.is_empty() && changed.is_empty() {
            continue;
        }
        let examples = added
            .iter()
            .chain(&removed)
            .chain(&changed)
            .take(EXAMPLES)
            .map(|p| (*p).clone())
            .collect();
        out.push(Change::Bundle {
            section: STATIC_BUNDLES.into(),
            name: name.clone(),
            files: BundleChange {
                added: added.len(),
                removed: removed.len(),
                changed: changed.len(),
                examples,
                grace_seconds: n.grace_seconds,
            },
        });
    }
}

/// Every other top-level key: a table reports its changed keys (`[tls]` without its
/// certificates), a plain value just that it changed.
fn settings(old: &Table, new: &Table, out: &mut Vec<Change>) {
    let skip = [ROUTES, UPSTREAMS, JWT_PROVIDERS, RATE_LIMITS];
    let sections: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    for section in sections.into_iter().filter(|s| !skip.contains(&s.as_str())) {
        let (o, n) = (old.get(section), new.get(section));
        if o == n {
            continue;
        }
        let table = |v: Option<&Value>| {
            v.and_then(Value::as_table).map(|t| {
                let mut t = t.clone();
                if section == "tls" {
                    t.remove(CERTIFICATES);
                }
                t
            })
        };
        let keys = match (table(o), table(n)) {
            (None, None) => Vec::new(), // a plain value such as `threads`
            (a, b) => {
                let keys = changed_keys(&a.unwrap_or_default(), &b.unwrap_or_default());
                if keys.is_empty() {
                    continue; // only `[tls]` certificates changed, or an empty table added
                }
                keys
            }
        };
        out.push(Change::Changed {
            section: section.clone(),
            name: None,
            keys,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(text: &str) -> Summary {
        Summary {
            file: toml::from_str(text).expect("toml"),
            ..Summary::default()
        }
    }

    fn lines(old: &Summary, new: &Summary) -> Vec<String> {
        ConfigDiff::between(old, new)
            .to_string()
            .lines()
            .map(str::to_string)
            .collect()
    }

    const BASE: &str = r#"
threads = 2
[limits]
max_body_bytes = 1000

[tls]
hsts_max_age = 10
[[tls.certificates]]
name = "main"
cert = "a.crt"
key = "a.key"

[upstreams.backend]
peers = ["10.0.0.1:8000", "10.0.0.2:8000"]

[rate_limits.login]
rate = 5

[[routes]]
name = "api"
prefix = "/api"
kind = "proxy"
upstream = "backend"

[[routes]]
name = "web"
prefix = "/"
kind = "static"
root = "web"
"#;

    #[test]
    fn identical_files_differ_in_nothing_even_with_other_comments_and_layout() {
        let relaid = format!("# a comment\n{}\n\n", BASE.replace(" = ", "="));
        let d = ConfigDiff::between(&summary(BASE), &summary(&relaid));
        assert!(d.is_empty(), "{d}");
        assert_eq!(d.to_string(), "no changes");
        assert_eq!(d.one_line(), "no changes");
        assert!(d.sections().is_empty());
    }

    #[test]
    fn routes_added_removed_changed_and_reordered() {
        let new = BASE
            .replace("upstream = \"backend\"", "upstream = \"other\"\nrate_limits = [\"login\"]")
            .replace("name = \"web\"", "name = \"site\"")
            + "\n[[routes]]\nname = \"docs\"\nprefix = \"/docs\"\nkind = \"static\"\nroot = \"d\"\n";
        assert_eq!(
            lines(&summary(BASE), &summary(&new)),
            [
                "route api: changed keys rate_limits, upstream",
                "route docs: added",
                "route site: added",
                "route web: removed",
            ]
        );
        let swapped = "[[routes]]\nname = \"b\"\n[[routes]]\nname = \"a\"\n";
        let d = ConfigDiff::between(
            &summary("[[routes]]\nname = \"a\"\n[[routes]]\nname = \"b\"\n"),
            &summary(swapped),
        );
        assert_eq!(d.to_string(), "routes: order changed to b, a");
        assert_eq!(d.sections(), BTreeSet::from(["routes"]));
        // Among the routes kept, whatever was added or removed around them.
        let d = ConfigDiff::between(
            &summary("[[routes]]\nname = \"a\"\n[[routes]]\nname = \"b\"\n"),
            &summary(
                "[[routes]]\nname = \"b\"\n[[routes]]\nname = \"c\"\n[[routes]]\nname = \"a\"\n",
            ),
        );
        assert_eq!(
            d.to_string(),
            "route c: added\nroutes: order changed to b, a"
        );
    }

    #[test]
    fn a_weight_shift_says_which_pools_moved() {
        let split = |blue: u32, green: u32| {
            format!(
                "[[routes]]\nname = \"api\"\nupstreams = [{{ pool = \"blue\", weight = {blue} }}, {{ pool = \"green\", weight = {green} }}]\n"
            )
        };
        let d = ConfigDiff::between(&summary(&split(100, 0)), &summary(&split(75, 25)));
        assert_eq!(
            d.lines(),
            ["route api: weights blue 100 → 75, green 0 → 25"]
        );
        assert_eq!(d.sections(), BTreeSet::from(["routes"]));
        // From one pool to a split: the new pool appears from 0.
        let one = "[[routes]]\nname = \"api\"\nupstream = \"blue\"\n";
        let d = ConfigDiff::between(&summary(one), &summary(&split(1, 1)));
        assert!(
            d.lines()
                .contains(&"route api: weights green 0 → 1".to_string()),
            "{d}"
        );
        // Another pool with no split on either side is only a changed key.
        let other = one.replace("blue", "green");
        assert_eq!(
            ConfigDiff::between(&summary(one), &summary(&other)).lines(),
            ["route api: changed keys upstream"]
        );
    }

    #[test]
    fn peers_are_reported_per_pool_and_other_pool_keys_as_keys() {
        let new = BASE.replace(
            "peers = [\"10.0.0.1:8000\", \"10.0.0.2:8000\"]",
            "peers = [\"10.0.0.1:8000\", \"10.0.0.3:8000\"]\nretries = 2",
        ) + "\n[upstreams.extra]\npeers = [\"10.0.1.1:80\"]\n";
        assert_eq!(
            lines(&summary(BASE), &summary(&new)),
            [
                "upstream backend: changed keys retries",
                "upstream extra: added",
                "upstream backend: peer added 10.0.0.3:8000",
                "upstream backend: peer removed 10.0.0.2:8000",
            ]
        );
        // Same peers in another order is a change of the key itself.
        let reordered = BASE.replace(
            "[\"10.0.0.1:8000\", \"10.0.0.2:8000\"]",
            "[\"10.0.0.2:8000\", \"10.0.0.1:8000\"]",
        );
        assert_eq!(
            lines(&summary(BASE), &summary(&reordered)),
            ["upstream backend: changed keys peers"]
        );
    }

    #[test]
    fn certificate_rotation_shows_old_and_new_serial_and_expiry() {
        let facts = |serial: &str, expires: &str| CertFacts {
            serial: serial.into(),
            expires: expires.into(),
        };
        let mut old = summary(BASE);
        old.certificates
            .insert("main".into(), facts("1a2b", "2027-03-01T00:00:00Z"));
        let mut new = summary(&BASE.replace("a.crt", "b.crt"));
        new.certificates
            .insert("main".into(), facts("3c4d", "2027-06-01T12:00:00Z"));
        let d = ConfigDiff::between(&old, &new);
        assert_eq!(
            d.to_string(),
            "certificate main: changed keys cert\n\
             certificate main: rotated serial 1a2b (expires 2027-03-01) → 3c4d (expires 2027-06-01)"
        );
        assert_eq!(d.sections(), BTreeSet::from(["certificates"]));
        let json = serde_json::to_value(&d).expect("json");
        assert_eq!(json["changes"][1]["change"], "rotated");
        assert_eq!(json["changes"][1]["old"]["serial"], "1a2b");
        assert_eq!(json["changes"][1]["new"]["expires"], "2027-06-01T12:00:00Z");

        // Same files, same leaf: nothing; a second certificate: added.
        assert!(ConfigDiff::between(&old, &old).is_empty());
        let more = BASE.to_string()
            + "\n[[tls.certificates]]\nname = \"alt\"\ncert = \"c.crt\"\nkey = \"c.key\"\n";
        assert_eq!(
            lines(&summary(BASE), &summary(&more)),
            ["certificate alt: added"]
        );
        assert_eq!(
            lines(&summary(&more), &summary(BASE)),
            ["certificate alt: removed"]
        );
    }

    #[test]
    fn bundle_file_changes_count_and_name_a_few_with_the_grace_in_force() {
        let bundle = |files: &[(&str, &str)], grace| BundleFacts {
            files: files
                .iter()
                .map(|(p, t)| (p.to_string(), t.to_string()))
                .collect(),
            grace_seconds: grace,
        };
        let mut old = summary(BASE);
        old.bundles.insert(
            "web".into(),
            bundle(
                &[
                    ("/index.html", "1"),
                    ("/assets/app.aaaa1111.js", "2"),
                    ("/logo.svg", "3"),
                ],
                600,
            ),
        );
        let mut new = summary(BASE);
        new.bundles.insert(
            "web".into(),
            bundle(
                &[
                    ("/index.html", "9"),
                    ("/assets/app.bbbb2222.js", "4"),
                    ("/logo.svg", "3"),
                ],
                600,
            ),
        );
        let d = ConfigDiff::between(&old, &new);
        assert_eq!(
            d.to_string(),
            "static route web: files 1 added, 1 removed, 1 changed (/assets/app.bbbb2222.js, \
             /assets/app.aaaa1111.js, /index.html); previous fingerprinted assets servable for 600 s"
        );
        assert_eq!(d.sections(), BTreeSet::from(["static_bundles"]));
        let json = serde_json::to_value(&d).expect("json");
        assert_eq!(
            json["changes"][0],
            serde_json::json!({
                "change": "bundle",
                "section": "static_bundles",
                "name": "web",
                "added": 1,
                "removed": 1,
                "changed": 1,
                "examples": ["/assets/app.bbbb2222.js", "/assets/app.aaaa1111.js", "/index.html"],
                "grace_seconds": 600,
            })
        );

        // More changes than examples: the line says there are more.
        let many: Vec<(String, String)> = (0..5).map(|i| (format!("/f{i}"), "x".into())).collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        new.bundles.insert("web".into(), bundle(&many, 0));
        old.bundles.insert("web".into(), bundle(&[], 600));
        assert_eq!(
            ConfigDiff::between(&old, &new).to_string(),
            "static route web: files 5 added, 0 removed, 0 changed (/f0, /f1, /f2, …); \
             previous assets not kept"
        );
        assert!(ConfigDiff::between(&new, &new).is_empty());
    }

    #[test]
    fn providers_policies_settings_and_referenced_files() {
        let new = BASE
            .replace("rate = 5", "rate = 6")
            .replace("threads = 2", "threads = 4")
            .replace(
                "max_body_bytes = 1000",
                "max_body_bytes = 2000\nmax_headers = 50",
            )
            .replace("hsts_max_age = 10", "hsts_max_age = 20")
            + "\n[jwt_providers.idp]\nissuer = \"i\"\n[maintenance]\nenabled = true\n";
        let mut old = summary(BASE);
        old.inputs.insert("errors/404.html".into(), "aa".into());
        old.inputs.insert("gone.html".into(), "bb".into());
        let mut new = summary(&new);
        new.inputs.insert("errors/404.html".into(), "cc".into());
        let d = ConfigDiff::between(&old, &new);
        assert_eq!(
            d.to_string(),
            "jwt_provider idp: added\n\
             rate_limit login: changed keys rate\n\
             limits: changed keys max_body_bytes, max_headers\n\
             maintenance: changed keys enabled\n\
             threads: changed\n\
             tls: changed keys hsts_max_age\n\
             file errors/404.html: content changed"
        );
        assert_eq!(
            d.sections(),
            BTreeSet::from([
                "files",
                "jwt_providers",
                "limits",
                "maintenance",
                "rate_limits",
                "threads",
                "tls"
            ])
        );
        assert_eq!(
            d.one_line().split("; ").count(),
            7,
            "one line for the log: {}",
            d.one_line()
        );
        // An empty section written out changes nothing.
        let empty_section = BASE.to_string() + "\n[security_headers]\n";
        assert!(ConfigDiff::between(&summary(BASE), &summary(&empty_section)).is_empty());
    }
}
