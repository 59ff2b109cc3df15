//! One lint table for every crate of the project: the bridge (library, binary, tests and
//! benchmarks), its fuzz targets and its loom models. The two side crates are workspaces of
//! their own, so they carry a copy, which must equal the bridge's.

/// The `[lints.*]` tables of a Cargo.toml, as text, comments included.
fn lint_tables(manifest: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in manifest.lines() {
        if line.starts_with('[') {
            inside = line.starts_with("[lints.");
        }
        if inside {
            out.push_str(line.trim_end());
            out.push('\n');
        }
    }
    out.trim_end().to_string()
}

#[test]
fn fuzz_and_loom_crates_have_the_bridges_lint_table() {
    let read = |path: &str| {
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
    };
    let bridge = lint_tables(&read("Cargo.toml"));
    assert!(
        bridge.contains("unsafe_code") && bridge.contains("unwrap_used"),
        "the bridge's lint table is missing:\n{bridge}"
    );
    for side in ["fuzz/Cargo.toml", "loom-tests/Cargo.toml"] {
        assert_eq!(
            lint_tables(&read(side)),
            bridge,
            "{side}'s [lints] differ from Cargo.toml's: copy the bridge's table"
        );
    }
}
