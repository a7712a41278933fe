//! `daedalus-cuse` entry point.

fn main() {
    eprintln!("daedalus-cuse: not implemented yet (issue 5)");
    std::process::exit(2);
}
