//! The layout rules of the README's "Code layout", checked on the sources:
//! within each crate, the top-level modules import each other one way only
//! (no cycle through `crate::` paths), and no file holds more than 600 lines
//! of non-test code. Comments and `#[cfg(test)]` tails are not counted.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const CRATES: &[&str] = &[
    "src",
    "store/src",
    "client/src",
    "control/src",
    "gateway/src",
    "bench/src",
    "apisix/src",
    "robustness/src",
    "proto/src",
];
const MAX_LINES: usize = 600;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The code before the file's `#[cfg(test)]` module, without comment lines.
fn code_of(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .take_while(|l| !l.starts_with("#[cfg(test)]"))
        .filter(|l| !l.trim_start().starts_with("//"))
        .map(str::to_string)
        .collect()
}

/// The top-level modules a piece of code names through `crate::`, including
/// the groups of `use crate::{a, b::c};`.
fn crate_refs(code: &str) -> BTreeSet<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find("};").unwrap_or(group.len());
            // Only names at the group's top level, not inside nested braces.
            let mut depth = 0;
            let mut item = String::new();
            for c in group[..end].chars() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.insert(ident(item.trim()));
                        item.clear();
                    }
                    _ if depth == 0 => item.push(c),
                    _ => {}
                }
            }
            out.insert(ident(item.trim()));
        } else {
            out.insert(ident(rest));
        }
    }
    out.retain(|m| !m.is_empty());
    out
}

/// Module -> the modules it imports, for one crate.
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let top = top.trim_end_matches(".rs").to_string();
        if top == "lib" || top == "main" {
            continue;
        }
        let refs = crate_refs(&code_of(&f).join("\n"));
        let entry = g.entry(top.clone()).or_default();
        entry.extend(refs.into_iter().filter(|m| *m != top));
    }
    g
}

/// One cycle through `start`, if there is one.
fn cycle_from(g: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    let mut stack = vec![(start.to_string(), vec![start.to_string()])];
    let mut seen = BTreeSet::new();
    while let Some((m, path)) = stack.pop() {
        for next in g.get(&m).into_iter().flatten() {
            if next == start {
                let mut p = path.clone();
                p.push(start.to_string());
                return Some(p);
            }
            if g.contains_key(next) && seen.insert(next.clone()) {
                let mut p = path.clone();
                p.push(next.clone());
                stack.push((next.clone(), p));
            }
        }
    }
    None
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn modules_import_each_other_one_way() {
    let mut cycles = Vec::new();
    for c in CRATES {
        let g = graph(&root().join(c));
        assert!(g.len() > 1 || *c == "proto/src", "{c}: no modules found");
        if let Some(cycle) = g.keys().find_map(|m| cycle_from(&g, m)) {
            cycles.push(format!("{c}: {}", cycle.join(" -> ")));
        }
    }
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

#[test]
fn no_file_holds_more_than_600_lines_of_code() {
    let mut big = Vec::new();
    for c in CRATES {
        let mut files = Vec::new();
        rust_files(&root().join(c), &mut files);
        for f in files {
            let n = code_of(&f).len();
            if n > MAX_LINES {
                big.push(format!("{} ({n})", f.display()));
            }
        }
    }
    assert!(
        big.is_empty(),
        "over {MAX_LINES} lines:\n{}",
        big.join("\n")
    );
}

#[test]
fn the_checker_sees_a_cycle() {
    let refs = crate_refs("use crate::{a::X, b::{c, d}};\nfn f() { crate::e::g() }");
    assert_eq!(
        refs.into_iter().collect::<Vec<_>>(),
        ["a", "b", "e"].map(String::from)
    );
    let mut g = BTreeMap::new();
    g.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    g.insert("b".to_string(), BTreeSet::from(["c".to_string()]));
    g.insert("c".to_string(), BTreeSet::from(["a".to_string()]));
    assert_eq!(cycle_from(&g, "a").unwrap(), ["a", "b", "c", "a"]);
    g.get_mut("c").unwrap().clear();
    assert_eq!(cycle_from(&g, "a"), None);
}
