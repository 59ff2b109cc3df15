//! The docs say what the code does: the settings table in docs/operating.md is the one the
//! settings themselves make (their `--help`), the README stays a landing page, and every
//! relative link in the docs leads to a file that exists.

use std::path::{Path, PathBuf};

const TABLE_START: &str = "<!-- settings table: made by livekit_bridge::config::settings_table -->";
const TABLE_END: &str = "<!-- end of the settings table -->";

fn read(path: impl AsRef<Path>) -> String {
    let path = path.as_ref();
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// With `UPDATE_DOCS=1`, rewrites the table instead of failing.
#[test]
fn the_settings_table_is_the_settings_own() {
    let path = "docs/operating.md";
    let doc = read(path);
    let (before, rest) = doc
        .split_once(TABLE_START)
        .unwrap_or_else(|| panic!("{path} has no {TABLE_START}"));
    let (table, after) = rest
        .split_once(TABLE_END)
        .unwrap_or_else(|| panic!("{path} has no {TABLE_END}"));
    let made = livekit_bridge::config::settings_table();
    if table.trim() == made.trim() {
        return;
    }
    if std::env::var_os("UPDATE_DOCS").is_some() {
        let updated = format!("{before}{TABLE_START}\n{made}{TABLE_END}{after}");
        std::fs::write(path, updated).expect("write the table");
        return;
    }
    panic!(
        "{path}'s settings table differs from the settings' --help; run \
         `UPDATE_DOCS=1 cargo test --test docs` to rewrite it. It should be:\n{made}"
    );
}

#[test]
fn the_readme_is_a_landing_page() {
    let size = read("README.md").len();
    assert!(
        size <= 12 * 1024,
        "README.md is {size} bytes; move detail into docs/"
    );
}

/// Markdown links `](target)` that are not web addresses or anchors in the same page.
fn relative_links(text: &str) -> Vec<String> {
    text.split("](")
        .skip(1)
        .filter_map(|rest| rest.split_once(')').map(|(target, _)| target))
        .filter(|t| !t.starts_with("http") && !t.starts_with('#'))
        .map(|t| t.split('#').next().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn every_relative_link_in_the_docs_leads_somewhere() {
    let mut pages: Vec<PathBuf> = vec!["README.md".into(), "BENCHMARKS.md".into()];
    for entry in std::fs::read_dir("docs").expect("docs/") {
        pages.push(entry.expect("entry").path());
    }
    for page in pages {
        let dir = page.parent().unwrap_or(Path::new(""));
        for link in relative_links(&read(&page)) {
            assert!(
                dir.join(&link).exists(),
                "{} links to {link}, which does not exist",
                page.display()
            );
        }
    }
}
