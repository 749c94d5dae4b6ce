//! The layers, checked: every crate and module may use only those below it.
//!
//! The test reads every `.rs` file of each crate's `src/` and finds every path that names code
//! elsewhere: `crate::…`, `super::…` (resolved from where it stands, inline `mod` blocks
//! included), and the workspace's crate names (`callbridge_core::…`, …), in `use` lines, in
//! expressions and in doc links alike, with `{…}` groups opened. Each one must point down the
//! table below. A module that is not in the table fails too, so a new module has to be given its
//! place. `the_checker_catches_planted_upward_paths` shows that it can fail.
//!
//! Also checked: `callbridge-core` has no IO crate under it, and the binary built without its
//! `demo` feature carries no JSON Schema validator.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One crate: its name in paths, where its source is, the crates it may name, and its modules
/// from the bottom layer up. Modules in one layer must not use each other.
struct CrateLayers {
    name: &'static str,
    src: &'static str,
    may_use: &'static [&'static str],
    /// `None`: the crate's own modules are not ordered (only the crates it names are checked).
    layers: Option<&'static [&'static [&'static str]]>,
    /// Modules whose files are ordered too: (module, its files' layers from the bottom up). A
    /// file may always use its own module's `mod.rs` items (the module's shared namespace).
    inner: &'static [(&'static str, &'static [&'static [&'static str]])],
}

/// The workspace, from the bottom crate up.
const WORKSPACE: &[CrateLayers] = &[
    CrateLayers {
        name: "callbridge_core",
        src: "core/src",
        may_use: &[],
        layers: Some(&[&["wire"], &["twilio", "openai"], &["bridge"]]),
        inner: &[],
    },
    CrateLayers {
        name: "callbridge",
        src: "src",
        may_use: &["callbridge_core"],
        // config sits above store: it gathers the settings whose owners parse them (the store
        // its retention, cache and engine) and imports nothing that uses it.
        layers: Some(&[
            &["lifecycle", "limits"],
            &["metrics"],
            &["store"],
            &["config"],
            &["openai"],
            &["front"],
            &["runtime"],
        ]),
        inner: &[(
            "runtime",
            &[
                &["transport"],
                &["call_loop", "uring_stream"],
                &["connection"],
                &["epoll", "uring"],
            ],
        )],
    },
    CrateLayers {
        name: "callbridge_testkit",
        src: "testkit/src",
        may_use: &["callbridge_core", "callbridge"],
        layers: Some(&[&["schema"], &["mock", "sim"], &["demo"]]),
        inner: &[],
    },
    CrateLayers {
        name: "callbridge_cli",
        src: "cli/src",
        may_use: &["callbridge_core", "callbridge", "callbridge_testkit"],
        layers: Some(&[&["signals"], &["admin_cli", "demo"]]),
        inner: &[],
    },
    CrateLayers {
        name: "callbridge_loadtest",
        src: "loadtest/src",
        may_use: &["callbridge_core", "callbridge", "callbridge_testkit"],
        layers: None,
        inner: &[],
    },
];

/// Every crate name a path may start with.
fn crate_names() -> Vec<&'static str> {
    WORKSPACE.iter().map(|c| c.name).collect()
}

