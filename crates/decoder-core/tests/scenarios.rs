//! Runs every scenario in `tests/scenarios/` against decoder-core with the
//! in-memory test daemon.

use std::path::PathBuf;

use decoder_core::scenario::{run_on_sim, Scenario};

#[test]
fn all_scenarios_pass_on_the_core() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/scenarios");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/scenarios exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "scn"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 5,
        "scenario files missing in {}",
        dir.display()
    );
    let mut failures = Vec::new();
    let mut steps = 0;
    for f in &files {
        let name = f.file_stem().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(f).unwrap();
        let s = Scenario::parse(&name, &text).unwrap_or_else(|e| panic!("{e}"));
        match run_on_sim(&s) {
            Ok(n) => {
                steps += n;
                println!("scenario {name}: ok ({n} steps)");
            }
            Err(e) => failures.push(e),
        }
    }
    println!(
        "{} scenarios, {steps} steps, {} failed",
        files.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "failed:\n{}", failures.join("\n"));
}

#[test]
fn a_wrong_expectation_fails() {
    // The runner must be able to fail: the #146 outcome inverted.
    let text = "open c1\nreqbufs c1 output 1\nreqbufs c1 capture 1\nstreamon c1 output\n\
                streamon c1 capture\nqueue c1 0\ndecode c1 0 ts=1\nexpect c1 capture 0 done\n";
    let s = Scenario::parse("inverted", text).unwrap();
    let err = run_on_sim(&s).unwrap_err();
    assert!(err.contains("expected 0 done"), "{err}");
    let s = Scenario::parse("errno", "open c1\nreqbufs c1 output 1 => EBUSY\n").unwrap();
    assert!(run_on_sim(&s).is_err());
    assert!(Scenario::parse("bad", "frobnicate c1\n").is_err());
}
