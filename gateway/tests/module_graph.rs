//! Arrows point one way: fails when the modules of `gateway/src` form an import cycle.
//!
//! Each file is a node; an edge is any path to another module of the crate (`crate::a::b`,
//! `super::x`, `self::x`, or a child declared with `mod x;`), tests and comments excluded.
//! A cycle is printed as the chain of files that closes it, so the fix is obvious.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module path (`proxy::ctx`, `""` for the crate root) of every `.rs` file under `dir`.
fn modules(dir: &Path, prefix: &[String], out: &mut BTreeMap<String, PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read src dir")
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("utf-8 name")
            .to_string();
        if path.is_dir() {
            let mut p = prefix.to_vec();
            p.push(name);
            modules(&path, &p, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            if prefix.is_empty() && name == "main" {
                continue; // the binary is another crate
            }
            let mut p = prefix.to_vec();
            if name != "mod" && name != "lib" {
                p.push(name);
            }
            out.insert(p.join("::"), path);
        }
    }
}

/// The code of a file without comments and without its `#[cfg(test)]` module.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).expect("read source");
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => &text[..],
    };
    text.lines()
        .map(|l| match l.find("//") {
            // Good enough for this crate: no `//` inside the string literals that name modules.
            Some(i) if !l[..i].contains('"') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Paths written in `src`: each run of `ident::ident::…`, with `{a, b::c}` groups expanded.
fn paths(src: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let bytes = src.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut i = 0;
    while i < bytes.len() {
        if !ident(bytes[i]) || (i > 0 && (ident(bytes[i - 1]) || bytes[i - 1] == b':')) {
            i += 1;
            continue;
        }
        let mut segs = Vec::new();
        let mut j = i;
        loop {
            let start = j;
            while j < bytes.len() && ident(bytes[j]) {
                j += 1;
            }
            segs.push(src[start..j].to_string());
            if src[j..].starts_with("::") {
                j += 2;
                if src[j..].starts_with('{') {
                    // A group: each member is a path under the prefix.
                    let end = src[j..].find('}').map_or(src.len(), |e| j + e);
                    for member in src[j + 1..end].split(',') {
                        let mut p = segs.clone();
                        p.extend(member.trim().split("::").map(|s| s.trim().to_string()));
                        out.push(p);
                    }
                    j = end;
                    break;
                }
                if j < bytes.len() && ident(bytes[j]) {
                    continue;
                }
            }
            break;
        }
        if segs.len() > 1 {
            out.push(segs);
        }
        i = j.max(i + 1);
    }
    out
}

/// Module path a written path points into, resolved from module `from`.
fn target(from: &str, path: &[String], known: &BTreeMap<String, PathBuf>) -> Option<String> {
    let here: Vec<&str> = if from.is_empty() {
        vec![]
    } else {
        from.split("::").collect()
    };
    let mut base: Vec<String>;
    let mut rest = path;
    match path.first().map(String::as_str) {
        Some("crate") => {
            base = vec![];
            rest = &path[1..];
        }
        Some("self") => {
            base = here.iter().map(|s| s.to_string()).collect();
            rest = &path[1..];
        }
        Some("super") => {
            base = here.iter().map(|s| s.to_string()).collect();
            while rest.first().is_some_and(|s| s == "super") {
                base.pop();
                rest = &rest[1..];
            }
        }
        _ => {
            // A bare `child::x` in a module that declares `mod child;`.
            base = here.iter().map(|s| s.to_string()).collect();
        }
    }
    let mut best = None;
    let mut cur = base.clone();
    for seg in rest {
        cur.push(seg.clone());
        let name = cur.join("::");
        if known.contains_key(&name) {
            best = Some(name);
        } else if best.is_some() || !base.is_empty() || path[0] == "crate" {
            // Past the module part of the path (into an item), or not a module at all.
            if !known.keys().any(|k| k.starts_with(&format!("{name}::"))) {
                break;
            }
        }
    }
    best.filter(|b| b != from)
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut known = BTreeMap::new();
    modules(&src, &[], &mut known);
    let mut graph = BTreeMap::new();
    for (name, file) in &known {
        let mut deps = BTreeSet::new();
        for p in paths(&code(file)) {
            if let Some(t) = target(name, &p, &known) {
                // A parent declaring its children is structure, not a dependency on them;
                // it still counts when the parent uses a child's items (`child::Item`).
                deps.insert(t);
            }
        }
        graph.insert(name.clone(), deps);
    }
    graph
}

/// One cycle, as the chain of modules that closes it, if any.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        marks: &mut BTreeMap<String, Mark>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        marks.insert(n.to_string(), Mark::Open);
        stack.push(n.to_string());
        for d in g.get(n).into_iter().flatten() {
            match marks.get(d).copied().unwrap_or(Mark::New) {
                Mark::Open => {
                    let from = stack.iter().position(|s| s == d).unwrap_or(0);
                    let mut cycle = stack[from..].to_vec();
                    cycle.push(d.clone());
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(c) = visit(d, g, marks, stack) {
                        return Some(c);
                    }
                }
                Mark::Done => {}
            }
        }
        stack.pop();
        marks.insert(n.to_string(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for n in graph.keys() {
        if marks.get(n).copied().unwrap_or(Mark::New) == Mark::New {
            if let Some(c) = visit(n, graph, &mut marks, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn gateway_modules_form_no_cycle() {
    let g = graph();
    assert!(
        g.len() > 20,
        "the scan found the crate's modules: {:?}",
        g.keys()
    );
    // The scan sees real edges (else "no cycle" would prove nothing).
    assert!(g["proxy"].contains("proxy::ctx"), "{:?}", g["proxy"]);
    if let Some(cycle) = find_cycle(&g) {
        let pretty = cycle
            .iter()
            .map(|m| if m.is_empty() { "crate" } else { m.as_str() })
            .collect::<Vec<_>>()
            .join(" → ");
        panic!("import cycle in gateway/src: {pretty}");
    }
}

#[test]
fn the_checker_finds_a_planted_cycle() {
    // The real graph with one planted back edge: a phase's context importing the dispatcher.
    let mut g = graph();
    g.entry("proxy::ctx".into())
        .or_default()
        .insert("proxy".into());
    let cycle = find_cycle(&g).expect("a cycle through proxy and its ctx");
    assert!(cycle.contains(&"proxy::ctx".to_string()), "{cycle:?}");
    // And a plain three-module ring.
    let ring: BTreeMap<String, BTreeSet<String>> = [("a", "b"), ("b", "c"), ("c", "a")]
        .into_iter()
        .map(|(x, y)| (x.to_string(), BTreeSet::from([y.to_string()])))
        .collect();
    assert_eq!(find_cycle(&ring).map(|c| c.len()), Some(4));
}

#[test]
fn paths_are_read_with_groups() {
    let p = paths("use crate::{a::B, c};\nlet x = super::d::e(); fn f() -> crate::g::H {}");
    assert!(p.contains(&vec!["crate".into(), "a".into(), "B".into()]));
    assert!(p.contains(&vec!["crate".into(), "c".into()]));
    assert!(p.contains(&vec!["super".into(), "d".into(), "e".into()]));
    assert!(p.contains(&vec!["crate".into(), "g".into(), "H".into()]));
}