/// The repository's root (these tests run as part of `cli/`, the binary's package).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Every `.rs` file under `dir`, as (path relative to `dir`, contents).
fn sources(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path
                    .strip_prefix(dir)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.push((rel, std::fs::read_to_string(&path).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// The module path of a file: `store/writer.rs` → `[store, writer]`, `runtime/mod.rs` →
/// `[runtime]`, `lib.rs` → `[]`.
fn file_module(rel: &str) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .trim_end_matches(".rs")
        .split('/')
        .map(str::to_owned)
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// The inline `mod NAME { … }` blocks of a file, as (name, byte range of its body), found by a
/// small lexer that skips comments, strings and char literals (so their braces do not count).
fn inline_mods(src: &str) -> Vec<(String, std::ops::Range<usize>)> {
    let b = src.as_bytes();
    let mut mods = Vec::new();
    // Open blocks: (Some(name, body start) for a mod block, else None).
    let mut open: Vec<Option<(String, usize)>> = Vec::new();
    let mut pending_mod: Option<String> = None;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if b[i..].starts_with(b"//") {
            i = src[i..].find('\n').map_or(b.len(), |n| i + n);
            continue;
        }
        if b[i..].starts_with(b"/*") {
            let mut depth = 0;
            while i < b.len() {
                if b[i..].starts_with(b"/*") {
                    depth += 1;
                    i += 2;
                } else if b[i..].starts_with(b"*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            continue;
        }
        let ident_before = i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_');
        let mut next = i;
        // Raw strings: r"…", r#"…"#, and their byte and C forms br#"…"#, cr#"…"#.
        let raw_at = match (c, b.get(i + 1)) {
            (b'r', _) => Some(i),
            (b'b' | b'c', Some(b'r')) => Some(i + 1),
            _ => None,
        };
        if let (Some(r), false) = (raw_at, ident_before) {
            let i = r;
            let mut j = i + 1;
            while j < b.len() && b[j] == b'#' {
                j += 1;
            }
            if j < b.len() && b[j] == b'"' {
                let close = format!("\"{}", "#".repeat(j - i - 1));
                next = src[j + 1..]
                    .find(&close)
                    .map_or(b.len(), |n| j + 1 + n + close.len());
            }
        }
        if next > i {
            i = next;
            continue;
        }
        if c == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            continue;
        }
        if c == b'\'' {
            // A char literal ('x', '\n', '\u{7b}', '{'), else a lifetime or label.
            if b.get(i + 1) == Some(&b'\\') {
                // Past the escaped character itself (it may be a quote: '\'').
                let mut j = i + 3;
                while j < b.len() && b[j] != b'\'' {
                    j += 1;
                }
                i = j + 1;
                continue;
            }
            if let Some(ch) = src[i + 1..].chars().next() {
                let after = i + 1 + ch.len_utf8();
                if b.get(after) == Some(&b'\'') {
                    i = after + 1;
                    continue;
                }
            }
            i += 1;
            continue;
        }
        if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            let word = &src[start..i];
            if word == "mod" && !ident_before {
                let rest = &src[i..];
                let name_start = rest.len() - rest.trim_start().len();
                let name: String = rest[name_start..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let after = rest[name_start + name.len()..].trim_start();
                if !name.is_empty() && after.starts_with('{') {
                    pending_mod = Some(name);
                }
            }
            continue;
        }
        if c == b'{' {
            open.push(pending_mod.take().map(|name| (name, i + 1)));
        } else if c == b'}' {
            if let Some(Some((name, start))) = open.pop() {
                mods.push((name, start..i));
            }
        } else if c == b';' {
            pending_mod = None;
        }
        i += 1;
    }
    mods
}

/// Where a path goes.
#[derive(Debug, PartialEq)]
enum Target {
    /// Into this crate, at this module path (the first segments of the path; items included).
    /// `glob`: the path ends in `::*` right after these segments.
    Local { path: Vec<String>, glob: bool },
    /// Into another crate of the workspace.
    Crate(String),
    /// `super::` above the crate's root.
    AboveRoot,
}

/// One path found in a file.
#[derive(Debug)]
struct Found {
    line: usize,
    /// The module it stands in (file module plus inline `mod` blocks).
    from: Vec<String>,
    /// How many of `from`'s segments are the file's own module (the rest are inline blocks).
    file_depth: usize,
    text: String,
    to: Target,
}

/// `s` from `at` past any whitespace.
fn skip_ws(s: &str, at: usize) -> usize {
    at + (s[at..].len() - s[at..].trim_start().len())
}

/// `s` without its `//` and `/* */` comments (for the inside of a `use` group).
fn strip_comments(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("//") {
            rest = r.find('\n').map_or("", |n| &r[n..]);
        } else if let Some(r) = rest.strip_prefix("/*") {
            rest = r.find("*/").map_or("", |n| &r[n + 2..]);
            out.push(' ');
        } else {
            let ch = rest.chars().next().unwrap();
            out.push(ch);
            rest = &rest[ch.len_utf8()..];
        }
    }
    out
}

/// The paths that start at `at` (just after a `crate::`, `super::` or crate name and its `::`):
/// one for `a::b::c`, one per item for a `{…}` group (each item's leading segments; comments in
/// the group are skipped, and an item that is not a path is kept, empty, so it can be judged).
fn segments_after(s: &str, at: usize) -> Vec<(Vec<String>, bool)> {
    let at = skip_ws(s, at);
    let rest = &s[at..];
    if let Some(group) = rest.strip_prefix('{') {
        let mut end = group.len();
        let mut depth = 0;
        for (k, ch) in group.char_indices() {
            match ch {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    end = k;
                    break;
                }
                '}' => depth -= 1,
                _ => {}
            }
        }
        let body = strip_comments(&group[..end]);
        let mut items = Vec::new();
        let (mut depth, mut item_start) = (0, 0);
        for (k, ch) in body.char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    items.push(body[item_start..k].to_owned());
                    item_start = k + 1;
                }
                _ => {}
            }
        }
        items.push(body[item_start..].to_owned());
        return items
            .iter()
            .map(|t| t.trim())
            .filter(|t| !t.is_empty())
            .map(path_segments)
            .collect();
    }
    vec![path_segments(rest)]
}

