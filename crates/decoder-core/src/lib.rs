//! Sans-IO core of daedalus-v4l2.
//!
//! This crate holds every piece of state and every transition of a V4L2
//! stateless decoder whose decoding happens in a separate daemon. It performs
//! no system calls, spawns no threads and reads no clock: frontends (the CUSE
//! server, the embedded runner, the kernel module's C mirror) feed it events
//! and carry out what it asks for.
//!
//! * [`fmt`]: coded and decoded pixel formats, frame-size ranges.
//! * [`ctrl`]: every stateless codec control of the Linux 6.12 uAPI, with
//!   defaults and validation.
//! * [`proto`]: the bridge wire format shared with the daemon and the kernel
//!   module (`include/daedalus_v4l2_proto.h`).
//! * [`state`]: the per-device / per-context request, in-flight and drain
//!   state machine.
//! * [`sim`]: an in-memory test daemon and clock around a device.
//! * [`scenario`]: the scenario file format shared by every frontend's tests.

#![forbid(unsafe_code)]

pub mod ctrl;
pub mod fmt;
pub mod proto;
pub mod scenario;
pub mod sim;
pub mod state;
