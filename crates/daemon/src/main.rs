//! `daedalus-daemon` entry point.

fn main() {
    eprintln!("daedalus-daemon: not implemented yet (issue 3)");
    std::process::exit(2);
}
