//! No import circles: no module of `src/` imports a module that, directly or through
//! others, imports it back. Reads the sources (every `use` and every `crate::` or
//! `super::` path outside `#[cfg(test)]` code) and fails naming each circle.
//!
//! A module and the modules it contains count as related, not as an import (a parent
//! declaring and re-exporting its children, children using their parent's types).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Module = Vec<String>;

/// Every module of the crate, by path (`["spool", "lease"]`), with its source.
fn modules(src: &Path) -> BTreeMap<Module, String> {
    let mut out = BTreeMap::new();
    let mut pending = vec![src.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            if path.extension().is_none_or(|ext| ext != "rs") {
                continue;
            }
            let relative = path
                .strip_prefix(src)
                .expect("under src")
                .with_extension("");
            let mut parts: Module = relative
                .iter()
                .map(|part| part.to_string_lossy().into_owned())
                .collect();
            if parts == ["lib"] || parts == ["main"] {
                parts.clear();
            } else if parts.last().is_some_and(|last| last == "mod") {
                parts.pop();
            }
            let text = std::fs::read_to_string(&path).expect("read source");
            out.insert(parts, text);
        }
    }
    out
}

/// The source without comments and without `#[cfg(test)]` items (test code may use
/// anything).
fn production_code(text: &str) -> String {
    let mut kept = String::new();
    let mut skip_depth: Option<usize> = None;
    let mut depth = 0usize;
    let mut test_attribute = false;
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let opens = code.matches('{').count();
        let closes = code.matches('}').count();
        if skip_depth.is_none() && code.trim_start().starts_with("#[cfg(test)]") {
            test_attribute = true;
            continue;
        }
        if test_attribute && skip_depth.is_none() {
            test_attribute = false;
            if opens > closes {
                skip_depth = Some(depth);
            }
            depth = depth + opens - closes.min(depth + opens);
            continue;
        }
        depth = (depth + opens).saturating_sub(closes);
        match skip_depth {
            Some(start) if depth <= start => skip_depth = None,
            Some(_) => {}
            None => {
                kept.push_str(code);
                kept.push('\n');
            }
        }
    }
    kept
}

/// Expands `a::{b, c::{d, e}}` into `a::b`, `a::c::d`, `a::c::e`.
fn expand(tree: &str) -> Vec<String> {
    let tree: String = tree.chars().filter(|c| !c.is_whitespace()).collect();
    let Some(open) = tree.find("::{") else {
        return vec![tree];
    };
    let prefix = &tree[..open];
    let body = tree[open + 3..]
        .strip_suffix('}')
        .unwrap_or(&tree[open + 3..]);
    let mut parts = Vec::new();
    let (mut depth, mut current) = (0, String::new());
    for c in body.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    parts.push(current);
    parts
        .into_iter()
        .filter(|part| !part.is_empty())
        .flat_map(|part| expand(&part))
        .map(|item| match item.as_str() {
            "self" => prefix.to_owned(),
            _ => format!("{prefix}::{item}"),
        })
        .collect()
}

/// Every path the code names that starts at `crate` or `super`.
fn paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    for statement in code.split(';') {
        if let Some(at) = statement.find("use ") {
            let before = &statement[..at];
            if before.trim().is_empty()
                || before.trim_end().ends_with("pub")
                || before.contains(')')
            {
                out.extend(expand(statement[at + 4..].trim()));
            }
        }
    }
    let bytes = code.as_bytes();
    for start in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(found) = code[from..].find(start) {
            let at = from + found;
            from = at + start.len();
            if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_') {
                continue;
            }
            let end = code[at..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .map_or(code.len(), |len| at + len);
            out.push(code[at..end].trim_end_matches(':').to_owned());
        }
    }
    out
}

/// The module a path lands in: the longest prefix that is a module.
fn resolve(from: &Module, path: &str, known: &BTreeSet<Module>) -> Option<Module> {
    let mut segments = path
        .split("::")
        .map(|s| s.split(" as ").next().unwrap_or(s));
    let mut base: Module = match segments.next()? {
        "crate" => Vec::new(),
        "super" => from[..from.len().saturating_sub(1)].to_vec(),
        _ => return None,
    };
    let rest: Vec<&str> = segments.collect();
    let mut rest = rest.as_slice();
    while let Some(("super", tail)) = rest.split_first().map(|(h, t)| (*h, t)) {
        base.pop();
        rest = tail;
    }
    let mut full = base;
    full.extend(rest.iter().map(|s| s.to_string()));
    (1..=full.len())
        .rev()
        .map(|len| full[..len].to_vec())
        .find(|candidate| known.contains(candidate))
}

