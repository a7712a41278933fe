//! The decoding daemon (work in progress: see issue 3).

pub mod backend;
