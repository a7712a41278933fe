//! V4L2 integration suite (work in progress).
fn main() {
    eprintln!("daedalus-v4l2-suite: not implemented yet");
    std::process::exit(2);
}
