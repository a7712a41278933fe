//! The decoding daemon of daedalus-v4l2.
//!
//! It connects to a frontend (the CUSE server, the embedded runner, later
//! the kernel module's bridge device) and decodes the jobs the frontend
//! sends over the bridge protocol ([`decoder_core::proto`]):
//!
//! * [`transport`]: datagrams with descriptors over a unix `SOCK_SEQPACKET`
//!   socket, interruptible receives ([`transport::Shutdown`]);
//! * [`buffers`]: mapping of registered buffer memory (memfd, dmabuf);
//! * [`server`]: the protocol session, per-context workers, replies;
//! * [`backend`]: the decoders themselves.

pub mod backend;
pub mod buffers;
pub mod reply;
pub mod server;
pub mod transport;
pub mod worker;
