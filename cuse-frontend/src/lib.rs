//! daedalus-v4l2's CUSE frontend: a V4L2 stateless decoder node (and its
//! media-controller node) served from userspace over `/dev/cuse`, driven by
//! decoder-core's state machine, decoding in `daedalus-daemon`.
//!
//! See docs/cuse.md.

pub mod cuse;
pub mod fetch;
pub mod launcher;
pub mod media;
pub mod mem;
pub mod uapi;
pub mod video;
