//! The crate's module layering (issue 17): the error type is a leaf (it imports only the
//! leaf modules it carries types of), and no two modules import each other, directly or
//! through others. Read from the source: every `crate::module` a module names outside
//! comments and its unit tests, with names the crate root re-exports resolved to the module
//! that defines them. Test models (`model.rs`) and the fuzz re-exports (`fuzz.rs`) are not
//! the library and are left out.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The modules `error.rs` may import: leaves themselves.
const ERROR_MAY_IMPORT: &[&str] = &["credentials", "seals"];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let name = path.file_name().unwrap();
            if name != "model.rs" && name != "fuzz.rs" {
                out.push(path);
            }
        }
    }
}

/// The top-level module a source file belongs to (`lib` for the crate root).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_str()
        .unwrap();
    first.trim_end_matches(".rs").to_owned()
}

/// The code of a file without comments and without its `#[cfg(test)] mod tests`.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn ident_at(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// Every first path segment after `crate::`, including each of a `crate::{a, b::c}` group.
fn crate_refs(code: &str) -> BTreeSet<String> {
    let mut refs = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut start = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if c.is_whitespace() => {}
                    _ if start && depth == 0 => {
                        refs.insert(ident_at(&group[j..]).to_owned());
                        start = false;
                    }
                    _ => {}
                }
            }
        } else {
            refs.insert(ident_at(rest).to_owned());
        }
    }
    refs
}

/// Names the crate root re-exports (`pub use module::{A, B};`), mapped to their module.
fn reexports(lib: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for stmt in code(lib).split(';') {
        let Some(rest) = stmt.trim().strip_prefix("pub use ") else {
            continue;
        };
        let Some((module, names)) = rest.split_once("::") else {
            continue;
        };
        for name in names.split(|c: char| !(c.is_alphanumeric() || c == '_')) {
            if !name.is_empty() {
                map.insert(name.to_owned(), module.to_owned());
            }
        }
    }
    map
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(&src, f)).collect();
    let root = reexports(&fs::read_to_string(src.join("lib.rs")).unwrap());
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let from = module_of(&src, file);
        if from == "lib" {
            continue; // the crate root re-exports everything: it is the top, not a layer
        }
        for r in crate_refs(&code(&fs::read_to_string(file).unwrap())) {
            let to = root.get(&r).cloned().unwrap_or(r);
            if to != from && modules.contains(&to) {
                edges.entry(from.clone()).or_default().insert(to);
            }
        }
    }
    edges
}

/// A cycle through `start`, if there is one.
fn cycle_through(edges: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    fn walk(
        edges: &BTreeMap<String, BTreeSet<String>>,
        start: &str,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        let here = path.last().unwrap().clone();
        for next in edges.get(&here).into_iter().flatten() {
            if next == start {
                path.push(next.clone());
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if walk(edges, start, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![start.to_owned()];
    walk(edges, start, &mut path, &mut BTreeSet::new()).then_some(path)
}

#[test]
fn the_error_type_is_a_leaf() {
    let edges = graph();
    let imports = edges.get("error").cloned().unwrap_or_default();
    for module in &imports {
        assert!(
            ERROR_MAY_IMPORT.contains(&module.as_str()),
            "error.rs imports crate::{module}: the error type must stay a leaf"
        );
        assert!(
            edges.get(module).is_none_or(BTreeSet::is_empty),
            "error.rs imports crate::{module}, which imports {:?}: not a leaf",
            edges[module]
        );
    }
}

#[test]
fn no_module_imports_one_that_imports_it() {
    let edges = graph();
    assert!(edges.len() > 10, "the graph was read: {edges:?}");
    for module in edges.keys() {
        if let Some(cycle) = cycle_through(&edges, module) {
            panic!("import cycle: {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn the_reader_finds_a_cycle_when_there_is_one() {
    // The checks above can fail: a made-up graph with a cycle is caught.
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    edges.entry("a".into()).or_default().insert("b".into());
    edges.entry("b".into()).or_default().insert("a".into());
    assert_eq!(cycle_through(&edges, "a").unwrap(), ["a", "b", "a"]);
    let refs = crate_refs("use crate::{error::Error, seals::{Seals}};\nlet x = crate::sys::f();");
    assert_eq!(
        refs,
        BTreeSet::from(["error".into(), "seals".into(), "sys".into()])
    );
}
