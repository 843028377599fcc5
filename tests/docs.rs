//! The repository's own reference stays true where a test can tell: every
//! `docs/reference.md §N` the code cites exists, and the README's settings table names every
//! environment variable `cable-gateway serve` reads.

use std::path::Path;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn sources(dir: &Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == "node_modules") {
                continue;
            }
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs" || e == "mjs") {
            out.push(std::fs::read_to_string(&path).unwrap());
        }
    }
}

#[test]
fn every_cited_section_of_the_reference_exists() {
    let reference = std::fs::read_to_string(Path::new(ROOT).join("docs/reference.md")).unwrap();
    let mut texts = Vec::new();
    sources(&Path::new(ROOT).join("src"), &mut texts);
    sources(&Path::new(ROOT).join("tests"), &mut texts);
    let mut cited = 0;
    for text in &texts {
        for (i, _) in text.match_indices("docs/reference.md §") {
            let number: String = text[i + "docs/reference.md §".len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            if number.is_empty() {
                continue; // this test's own mention
            }
            cited += 1;
            assert!(
                reference.contains(&format!("\n## {number}. ")),
                "docs/reference.md has no section {number}"
            );
        }
    }
    assert!(cited > 10, "the code cites the reference ({cited} times)");
}

#[test]
fn the_readme_lists_every_setting() {
    use clap::CommandFactory;
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap();
    let cli = cable_gateway::config::Cli::command();
    let serve = cli.find_subcommand("serve").unwrap();
    for arg in serve.get_arguments() {
        let Some(env) = arg.get_env() else { continue };
        let env = env.to_string_lossy();
        assert!(
            readme.contains(&format!("| `{env}` |")),
            "README's Configuration table lacks {env}"
        );
    }
}
