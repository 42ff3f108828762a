//! The shape ARCHITECTURE.md promises, checked on the source itself:
//! - within every crate, modules form a tree a reader can walk top-down: no two sibling
//!   modules use each other, directly or around a circle (a module may use its own
//!   ancestors' and descendants' items; `use`s and inline `crate::`/`super::` paths count);
//! - no source file outside tests is over 1,000 lines.
//!
//! A reference between two modules counts as an edge between the two siblings, children
//! of their lowest common ancestor, that contain them: `crate::a::x` used from `b::y` is
//! the edge a <- b among the root's children. Test code (`#[cfg(test)] mod` onwards, and
//! files that are test modules) is left out: tests may reach anywhere.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const CRATES: &[&str] = &[
    "vmm",
    "arch",
    "devices",
    "block",
    "net",
    "monitor",
    "migration",
];
const MAX_LINES: usize = 1000;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A source file of a crate and the module path it defines.
struct ModFile {
    path: PathBuf,
    module: Vec<String>,
    is_test: bool,
}

fn walk(dir: &Path, rel: &mut Vec<String>, out: &mut Vec<ModFile>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    entries.sort();
    for p in entries {
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if p.is_dir() {
            rel.push(name);
            walk(&p, rel, out);
            rel.pop();
        } else if let Some(stem) = name.strip_suffix(".rs") {
            let mut module = rel.clone();
            // foo.rs and foo/mod.rs are module foo; the crate root is lib.rs or main.rs.
            let is_root = rel.is_empty() && matches!(stem, "lib" | "main");
            if stem != "mod" && !is_root {
                module.push(stem.to_string());
            }
            let is_test = module.iter().any(|s| s == "tests" || s.ends_with("_tests"));
            out.push(ModFile {
                path: p,
                module,
                is_test,
            });
        }
    }
}

/// The code of a file without comments and without its test module.
fn code(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(l) = lines.next() {
        let t = l.trim();
        if t == "#[cfg(test)]" {
            if let Some(next) = lines.peek() {
                let n = next.trim();
                if n.starts_with("mod ") || n.starts_with("pub mod ") {
                    // An inline test module runs to the end of the file by convention;
                    // a declared one (`mod tests;`) is one line.
                    if n.ends_with(';') {
                        lines.next();
                        continue;
                    }
                    break;
                }
            }
        }
        let l = match l.find("//") {
            Some(i) if !l[..i].contains('"') => &l[..i],
            _ => l,
        };
        out.push_str(l);
        out.push('\n');
    }
    out
}

/// Expands a `use` tree (text after `use `, up to `;`) into full paths.
fn expand_use(prefix: &[String], s: &str, out: &mut Vec<Vec<String>>) {
    let s = s.trim();
    if s.is_empty() {
        return;
    }
    if let Some(inner) = s.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
        for part in split_top(inner) {
            expand_use(prefix, part, out);
        }
        return;
    }
    match s.find("::") {
        Some(i) => {
            let mut p = prefix.to_vec();
            p.push(s[..i].trim().to_string());
            expand_use(&p, &s[i + 2..], out);
        }
        None => {
            let mut p = prefix.to_vec();
            let word = s.split_whitespace().next().unwrap_or("");
            if word != "*" && word != "self" {
                p.push(word.to_string());
            }
            out.push(p);
        }
    }
}

