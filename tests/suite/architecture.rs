//! The shape of the tree, checked: no function in `src/` longer than 150
//! lines (at most three over 100), and no import circle between files.
//!
//! Both rules are read off the source with `syn`, so they hold for every
//! change rather than for the one that last looked. A file "imports" another
//! when it names anything defined there — through `use`, a full path, a
//! `super::` path or a child module — with re-exports followed to the file
//! that defines the name. Code under `#[cfg(test)]` is left out of the import
//! graph: a unit test may reach into its parent.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use syn::visit::Visit;

const LONGEST: usize = 150;
const LONG: usize = 100;
const AT_MOST_LONG: usize = 3;

/// One source file: its module path (`["proxy", "h1"]` for
/// `src/proxy/h1/mod.rs`) and its parsed syntax.
struct Source {
    file: String,
    module: Vec<String>,
    syntax: syn::File,
}

fn sources() -> Vec<Source> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&root, &mut files);
    files.sort();
    let mut out = Vec::new();
    for path in files {
        let rel = path.strip_prefix(&root).unwrap_or(&path);
        let rel_text = rel.to_string_lossy().replace('\\', "/");
        if rel_text == "main.rs" {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{rel_text}: {e}"));
        let syntax = syn::parse_file(&text).unwrap_or_else(|e| panic!("{rel_text}: {e}"));
        let mut module: Vec<String> = rel_text
            .trim_end_matches(".rs")
            .split('/')
            .map(str::to_owned)
            .collect();
        if module.last().is_some_and(|m| m == "mod" || m == "lib") {
            module.pop();
        }
        out.push(Source {
            file: format!("src/{rel_text}"),
            module,
            syntax,
        });
    }
    out
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            walk(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn is_cfg_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && a.parse_args::<syn::Meta>()
                .is_ok_and(|m| m.path().is_ident("test"))
    })
}

// ---------------------------------------------------------------- lengths

struct Lengths<'a> {
    file: &'a str,
    found: Vec<(usize, String)>,
}

impl Lengths<'_> {
    fn record(&mut self, name: &syn::Ident, start: proc_macro2::Span, end: proc_macro2::Span) {
        let lines = end.end().line + 1 - start.start().line;
        let at = format!("{}:{} {}", self.file, start.start().line, name);
        self.found.push((lines, at));
    }
}

impl<'ast> Visit<'ast> for Lengths<'_> {
    fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
        self.record(
            &f.sig.ident,
            f.sig.fn_token.span,
            f.block.brace_token.span.close(),
        );
        syn::visit::visit_item_fn(self, f);
    }
    fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
        self.record(
            &f.sig.ident,
            f.sig.fn_token.span,
            f.block.brace_token.span.close(),
        );
        syn::visit::visit_impl_item_fn(self, f);
    }
    fn visit_trait_item_fn(&mut self, f: &'ast syn::TraitItemFn) {
        if let Some(block) = &f.default {
            self.record(
                &f.sig.ident,
                f.sig.fn_token.span,
                block.brace_token.span.close(),
            );
        }
        syn::visit::visit_trait_item_fn(self, f);
    }
}

#[test]
fn no_function_is_over_150_lines_and_at_most_three_over_100() {
    let mut all = Vec::new();
    for s in sources() {
        let mut v = Lengths {
            file: &s.file,
            found: Vec::new(),
        };
        v.visit_file(&s.syntax);
        all.extend(v.found);
    }
    all.sort_by_key(|a| std::cmp::Reverse(a.0));
    let too_long: Vec<_> = all.iter().filter(|(n, _)| *n > LONGEST).collect();
    let long: Vec<_> = all.iter().filter(|(n, _)| *n > LONG).collect();
    let show = |v: &[&(usize, String)]| {
        v.iter()
            .map(|(n, at)| format!("  {n:>4} lines  {at}\n"))
            .collect::<String>()
    };
    assert!(
        too_long.is_empty(),
        "functions over {LONGEST} lines:\n{}",
        show(&too_long)
    );
    assert!(
        long.len() <= AT_MOST_LONG,
        "{} functions over {LONG} lines (at most {AT_MOST_LONG}):\n{}",
        long.len(),
        show(&long)
    );
}

// ---------------------------------------------------------------- imports

/// Every path a file names, made absolute where it can be (`crate::`,
/// `super::`, `self::`, a child module), with the module it was named from.
struct Paths<'a> {
    /// The module the code being read is in: the file's, then any inline
    /// `mod` inside it.
    module: Vec<String>,
    children: &'a BTreeSet<String>,
    found: Vec<Vec<String>>,
    reexports: Vec<(String, Vec<String>)>,
}