/// `a::b::C…` → `([a, b, C], false)`, `a::*` → `([a], true)`; whitespace and line breaks around
/// `::` are allowed; stops at the first character that is not part of a path.
fn path_segments(s: &str) -> (Vec<String>, bool) {
    let mut out = Vec::new();
    let mut rest = s;
    loop {
        let raw = rest.strip_prefix("r#").unwrap_or(rest);
        let ident: String = raw
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if ident.is_empty() {
            return (out, rest.starts_with('*'));
        }
        rest = raw[ident.len()..].trim_start();
        out.push(ident);
        match rest.strip_prefix("::") {
            Some(r) => {
                let r = r.trim_start();
                if r.starts_with('*') {
                    return (out, true);
                }
                if r.starts_with('{') {
                    return (out, false);
                }
                rest = r;
            }
            None => return (out, false),
        }
    }
}

/// Every path in one file that leaves its own module.
fn paths_in(krate: &str, rel: &str, src: &str) -> Vec<Found> {
    let base = file_module(rel);
    let file_depth = base.len();
    let mods = inline_mods(src);
    let module_at = |pos: usize| -> Vec<String> {
        let mut m = base.clone();
        let mut enclosing: Vec<&(String, std::ops::Range<usize>)> =
            mods.iter().filter(|(_, r)| r.contains(&pos)).collect();
        enclosing.sort_by_key(|(_, r)| r.start);
        m.extend(enclosing.into_iter().map(|(n, _)| n.clone()));
        m
    };
    let line_of = |pos: usize| src[..pos].matches('\n').count() + 1;
    let names = crate_names();
    let b = src.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    while i < b.len() {
        // A path starts after anything but an identifier character, `::` (its middle) or `$`
        // (`$crate` in macros); `self::super::` is a `super::` path.
        let after_self = b[..i].ends_with(b"self::")
            && !b[..i - b"self::".len()]
                .last()
                .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_');
        let boundary = i == 0
            || after_self
            || !(b[i - 1].is_ascii_alphanumeric() || b"_:$".contains(&b[i - 1]));
        if !boundary || !(b[i].is_ascii_alphabetic() || b[i] == b'_') {
            i += 1;
            continue;
        }
        let word: String = src[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let after = i + word.len();
        let sep = skip_ws(src, after);
        if !src[sep..].starts_with("::") {
            i = after;
            continue;
        }
        let from = module_at(i);
        let line = line_of(i);
        let text_end = src[i..]
            .find(['\n', ';', ' ', ')', ']', '`'])
            .map_or(b.len(), |n| i + n);
        let text = src[i..text_end].to_owned();
        let mut push = |to: Target| {
            found.push(Found {
                line,
                from: from.clone(),
                file_depth,
                text: text.clone(),
                to,
            })
        };
        if word == "crate" || word == krate {
            for (path, glob) in segments_after(src, sep + 2) {
                push(Target::Local { path, glob });
            }
        } else if word == "super" {
            let mut ups = 0;
            let mut j = i;
            loop {
                let k = skip_ws(src, j);
                if !src[k..].starts_with("super") {
                    break;
                }
                let sep = skip_ws(src, k + "super".len());
                if !src[sep..].starts_with("::") {
                    break;
                }
                ups += 1;
                j = sep + 2;
            }
            for (mut path, glob) in segments_after(src, j) {
                // `super::{super::x}`: the item climbs further.
                let extra = path.iter().take_while(|s| *s == "super").count();
                path.drain(..extra);
                path.retain(|s| s != "self");
                let up = ups + extra;
                push(if up > from.len() {
                    Target::AboveRoot
                } else {
                    let mut t = from[..from.len() - up].to_vec();
                    t.extend(path);
                    Target::Local { path: t, glob }
                });
            }
            i = j;
            continue;
        } else if names.contains(&word.as_str()) {
            push(Target::Crate(word.clone()));
        }
        i = after;
    }
    found
}

/// The layer of `module` in `layers`.
fn rank(layers: &[&[&str]], module: &str) -> Option<usize> {
    layers.iter().position(|l| l.contains(&module))
}

/// Checks one crate's files; returns every violation as a line `file:line: why`.
fn check_crate(c: &CrateLayers, files: &[(String, String)]) -> Vec<String> {
    let mut bad = Vec::new();
    for (rel, src) in files {
        let here = file_module(rel);
        if let (Some(layers), Some(top)) = (c.layers, here.first()) {
            if rank(layers, top).is_none() {
                bad.push(format!(
                    "{}/{rel}: module `{top}` is not in the layer table of {}",
                    c.src, c.name
                ));
            }
        }
        // A file of an ordered module must have its place in that module's table.
        if let [top, file, ..] = here.as_slice() {
            if let Some((_, inner)) = c.inner.iter().find(|(m, _)| m == top) {
                if rank(inner, file).is_none() {
                    bad.push(format!(
                        "{}/{rel}: `{top}::{file}` is not in {top}'s table",
                        c.src
                    ));
                }
            }
        }
        for f in paths_in(c.name, rel, src) {
            let at = format!("{}/{rel}:{}: `{}`", c.src, f.line, f.text);
            match &f.to {
                Target::AboveRoot => bad.push(format!("{at}: super:: above the crate root")),
                Target::Crate(name) => {
                    if !c.may_use.contains(&name.as_str()) {
                        bad.push(format!("{at}: {} must not use {name}", c.name));
                    }
                }
                Target::Local { path, glob } => {
                    if let Some(why) = local_violation(c, &f, path, *glob) {
                        bad.push(format!("{at}: {why}"));
                    }
                }
            }
        }
    }
    bad
}

/// Why path `to` (within crate `c`) found at `f` reaches up, if it does.
fn local_violation(c: &CrateLayers, f: &Found, to: &[String], glob: bool) -> Option<String> {
    let from = &f.from;
    let file_module = &from[..f.file_depth];
    // A glob of the crate root or of an enclosing module hides what it brings in (a later
    // `runtime::x` would look local). A glob of the file's own module (`use super::*` in its
    // `mod tests`), of a `tests.rs` file's parent, or of a module below is fine.
    let tests_of_parent =
        file_module.last().is_some_and(|m| m == "tests") && to.len() + 1 == file_module.len();
    if glob && to.len() < file_module.len() && file_module.starts_with(to) && !tests_of_parent {
        let what = if to.is_empty() {
            "the crate root".to_owned()
        } else {
            format!("`{}`", to.join("::"))
        };
        return Some(format!("a glob import of {what}, which encloses this file"));
    }
    let layers = c.layers?;
    // The crate root (lib.rs, main.rs, outside inline modules) sits above every module.
    let src_top = from.first()?;
    let Some(src_rank) = rank(layers, src_top) else {
        return Some(format!("module `{src_top}` is not in the layer table"));
    };
    let Some(dst_top) = to.first() else {
        // `crate::*` from inside a module: caught above; `crate::` alone names nothing.
        return None;
    };
    let Some(dst_rank) = rank(layers, dst_top) else {
        return Some(format!("`{dst_top}` is not a module in the layer table"));
    };
    if src_top == dst_top {
        let (_, inner) = c.inner.iter().find(|(m, _)| m == src_top)?;
        // Within an ordered module: its root (mod.rs, and inline modules in it) may use its
        // files, and a file may use the root's own items (the module's shared namespace).
        if f.file_depth < 2 {
            return None;
        }
        let from_file = &from[1];
        let to_file = to.get(1)?;
        let to_rank = rank(inner, to_file)?;
        let from_rank = rank(inner, from_file)?; // A file missing from the table is reported once.
        return (from_file != to_file && to_rank >= from_rank).then(|| {
            format!("{src_top}::{from_file} must not use {src_top}::{to_file} (not below it)")
        });
    }
    (dst_rank >= src_rank).then(|| format!("{src_top} must not use {dst_top} (not below it)"))
}

#[test]
fn every_path_points_down_the_layers() {
    let mut bad = Vec::new();
    let mut counted = 0;
    for c in WORKSPACE {
        let files = sources(&repo().join(c.src));
        assert!(!files.is_empty(), "no sources under {}", c.src);
        counted += files
            .iter()
            .map(|(rel, src)| paths_in(c.name, rel, src).len())
            .sum::<usize>();
        bad.extend(check_crate(c, &files));
    }
    // The scan finds the paths there are (a scanner that finds nothing passes everything).
    assert!(counted > 300, "only {counted} paths found");
    assert!(bad.is_empty(), "paths reaching up:\n{}", bad.join("\n"));
}

/// The server crate's table with the given files in place of its own.
fn check_server(files: &[(&str, &str)]) -> Vec<String> {
    let server = WORKSPACE.iter().find(|c| c.name == "callbridge").unwrap();
    let files: Vec<(String, String)> = files
        .iter()
        .map(|(p, s)| (p.to_string(), s.to_string()))
        .collect();
    check_crate(server, &files)
}

#[test]
fn the_checker_catches_planted_upward_paths() {
    // Each plant reaches up once; each must be reported, at its line.
    let plants: &[(&str, &str, &str)] = &[
        (
            "config.rs",
            "use crate::runtime::Server;\n",
            "config must not use runtime",
        ),
        (
            "metrics.rs",
            "//! See [`crate::front::routes::route_label`].\n",
            "metrics must not use front",
        ),
        (
            "store/writer.rs",
            "fn f() { let _ = super::super::openai::pool::Pool::new; }\n",
            "store must not use openai",
        ),
        (
            "config.rs",
            "use crate::{lifecycle::Phase, front::routes};\n",
            "config must not use front",
        ),
        (
            "metrics.rs",
            "#[cfg(test)]\nmod tests {\n    use super::super::config::Config;\n}\n",
            "metrics must not use config",
        ),
        (
            "store/mod.rs",
            "fn f() -> callbridge_testkit::mock::server::MockServer { todo!() }\n",
            "callbridge must not use callbridge_testkit",
        ),
        (
            "runtime/transport.rs",
            "use super::call_loop::LegState;\n",
            "runtime::transport must not use runtime::call_loop",
        ),
        (
            "runtime/epoll.rs",
            "use super::uring::probe;\n",
            "runtime::epoll must not use runtime::uring",
        ),
        (
            "lifecycle.rs",
            "use super::super::x;\n",
            "super:: above the crate root",
        ),
        (
            "gadgets.rs",
            "pub fn f() {}\n",
            "module `gadgets` is not in the layer table",
        ),
    ];
    for (file, src, why) in plants {
        let bad = check_server(&[(file, src)]);
        assert!(
            bad.iter().any(|b| b.contains(why)),
            "{file}: {src:?} was not caught as {why:?}: {bad:?}"
        );
    }
    // The same files reaching down pass, and braces in strings, chars and comments do not
    // confuse where an inline module ends.
    let fine = check_server(&[
        ("config.rs", "use crate::{lifecycle::Phase, store::DEFAULT_CACHE_MB};\n"),
        ("metrics.rs", "//! See [`crate::lifecycle::Phase`].\nuse callbridge_core::bridge::Call;\n"),
        (
            "runtime/call_loop.rs",
            "use super::transport::Ready;\nuse super::CLOSE_TIMEOUT;\n#[cfg(test)]\nmod tests {\n    const B: char = '{';\n    const S: &str = \"}}{\";\n    /* } */\n    use super::super::transport::Sent;\n}\nuse crate::front::routes::Routed;\n",
        ),
        ("front/routes.rs", "fn f() { let _ = super::admin::route; }\n"),
    ]);
    assert!(fine.is_empty(), "{fine:?}");
}

#[test]
fn inline_modules_are_found_past_braces_in_literals() {
    let src = "mod a { const X: char = '}'; mod b { fn f<'x>(s: &'x str) { let _ = r#\"}\"#; } } }\nfn g() {}\n";
    let mods = inline_mods(src);
    let names: BTreeSet<&str> = mods.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, BTreeSet::from(["a", "b"]));
    let a = &mods.iter().find(|(n, _)| n == "a").unwrap().1;
    assert!(a.end > src.find("mod b").unwrap() && a.end < src.find("fn g").unwrap());
}