/// Splits on commas not inside braces.
fn split_top(s: &str) -> Vec<&str> {
    let (mut depth, mut start, mut parts) = (0, 0, Vec::new());
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

/// Every path starting with crate/super/self that the code names.
fn referenced_paths(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    // `use` statements, braces and all.
    let mut rest = code;
    while let Some(i) = rest.find("use ") {
        let before = rest[..i].chars().last();
        rest = &rest[i + 4..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let Some(end) = rest.find(';') else { break };
        let tree: String = rest[..end].split_whitespace().collect::<Vec<_>>().join(" ");
        let first = tree.split("::").next().unwrap_or("");
        if matches!(first, "crate" | "super" | "self") {
            expand_use(&[], &tree.replace(" ", ""), &mut out);
        }
    }
    // Inline paths: crate::a::b, super::x.
    let bytes = code.as_bytes();
    for kw in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(i) = code[from..].find(kw) {
            let at = from + i;
            from = at + kw.len();
            if at > 0
                && (bytes[at - 1].is_ascii_alphanumeric()
                    || bytes[at - 1] == b'_'
                    || bytes[at - 1] == b':')
            {
                continue;
            }
            let tail: String = code[at..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            let p: Vec<String> = tail
                .split("::")
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            out.push(p);
        }
    }
    out
}

/// Resolves a crate/super/self-relative path used in `module` to an absolute one.
fn absolute(module: &[String], p: &[String]) -> Option<Vec<String>> {
    // The module a file's `self` is: for foo.rs or foo/mod.rs both `module`.
    let mut base: Vec<String>;
    let mut rest = p;
    match p.first().map(String::as_str) {
        Some("crate") => {
            base = Vec::new();
            rest = &p[1..];
        }
        Some("self") => {
            base = module.to_vec();
            rest = &p[1..];
        }
        Some("super") => {
            base = module.to_vec();
            while rest.first().map(String::as_str) == Some("super") {
                base.pop()?;
                rest = &rest[1..];
            }
        }
        _ => return None,
    }
    base.extend(rest.iter().cloned());
    Some(base)
}

fn longest_module(modules: &BTreeSet<Vec<String>>, p: &[String]) -> Vec<String> {
    (0..=p.len())
        .rev()
        .map(|n| p[..n].to_vec())
        .find(|m| modules.contains(m))
        .unwrap_or_default()
}

type Edges = BTreeMap<Vec<String>, BTreeMap<String, BTreeMap<String, String>>>;

fn sibling_edges(krate: &str) -> Edges {
    let src = workspace().join(krate).join("src");
    let mut files = Vec::new();
    walk(&src, &mut Vec::new(), &mut files);
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| f.module.clone()).collect();
    // parent -> from -> to -> an example (file: path)
    let mut edges: Edges = BTreeMap::new();
    for f in files.iter().filter(|f| !f.is_test) {
        let text = std::fs::read_to_string(&f.path).unwrap();
        for p in referenced_paths(&code(&text)) {
            let Some(abs) = absolute(&f.module, &p) else {
                continue;
            };
            let target = longest_module(&modules, &abs);
            let common = f
                .module
                .iter()
                .zip(&target)
                .take_while(|(a, b)| a == b)
                .count();
            if common == f.module.len() || common == target.len() {
                continue; // an ancestor or a descendant
            }
            let parent = f.module[..common].to_vec();
            let example = format!(
                "{} names {}",
                f.path
                    .strip_prefix(workspace())
                    .unwrap_or(&f.path)
                    .display(),
                p.join("::")
            );
            edges
                .entry(parent)
                .or_default()
                .entry(f.module[common].clone())
                .or_default()
                .entry(target[common].clone())
                .or_insert(example);
        }
    }
    edges
}

/// Every circle among one parent's children, as paths of names.
fn circles(graph: &BTreeMap<String, BTreeMap<String, String>>) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    let nodes: Vec<&String> = graph.keys().collect();
    for start in nodes {
        // The shortest path from `start` back to itself, by breadth-first search.
        let mut prev: BTreeMap<&String, &String> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([start]);
        let mut done = false;
        while let Some(n) = queue.pop_front() {
            for next in graph.get(n).into_iter().flat_map(|m| m.keys()) {
                if next == start {
                    let mut cyc = vec![n.clone()];
                    let mut at = n;
                    while at != start {
                        at = prev[at];
                        cyc.push(at.clone());
                    }
                    cyc.reverse();
                    found.push(cyc);
                    done = true;
                    break;
                }
                if !prev.contains_key(next) && next != start {
                    prev.insert(next, n);
                    queue.push_back(next);
                }
            }
            if done {
                break;
            }
        }
    }
    // One report per circle, whichever module it was found from.
    let mut seen = BTreeSet::new();
    found.retain(|c| {
        let mut k = c.clone();
        k.sort();
        seen.insert(k)
    });
    found
}

#[test]
fn no_crate_has_an_import_circle_among_its_modules() {
    let mut report = Vec::new();
    for krate in CRATES {
        for (parent, graph) in sibling_edges(krate) {
            for cyc in circles(&graph) {
                let mut lines = vec![format!(
                    "{krate}::{}: {} -> {}",
                    parent.join("::"),
                    cyc.join(" -> "),
                    cyc[0]
                )];
                for (i, from) in cyc.iter().enumerate() {
                    let to = &cyc[(i + 1) % cyc.len()];
                    lines.push(format!("    {}", graph[from][to]));
                }
                report.push(lines.join("\n"));
            }
        }
    }
    assert!(
        report.is_empty(),
        "modules that use each other (move the shared piece down):\n{}",
        report.join("\n")
    );
}

#[test]
fn the_checker_sees_a_circle_and_a_tree() {
    let mut g: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    fn edge(g: &mut BTreeMap<String, BTreeMap<String, String>>, a: &str, b: &str) {
        g.entry(a.into())
            .or_default()
            .insert(b.into(), String::new());
    }
    edge(&mut g, "hmp", "commands");
    edge(&mut g, "commands", "registry");
    edge(&mut g, "registry", "schema");
    assert!(circles(&g).is_empty(), "a chain is a tree");
    edge(&mut g, "registry", "hmp");
    assert_eq!(circles(&g).len(), 1, "one circle of three");
    let mut paths = Vec::new();
    expand_use(&[], "crate::{a::{B,c::D},e::*,self}", &mut paths);
    assert_eq!(
        paths,
        [
            vec!["crate", "a", "B"],
            vec!["crate", "a", "c", "D"],
            vec!["crate", "e"],
            vec!["crate"]
        ]
    );
}

#[test]
fn no_source_file_outside_tests_is_over_1000_lines() {
    let mut big = Vec::new();
    for krate in CRATES {
        let mut files = Vec::new();
        walk(
            &workspace().join(krate).join("src"),
            &mut Vec::new(),
            &mut files,
        );
        for f in files.iter().filter(|f| !f.is_test) {
            let text = std::fs::read_to_string(&f.path).unwrap();
            let n = text.lines().count();
            if n > MAX_LINES {
                big.push(format!(
                    "{}: {n} lines",
                    f.path.strip_prefix(workspace()).unwrap().display()
                ));
            }
        }
    }
    assert!(
        big.is_empty(),
        "split these along their seams (tests in their own file):\n{}",
        big.join("\n")
    );
}
