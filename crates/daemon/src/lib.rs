//! The decoding daemon of daedalus-v4l2.
//!
//! It connects to a frontend (the CUSE server, the embedded runner, later
//! the kernel module's bridge device) and decodes the jobs the frontend
//! sends over the bridge protocol ([`decoder_core::proto`]):
//!
//! * [`transport`]: datagrams with descriptors over a unix `SOCK_SEQPACKET`
//!   socket, interruptible receives and sends ([`transport::Shutdown`]);
//! * [`chardev`]: the same over the kernel module's `/dev/daedalus-bridge`;
//! * [`buffers`]: mapping of registered buffer memory (memfd, dmabuf) and
//!   the backend's zero-copy view of it;
//! * [`server`]: the protocol session, one worker per context, bounded
//!   decode concurrency;
//! * [`reply`]: the answer every job gets exactly once;
//! * [`worker`]: the per-context job queue and the decode semaphore;
//! * [`backend`]: the decoders themselves;
//! * [`affinity`]: CPU placement of the server's threads, when asked for.
//!
//! The `daedalus-daemon` binary is `daedalus-daemon --connect PATH
//! [--once] [--threads N]`; in-process users start a
//! [`server::EmbeddedDaemon`] or call [`server::Server::serve`] on a
//! transport of their own.

pub mod affinity;
pub mod backend;
pub mod buffers;
pub mod chardev;
pub mod prefault;
pub mod reply;
pub mod server;
pub mod stats;
pub mod transport;
pub mod worker;