fn related(a: &Module, b: &Module) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

fn circles(graph: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<Vec<Module>> {
    // Tarjan's strongly connected components.
    struct State<'a> {
        graph: &'a BTreeMap<Module, BTreeSet<Module>>,
        index: BTreeMap<&'a Module, usize>,
        low: BTreeMap<&'a Module, usize>,
        stack: Vec<&'a Module>,
        on_stack: BTreeSet<&'a Module>,
        found: Vec<Vec<Module>>,
    }
    fn visit<'a>(state: &mut State<'a>, node: &'a Module) {
        let next = state.index.len();
        state.index.insert(node, next);
        state.low.insert(node, next);
        state.stack.push(node);
        state.on_stack.insert(node);
        for target in &state.graph[node] {
            if !state.index.contains_key(target) {
                visit(state, target);
                let low = state.low[target].min(state.low[node]);
                state.low.insert(node, low);
            } else if state.on_stack.contains(target) {
                let low = state.index[target].min(state.low[node]);
                state.low.insert(node, low);
            }
        }
        if state.low[node] == state.index[node] {
            let mut component = Vec::new();
            while let Some(member) = state.stack.pop() {
                state.on_stack.remove(member);
                component.push(member.clone());
                if member == node {
                    break;
                }
            }
            if component.len() > 1 {
                state.found.push(component);
            }
        }
    }
    let mut state = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for node in graph.keys() {
        if !state.index.contains_key(node) {
            visit(&mut state, node);
        }
    }
    state.found
}

fn graph_of(modules: &BTreeMap<Module, String>) -> BTreeMap<Module, BTreeSet<Module>> {
    let known: BTreeSet<Module> = modules.keys().cloned().collect();
    modules
        .iter()
        .map(|(module, text)| {
            let targets = paths(&production_code(text))
                .iter()
                .filter_map(|path| resolve(module, path, &known))
                .filter(|target| !target.is_empty() && !related(module, target))
                .collect();
            (module.clone(), targets)
        })
        .collect()
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let modules = modules(&src);
    assert!(modules.len() > 20, "found {} modules", modules.len());
    let graph = graph_of(&modules);
    let found = circles(&graph);
    let described: Vec<String> = found
        .iter()
        .map(|circle| {
            let members: BTreeSet<&Module> = circle.iter().collect();
            let mut edges = Vec::new();
            for from in circle {
                for to in &graph[from] {
                    if members.contains(to) {
                        edges.push(format!("{} -> {}", from.join("::"), to.join("::")));
                    }
                }
            }
            edges.join(", ")
        })
        .collect();
    assert!(found.is_empty(), "import circles: {described:#?}");
}

#[test]
fn the_checker_sees_a_circle_and_the_use_forms() {
    assert_eq!(
        expand("crate::a::{b, c::{d, e}, self}"),
        [
            "crate::a::b",
            "crate::a::c::d",
            "crate::a::c::e",
            "crate::a"
        ]
    );
    let mut modules = BTreeMap::new();
    modules.insert(vec!["a".to_owned()], "use crate::b::Thing;\n".to_owned());
    modules.insert(
        vec!["b".to_owned()],
        "fn f() { crate::a::g(); }\n#[cfg(test)]\nmod tests {\n    use crate::c;\n}\n".to_owned(),
    );
    modules.insert(vec!["c".to_owned()], "use super::b;\n".to_owned());
    modules.insert(
        vec!["c".to_owned(), "d".to_owned()],
        "use super::X;\n".to_owned(),
    );
    let graph = graph_of(&modules);
    let found = circles(&graph);
    assert_eq!(found.len(), 1, "{graph:?}");
    assert_eq!(
        found[0].len(),
        2,
        "a and b; c only in test code, c::d is c's child"
    );
}
