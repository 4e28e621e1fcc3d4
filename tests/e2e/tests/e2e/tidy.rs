//! Conventions kept by tests rather than by review: what ARCHITECTURE.md
//! cites exists, and no two modules of the service import each other.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every `.rs` file under `dir`, skipping build output.
fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if path.is_dir() {
            if name != "target" && name != ".git" {
                rust_files(&path, found);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// The names after `fn ` in the tree's Rust sources.
fn functions() -> BTreeSet<String> {
    let mut files = Vec::new();
    for dir in ["crates", "services", "tools", "tests", "fuzz"] {
        rust_files(&repo().join(dir), &mut files);
    }
    let mut names = BTreeSet::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for piece in text.split("fn ").skip(1) {
            let name: String = piece
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            names.insert(name);
        }
    }
    names
}

/// The backquoted names in the last column of ARCHITECTURE.md's table of
/// invariants ("guarded by").
fn cited_tests(architecture: &str) -> Vec<String> {
    let table = architecture
        .split("## Invariants and the tests that guard them")
        .nth(1)
        .expect("ARCHITECTURE.md has its table of invariants")
        .split("\n## ")
        .next()
        .unwrap_or_default();
    let mut cited = Vec::new();
    for row in table.lines().filter(|l| l.starts_with('|')).skip(2) {
        let guarded_by = row.trim_end_matches('|').rsplit('|').next().unwrap_or("");
        for (i, quoted) in guarded_by.split('`').enumerate() {
            let is_name = !quoted.is_empty()
                && quoted
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                && quoted.matches('_').count() >= 2;
            if i % 2 == 1 && is_name {
                cited.push(quoted.to_owned());
            }
        }
    }
    cited
}

#[test]
fn every_test_architecture_md_cites_is_a_function_in_the_tree() {
    let architecture = std::fs::read_to_string(repo().join("ARCHITECTURE.md")).unwrap();
    let cited = cited_tests(&architecture);
    assert!(cited.len() > 50, "too few tests cited: {cited:?}");
    let functions = functions();
    let missing: Vec<_> = cited.iter().filter(|t| !functions.contains(*t)).collect();
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md cites tests that do not exist: {missing:?}"
    );
}

/// Which of a crate's top-level modules each module imports (`use crate::x`
/// or `crate::x::` anywhere in its files).
fn module_imports(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut imports: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let relative = file.strip_prefix(src).unwrap();
        let module = relative
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        if module == "lib" || module == "main" || module == "tests" {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let uses = imports.entry(module.clone()).or_default();
        for piece in text.split("crate::").skip(1) {
            let target: String = piece
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if target != module && !target.is_empty() {
                uses.insert(target);
            }
        }
    }
    imports
}

/// A cycle in `graph`, if there is one.
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|n| n == node) {
            let mut found = path[start..].to_vec();
            found.push(node.to_owned());
            return Some(found);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(found) = visit(next, graph, path, done) {
                return Some(found);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn no_two_modules_of_the_service_import_each_other() {
    for src in [
        "crates/service/src",
        "services/rules/src",
        "crates/eventlog/src",
    ] {
        let imports = module_imports(&repo().join(src));
        assert!(imports.len() > 3, "{src}: {imports:?}");
        if let Some(found) = cycle(&imports) {
            panic!("{src}: modules import each other: {}", found.join(" -> "));
        }
    }
}

#[test]
fn a_cycle_is_found_and_a_tree_is_not() {
    let graph = |edges: &[(&str, &str)]| {
        let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (a, b) in edges {
            g.entry((*a).to_owned())
                .or_default()
                .insert((*b).to_owned());
        }
        g
    };
    assert_eq!(
        cycle(&graph(&[("store", "replay"), ("replay", "store")])),
        Some(vec!["replay".into(), "store".into(), "replay".into()])
    );
    assert_eq!(cycle(&graph(&[("a", "b"), ("b", "c"), ("a", "c")])), None);
    let architecture = "## Invariants and the tests that guard them\n\n| a | b | c |\n| --- | --- | --- |\n| x | `Store::open` | `a_test_name`, `another_test_one` (unit) |\n\n## Next\n| `not_this_one` |";
    assert_eq!(
        cited_tests(architecture),
        ["a_test_name", "another_test_one"]
    );
}
