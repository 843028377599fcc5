//! The layering `src/lib.rs` describes is the real one (issue 33): its `# Layout` lists the
//! crate's modules leaves first, one bullet each, and no module's code imports a module
//! listed after it. Test code (`tests.rs` files, files in a `tests/` folder, and what follows
//! `#[cfg(test)]`) may use anything.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src");

/// The modules of the Layout, in order: the first `[`name`]` of each bullet.
fn layout() -> Vec<String> {
    let lib = std::fs::read_to_string(Path::new(SRC).join("lib.rs")).unwrap();
    let section = lib
        .split("//! # Layout")
        .nth(1)
        .and_then(|rest| rest.split("//! # ").next())
        .expect("lib.rs has a # Layout section");
    section
        .lines()
        .filter_map(|line| line.strip_prefix("//! - [`"))
        .map(|rest| rest.split('`').next().unwrap().to_string())
        .collect()
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules `text` names as `crate::<module>` (in paths and `use` groups).
fn imports(text: &str) -> BTreeSet<String> {
    let code: String = text
        .lines()
        .map(|line| line.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n");
    let mut found = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = group.split('}').next().unwrap_or_default();
            for item in group.split(',') {
                let name = item.trim().split("::").next().unwrap_or_default();
                found.insert(name.trim().to_string());
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            found.insert(name);
        }
    }
    found.retain(|name| !name.is_empty());
    found
}

#[test]
fn every_module_imports_only_modules_listed_before_it() {
    let order = layout();
    let declared: BTreeSet<String> = std::fs::read_to_string(Path::new(SRC).join("lib.rs"))
        .unwrap()
        .lines()
        .filter_map(|line| line.strip_prefix("pub mod "))
        .map(|name| name.trim_end_matches(';').to_string())
        .collect();
    assert_eq!(
        order.iter().cloned().collect::<BTreeSet<_>>(),
        declared,
        "the Layout lists every module of lib.rs once"
    );
    assert_eq!(order.len(), declared.len(), "no module listed twice");

    let mut all = Vec::new();
    files(Path::new(SRC), &mut all);
    let mut violations = Vec::new();
    for path in all {
        let relative = path.strip_prefix(SRC).unwrap();
        let module = relative
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        let Some(position) = order.iter().position(|m| *m == module) else {
            continue; // lib.rs, main.rs
        };
        let in_tests_dir = path
            .parent()
            .and_then(|dir| dir.file_name())
            .is_some_and(|dir| dir == "tests");
        if in_tests_dir || path.file_name().is_some_and(|name| name == "tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        for imported in imports(code) {
            match order.iter().position(|m| *m == imported) {
                Some(at) if at > position => violations.push(format!(
                    "{} imports {imported}, listed after {module}",
                    relative.display()
                )),
                _ => {}
            }
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn the_check_sees_what_it_checks() {
    let found = imports(
        "use crate::router::Router;\nuse crate::{auth::Principal, delivery};\n// crate::server\nlet x = crate::metrics::X;",
    );
    assert_eq!(
        found.into_iter().collect::<Vec<_>>(),
        ["auth", "delivery", "metrics", "router"]
    );
    assert!(layout().len() > 20, "{:?}", layout());
}
