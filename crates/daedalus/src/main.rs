//! `daedalus` command line.

fn main() {
    eprintln!("daedalus: decode is not implemented yet (issue 3)");
    std::process::exit(2);
}