impl Paths<'_> {
    fn absolute(&self, segs: &[String]) -> Option<Vec<String>> {
        let first = segs.first()?;
        let mut base: Vec<String> = match first.as_str() {
            "crate" => Vec::new(),
            "self" => self.module.clone(),
            "super" => {
                let mut m = self.module.clone();
                let mut rest = segs;
                while rest.first().is_some_and(|s| s == "super") {
                    m.pop();
                    rest = &rest[1..];
                }
                m.extend(rest.iter().cloned());
                return Some(m);
            }
            name if self.children.contains(name) => {
                let mut m = self.module.clone();
                m.push(name.to_owned());
                m.extend(segs[1..].iter().cloned());
                return Some(m);
            }
            _ => return None,
        };
        base.extend(segs[1..].iter().cloned());
        Some(base)
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree, public: bool) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree, public);
                prefix.pop();
            }
            syn::UseTree::Name(n) => self.used(prefix, &n.ident.to_string(), None, public),
            syn::UseTree::Rename(r) => self.used(
                prefix,
                &r.ident.to_string(),
                Some(r.rename.to_string()),
                public,
            ),
            syn::UseTree::Glob(_) => {
                if let Some(abs) = self.absolute(prefix) {
                    self.found.push(abs);
                }
            }
            syn::UseTree::Group(g) => {
                for t in &g.items {
                    self.use_tree(prefix, t, public);
                }
            }
        }
    }

    fn used(&mut self, prefix: &[String], name: &str, rename: Option<String>, public: bool) {
        let mut segs = prefix.to_vec();
        if name != "self" {
            segs.push(name.to_owned());
        }
        if let Some(abs) = self.absolute(&segs) {
            if public {
                let alias = rename.unwrap_or_else(|| segs.last().cloned().unwrap_or_default());
                self.reexports.push((alias, abs.clone()));
            }
            self.found.push(abs);
        }
    }
}

impl<'ast> Visit<'ast> for Paths<'_> {
    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        if is_cfg_test(&u.attrs) {
            return;
        }
        let public = !matches!(u.vis, syn::Visibility::Inherited);
        self.use_tree(&mut Vec::new(), &u.tree, public);
    }
    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        if !is_cfg_test(&m.attrs) {
            self.module.push(m.ident.to_string());
            syn::visit::visit_item_mod(self, m);
            self.module.pop();
        }
    }
    fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
        if !is_cfg_test(&f.attrs) {
            syn::visit::visit_item_fn(self, f);
        }
    }
    fn visit_item_impl(&mut self, i: &'ast syn::ItemImpl) {
        if !is_cfg_test(&i.attrs) {
            syn::visit::visit_item_impl(self, i);
        }
    }
    fn visit_path(&mut self, p: &'ast syn::Path) {
        let segs: Vec<String> = p.segments.iter().map(|s| s.ident.to_string()).collect();
        if segs.len() > 1
            && let Some(abs) = self.absolute(&segs)
        {
            self.found.push(abs);
        }
        syn::visit::visit_path(self, p);
    }
}

/// The file graph: which file names what from which other file.
fn import_graph() -> BTreeMap<String, BTreeSet<String>> {
    let sources = sources();
    let by_module: BTreeMap<Vec<String>, &Source> =
        sources.iter().map(|s| (s.module.clone(), s)).collect();
    let children = |m: &[String]| -> BTreeSet<String> {
        by_module
            .keys()
            .filter(|k| k.len() == m.len() + 1 && k.starts_with(m))
            .filter_map(|k| k.last().cloned())
            .collect()
    };

    let mut named: BTreeMap<&str, Vec<Vec<String>>> = BTreeMap::new();
    let mut reexports: BTreeMap<Vec<String>, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    for s in &sources {
        let kids = children(&s.module);
        let mut v = Paths {
            module: s.module.clone(),
            children: &kids,
            found: Vec::new(),
            reexports: Vec::new(),
        };
        v.visit_file(&s.syntax);
        named.insert(&s.file, v.found);
        reexports.insert(s.module.clone(), v.reexports.into_iter().collect());
    }

    // The file that defines what `path` names: the longest module prefix,
    // then through that module's re-exports while they lead elsewhere.
    let resolve = |path: &[String]| -> Option<String> {
        let mut path = path.to_vec();
        for _ in 0..8 {
            let n = (0..=path.len())
                .rev()
                .find(|&n| by_module.contains_key(&path[..n]))?;
            let module = path[..n].to_vec();
            let next = path
                .get(n)
                .and_then(|name| reexports.get(&module)?.get(name));
            match next {
                Some(target) if target.as_slice() != path.as_slice() => {
                    let mut p = target.clone();
                    p.extend(path[n + 1..].iter().cloned());
                    path = p;
                }
                _ => return Some(by_module[&module].file.clone()),
            }
        }
        None
    };

    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (file, paths) in named {
        let edges = graph.entry(file.to_owned()).or_default();
        for p in paths {
            if let Some(target) = resolve(&p)
                && target != file
            {
                edges.insert(target);
            }
        }
    }
    graph
}