/// `cargo tree` of a package's normal dependencies, one crate name per line.
fn cargo_tree(args: &[&str]) -> BTreeSet<String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "tree", "-e", "normal", "--prefix", "none", "--format", "{lib}",
        ])
        .args(args)
        .current_dir(repo())
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn the_core_has_no_io_crate_under_it() {
    let deps = cargo_tree(&["-p", "callbridge-core"]);
    assert!(deps.contains("simd_json"), "the tree was read: {deps:?}");
    for io in [
        "tokio",
        "mio",
        "rustls",
        "tokio_uring",
        "io_uring",
        "sled",
        "redb",
        "metrics",
        "jsonschema",
    ] {
        assert!(!deps.contains(io), "callbridge-core depends on {io}");
    }
}

#[test]
fn the_binary_without_the_demo_has_no_schema_validator() {
    let deps = cargo_tree(&["-p", "callbridge-cli", "--no-default-features"]);
    assert!(deps.contains("tokio"), "the tree was read: {deps:?}");
    for dep in ["jsonschema", "callbridge_testkit"] {
        assert!(
            !deps.contains(dep),
            "the binary without `demo` depends on {dep}"
        );
    }
    let with_demo = cargo_tree(&["-p", "callbridge-cli"]);
    assert!(
        with_demo.contains("jsonschema"),
        "the demo build has the validator"
    );
}
