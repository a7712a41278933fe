//! Scriptable test daemon (work in progress).
fn main() {
    eprintln!("daedalus-test-daemon: not implemented yet");
    std::process::exit(2);
}