/// Strongly connected groups of more than one file (Tarjan).
fn circles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct T<'g> {
        graph: &'g BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on: BTreeSet<&'g str>,
        out: Vec<Vec<String>>,
    }
    impl<'g> T<'g> {
        fn visit(&mut self, v: &'g str) {
            let i = self.index.len();
            self.index.insert(v, i);
            self.low.insert(v, i);
            self.stack.push(v);
            self.on.insert(v);
            for w in self.graph.get(v).into_iter().flatten() {
                if !self.index.contains_key(w.as_str()) {
                    self.visit(w);
                    let lw = self.low[w.as_str()];
                    let lv = self.low[v];
                    self.low.insert(v, lv.min(lw));
                } else if self.on.contains(w.as_str()) {
                    let iw = self.index[w.as_str()];
                    let lv = self.low[v];
                    self.low.insert(v, lv.min(iw));
                }
            }
            if self.low[v] == self.index[v] {
                let mut group = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on.remove(w);
                    group.push(w.to_owned());
                    if w == v {
                        break;
                    }
                }
                if group.len() > 1 {
                    group.sort();
                    self.out.push(group);
                }
            }
        }
    }
    let mut t = T {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !t.index.contains_key(v.as_str()) {
            t.visit(v);
        }
    }
    t.out
}

#[test]
fn no_import_circle_between_files() {
    let graph = import_graph();
    let found = circles(&graph);
    let show: String = found
        .iter()
        .map(|g| {
            let inner: BTreeSet<&String> = g.iter().collect();
            let edges: Vec<String> = g
                .iter()
                .flat_map(|f| {
                    graph[f]
                        .iter()
                        .filter(|t| inner.contains(t))
                        .map(move |t| format!("{f} -> {t}"))
                })
                .collect();
            format!("  {}\n    {}\n", g.join(", "), edges.join("\n    "))
        })
        .collect();
    assert!(found.is_empty(), "{} import circles:\n{show}", found.len());
}

#[test]
fn the_graph_sees_known_edges() {
    // The checker must be able to fail: it sees the imports that exist.
    let graph = import_graph();
    let proxy_mod = &graph["src/proxy/mod.rs"];
    assert!(
        proxy_mod.iter().any(|f| f.starts_with("src/upstream/")),
        "{proxy_mod:?}"
    );
    assert!(
        graph["src/cli.rs"].contains("src/config/mod.rs"),
        "{:?}",
        graph["src/cli.rs"]
    );
}

/// The rooms of the crate and what each may import (ARCHITECTURE.md says
/// why). A room is a top-level module; `lib` is the crate root.
const MAY_IMPORT: &[(&str, &[&str])] = &[
    ("clock", &[]),
    ("config", &[]),
    ("state", &[]),
    ("logging", &["config"]),
    ("tls", &["config"]),
    ("upstream", &["clock", "config", "logging", "state", "tls"]),
    ("health", &["clock", "config", "tls", "upstream"]),
    ("cluster", &["clock", "config", "state", "tls", "upstream"]),
    (
        "discovery",
        &["clock", "config", "logging", "state", "upstream"],
    ),
    ("proxy", &["clock", "config", "health", "tls", "upstream"]),
    (
        "admin",
        &[
            "clock",
            "cluster",
            "config",
            "discovery",
            "health",
            "proxy",
            "reload",
            "state",
            "tls",
            "upstream",
        ],
    ),
    (
        "reload",
        &[
            "config",
            "discovery",
            "logging",
            "proxy",
            "state",
            "tls",
            "upstream",
        ],
    ),
    ("import", &["config"]),
    ("ctl", &["admin", "config"]),
    ("demo", &["config"]),
    (
        "cli",
        &[
            "admin",
            "clock",
            "cluster",
            "config",
            "ctl",
            "demo",
            "discovery",
            "health",
            "import",
            "logging",
            "proxy",
            "reload",
            "state",
            "tls",
            "upstream",
        ],
    ),
];

fn room(file: &str) -> &str {
    let rest = file.trim_start_matches("src/");
    let first = rest.split('/').next().unwrap_or(rest);
    first.trim_end_matches(".rs")
}

#[test]
fn each_room_imports_only_what_architecture_md_allows() {
    let graph = import_graph();
    let allowed: BTreeMap<&str, &[&str]> = MAY_IMPORT.iter().copied().collect();
    let mut wrong = BTreeSet::new();
    for (file, targets) in &graph {
        let from = room(file);
        if from == "lib" {
            continue;
        }
        let Some(may) = allowed.get(from) else {
            wrong.insert(format!("{file}: room `{from}` is not in MAY_IMPORT"));
            continue;
        };
        for t in targets {
            let to = room(t);
            if to != from && to != "lib" && !may.contains(&to) {
                wrong.insert(format!("{file} -> {t} (`{from}` may not import `{to}`)"));
            }
        }
    }
    let show: Vec<String> = wrong.into_iter().collect();
    assert!(
        show.is_empty(),
        "imports across rooms that are not allowed:\n  {}",
        show.join("\n  ")
    );
}
