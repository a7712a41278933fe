//! docs/architecture.md must name every state and every transition of the
//! state machine, and `state::TRANSITIONS` must list exactly the methods of
//! `Device` that take `&mut self` (poll_* drains excepted).

use std::path::PathBuf;

use decoder_core::state::TRANSITIONS;

fn read(rel: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Names of `pub fn`s of `impl Device` whose receiver is `&mut self`.
fn mutating_methods(src: &str) -> Vec<String> {
    let start = src.find("impl Device {").expect("impl Device");
    let body = &src[start..];
    let end = body.find("\n}\n").expect("end of impl");
    let body = &body[..end];
    let mut out = Vec::new();
    let mut rest = body;
    while let Some(i) = rest.find("pub fn ") {
        rest = &rest[i + 7..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let sig_end = rest.find('{').unwrap_or(rest.len());
        if rest[..sig_end].contains("&mut self") {
            out.push(name);
        }
    }
    out
}

#[test]
fn transitions_list_matches_the_code() {
    let src = read("src/state.rs");
    let mut found = mutating_methods(&src);
    found.retain(|n| !n.starts_with("poll_"));
    let mut listed: Vec<String> = TRANSITIONS.iter().map(|s| s.to_string()).collect();
    found.sort();
    listed.sort();
    assert_eq!(
        found, listed,
        "state::TRANSITIONS differs from Device's &mut self methods"
    );
}

#[test]
fn architecture_doc_names_every_transition_and_state() {
    let doc = read("../../docs/architecture.md");
    for t in TRANSITIONS {
        assert!(
            doc.contains(&format!("| `{t}` |")),
            "docs/architecture.md has no row for transition `{t}`"
        );
    }
    let src = read("src/state.rs");
    for en in ["BufState", "ReqState", "Link"] {
        let start = src
            .find(&format!("pub enum {en} {{"))
            .unwrap_or_else(|| panic!("enum {en}"));
        let body = &src[start..start + src[start..].find("\n}\n").unwrap()];
        let variants: Vec<&str> = body
            .lines()
            .skip(1)
            .map(str::trim)
            .filter(|l| l.chars().next().is_some_and(|c| c.is_ascii_uppercase()))
            .map(|l| l.split(|c: char| !c.is_alphanumeric()).next().unwrap())
            .collect();
        assert!(!variants.is_empty(), "no variants parsed for {en}");
        for v in variants {
            assert!(
                doc.contains(&format!("| `{v}` |")),
                "docs/architecture.md has no row for {en}::{v}"
            );
        }
    }
    for s in ["| active |", "| zombie |"] {
        assert!(doc.contains(s), "job state row {s} missing");
    }
}
