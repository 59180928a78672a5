//! The top-level modules of the shell, the engine and the simulator use each other without a
//! circle, so each can be read (and tested) after the ones it uses: the order `ARCHITECTURE.md`
//! gives a newcomer.
//!
//! A module's uses are the `crate::name` paths in its files' code (comments and doc links are
//! not uses; `lib.rs` and `main.rs`, which only declare and wire, are left out).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module → the top-level modules it uses.
type Graph = BTreeMap<String, BTreeSet<String>>;

/// `line` without its comment (a `//` outside a string literal).
fn code_of(line: &str) -> &str {
    let bytes = line.as_bytes();
    let mut in_string = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if in_string => i += 1,
            // A character literal such as '"' (a lifetime has no closing quote).
            b'\'' if !in_string && bytes.get(i + 2) == Some(&b'\'') => i += 2,
            b'"' => in_string = !in_string,
            b'/' if !in_string && bytes.get(i + 1) == Some(&b'/') => return &line[..i],
            _ => {}
        }
        i += 1;
    }
    line
}

/// The top-level module names `code` uses through `crate::`.
fn uses(code: &str, into: &mut BTreeSet<String>) {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            for item in group.split('}').next().unwrap_or_default().split(',') {
                into.insert(ident(item.trim()));
            }
        } else {
            into.insert(ident(rest));
        }
    }
    into.remove("");
}

fn graph(src: &Path) -> Graph {
    let mut graph = Graph::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).unwrap();
            let first = rel.components().next().unwrap().as_os_str();
            let module = Path::new(first)
                .file_stem()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if module == "lib" || module == "main" {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let used = graph.entry(module.clone()).or_default();
            for line in text.lines() {
                uses(code_of(line), used);
            }
            used.remove(&module);
        }
    }
    graph
}

/// A circle of uses, if there is one, as the modules along it (the first repeated at the end).
fn find_circle(graph: &Graph) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        graph: &Graph,
        node: &str,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let from = path.iter().position(|n| n == node).unwrap();
                let mut circle = path[from..].to_vec();
                circle.push(node.to_owned());
                return Some(circle);
            }
            None => {}
        }
        marks.insert(node.to_owned(), Mark::Open);
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(circle) = visit(graph, next, marks, path) {
                return Some(circle);
            }
        }
        path.pop();
        marks.insert(node.to_owned(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    graph
        .keys()
        .find_map(|node| visit(graph, node, &mut marks, &mut Vec::new()))
}

fn check(crate_dir: &str) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(crate_dir)
        .join("src");
    let graph = graph(&src);
    assert!(graph.len() > 5, "{}: only {graph:?}", src.display());
    if let Some(circle) = find_circle(&graph) {
        panic!(
            "{}: modules use each other in a circle: {}",
            src.display(),
            circle.join(" → ")
        );
    }
}

#[test]
fn the_shells_modules_use_each_other_without_a_circle() {
    check(".");
}

#[test]
fn the_engines_modules_use_each_other_without_a_circle() {
    check("../engine");
}

#[test]
fn the_simulators_modules_use_each_other_without_a_circle() {
    check("../benches/sim");
}

#[test]
fn uses_are_read_from_code_and_a_circle_is_found() {
    let mut used = BTreeSet::new();
    for line in [
        "use crate::store::{Store, StoreError};",
        "use crate::{clock, config::Config};",
        "    let url = \"https://x//crate::not_a_use\"; crate::twiml::answer()",
        "/// A doc link to [`crate::bridge`] is not a use.",
        "x(); // nor is crate::metrics in a comment",
        "if b == b'\"' { crate::form::f() } // crate::egress",
    ] {
        uses(code_of(line), &mut used);
    }
    let want: BTreeSet<String> = ["store", "clock", "config", "twiml", "not_a_use", "form"]
        .map(String::from)
        .into();
    // A path inside a string literal is code text, and counted: only comments are skipped.
    assert_eq!(used, want);

    fn edge(graph: &mut Graph, a: &str, b: &str) {
        graph.entry(a.into()).or_default().insert(b.into());
    }
    let mut graph = Graph::new();
    edge(&mut graph, "routes", "state");
    edge(&mut graph, "state", "store");
    edge(&mut graph, "server", "routes");
    assert_eq!(find_circle(&graph), None);
    edge(&mut graph, "store", "routes");
    assert_eq!(
        find_circle(&graph).unwrap().join(" → "),
        "routes → state → store → routes"
    );
}
