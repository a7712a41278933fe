//! The bridge protocol between a frontend (CUSE server, kernel module,
//! embedded runner) and the decoding daemon.
//!
//! One message is one datagram (a `SOCK_SEQPACKET` packet, or one
//! `read`/`write` on the kernel bridge chardev): a [`MsgHeader`] followed by a
//! fixed body per kind and, for [`MsgKind::Decode`], the job's controls.
//! Everything is little-endian `#[repr(C)]` with explicit padding; file
//! descriptors (dmabuf, memfd) travel out of band (`SCM_RIGHTS`) with
//! [`MsgKind::BufRegister`]. `include/daedalus_v4l2_proto.h` is the C twin of
//! this module; `tests/proto_c_header.rs` fails as soon as the two differ.
//!
//! Decoding never trusts a peer's count: every length is checked against the
//! received size and the limits below before anything is read.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

const _: () = assert!(
    cfg!(target_endian = "little"),
    "the wire format is little-endian"
);

/// `"DV4L"` read as a little-endian u32.
pub const DV_MAGIC: u32 = u32::from_le_bytes(*b"DV4L");
/// Major version: a peer with another major is refused.
pub const DV_VERSION_MAJOR: u16 = 1;
/// Minor version: additions that older peers may ignore.
pub const DV_VERSION_MINOR: u16 = 0;
/// Largest message either side sends or accepts.
pub const DV_MAX_MSG_SIZE: u32 = 1 << 20;
/// Most controls one decode job carries.
pub const DV_MAX_CTRLS: u32 = 32;
/// Largest payload of one control (an AV1 frame with tile info is < 2 KiB;
/// 600 HEVC slice params are < 100 KiB).
pub const DV_MAX_CTRL_SIZE: u32 = 256 * 1024;
/// Most reference pictures one job names.
pub const DV_MAX_REFS: u32 = 16;
/// Most memory planes of one buffer.
pub const DV_MAX_PLANES: u32 = 4;
/// Capture index meaning "no buffer holds this reference".
pub const DV_NO_BUFFER: u32 = u32::MAX;

/// Feature: buffers are dmabuf fds.
pub const DV_FEAT_DMABUF: u64 = 1 << 0;
/// Feature: buffers are memfd (or other mmap-able) fds.
pub const DV_FEAT_MEMFD: u64 = 1 << 1;
/// Feature: the daemon honours [`MsgKind::Cancel`].
pub const DV_FEAT_CANCEL: u64 = 1 << 2;
/// Feature: multi-slice pictures with `V4L2_BUF_FLAG_M2M_HOLD_CAPTURE_BUF`.
pub const DV_FEAT_HOLD_CAPTURE: u64 = 1 << 3;
/// Every feature this version knows.
pub const DV_FEAT_ALL: u64 = DV_FEAT_DMABUF | DV_FEAT_MEMFD | DV_FEAT_CANCEL | DV_FEAT_HOLD_CAPTURE;

/// Queue of a buffer: OUTPUT (bitstream).
pub const DV_QUEUE_OUTPUT: u32 = 0;
/// Queue of a buffer: CAPTURE (pictures).
pub const DV_QUEUE_CAPTURE: u32 = 1;

/// Buffer memory: a dmabuf fd per plane.
pub const DV_MEM_DMABUF: u32 = 1;
/// Buffer memory: an mmap-able fd (memfd) per plane.
pub const DV_MEM_MEMFD: u32 = 2;

/// Decode flag: more OUTPUT buffers of the same picture follow
/// (`V4L2_BUF_FLAG_M2M_HOLD_CAPTURE_BUF`).
pub const DV_DECODE_HOLD_CAPTURE: u32 = 1 << 0;
/// Decode flag: this job continues the picture already started in the same
/// CAPTURE buffer by the previous job.
pub const DV_DECODE_CONTINUE: u32 = 1 << 1;
/// Every decode flag this version knows.
pub const DV_DECODE_ALL: u32 = DV_DECODE_HOLD_CAPTURE | DV_DECODE_CONTINUE;

/// Job status: picture decoded.
pub const DV_STATUS_DONE: u32 = 0;
/// Job status: the job failed; the buffers complete with ERROR.
pub const DV_STATUS_ERROR: u32 = 1;

/// Result flag: the picture is a key frame.
pub const DV_RESULT_KEYFRAME: u32 = 1 << 0;
/// Result flag: the picture was decoded but with concealed errors.
pub const DV_RESULT_CORRUPTED: u32 = 1 << 1;
/// Every result flag this version knows.
pub const DV_RESULT_ALL: u32 = DV_RESULT_KEYFRAME | DV_RESULT_CORRUPTED;

/// Message kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum MsgKind {
    /// frontend → daemon: [`Hello`]
    Hello = 1,
    /// daemon → frontend: [`Hello`] with the agreed features
    HelloReply = 2,
    /// frontend → daemon: [`CtxOpen`]
    CtxOpen = 3,
    /// frontend → daemon: [`CtxClose`]
    CtxClose = 4,
    /// frontend → daemon: [`BufRegister`] (+ fds out of band)
    BufRegister = 5,
    /// frontend → daemon: [`BufUnregister`]
    BufUnregister = 6,
    /// frontend → daemon: [`DecodeJob`] + controls
    Decode = 7,
    /// frontend → daemon: [`Cancel`]
    Cancel = 8,
    /// daemon → frontend: [`JobResult`]
    Result = 16,
    /// daemon → frontend: [`CtxStatus`]
    CtxStatus = 17,
}

impl MsgKind {
    /// Every kind, for tables and tests.
    pub const ALL: [MsgKind; 10] = [
        MsgKind::Hello,
        MsgKind::HelloReply,
        MsgKind::CtxOpen,
        MsgKind::CtxClose,
        MsgKind::BufRegister,
        MsgKind::BufUnregister,
        MsgKind::Decode,
        MsgKind::Cancel,
        MsgKind::Result,
        MsgKind::CtxStatus,
    ];

    fn from_wire(v: u16) -> Option<MsgKind> {
        MsgKind::ALL.into_iter().find(|k| *k as u16 == v)
    }

    /// Size of this kind's fixed body.
    pub fn body_size(self) -> usize {
        match self {
            MsgKind::Hello | MsgKind::HelloReply => size_of::<Hello>(),
            MsgKind::CtxOpen => size_of::<CtxOpen>(),
            MsgKind::CtxClose => size_of::<CtxClose>(),
            MsgKind::BufRegister => size_of::<BufRegister>(),
            MsgKind::BufUnregister => size_of::<BufUnregister>(),
            MsgKind::Decode => size_of::<DecodeJob>(),
            MsgKind::Cancel => size_of::<Cancel>(),
            MsgKind::Result => size_of::<JobResult>(),
            MsgKind::CtxStatus => size_of::<CtxStatus>(),
        }
    }
}

/// One field of a wire struct, for the C header comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldLayout {
    /// Field name (identical in C).
    pub name: &'static str,
    /// Byte offset.
    pub offset: usize,
    /// Byte size.
    pub size: usize,
}

/// Layout description of a wire struct.
pub trait WireLayout {
    /// The C struct name in `daedalus_v4l2_proto.h`.
    const C_NAME: &'static str;
    /// Every field, in order.
    fn fields() -> Vec<FieldLayout>;
}

macro_rules! wire_struct {
    ($(#[$m:meta])* $name:ident => $cname:literal {
        $($(#[$fm:meta])* $field:ident : $ty:ty),* $(,)?
    }) => {
        $(#[$m])*
        #[repr(C)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
        pub struct $name {
            $($(#[$fm])* pub $field: $ty),*
        }
        impl WireLayout for $name {
            const C_NAME: &'static str = $cname;
            fn fields() -> Vec<FieldLayout> {
                vec![$(FieldLayout {
                    name: stringify!($field),
                    offset: core::mem::offset_of!($name, $field),
                    size: core::mem::size_of::<$ty>(),
                }),*]
            }
        }
    };
}

wire_struct! {
    /// Header of every message.
    MsgHeader => "dv_msg_header" {
        /// [`DV_MAGIC`]
        magic: u32,
        /// [`MsgKind`]
        kind: u16,
        /// [`DV_VERSION_MAJOR`]
        version: u16,
        /// Total length, header included.
        len: u32,
        /// Sender's message counter (diagnostics only).
        seq: u32,
    }
}

wire_struct! {
    /// Version and feature negotiation (both directions).
    Hello => "dv_hello" {
        /// Sender's major version.
        version_major: u16,
        /// Sender's minor version.
        version_minor: u16,
        /// Frontend: jobs it may have in flight at once. Daemon: jobs it
        /// runs in parallel.
        max_inflight: u32,
        /// `DV_FEAT_*` offered (frontend) or agreed (daemon).
        features: u64,
        /// Largest message the sender accepts.
        max_msg_size: u32,
        /// Zero.
        reserved: u32,
    }
}

wire_struct! {
    /// Memory layout of one plane of the CAPTURE format.
    PlaneFmt => "dv_plane_fmt" {
        /// Bytes per line.
        bytesperline: u32,
        /// Bytes of the plane.
        sizeimage: u32,
    }
}

wire_struct! {
    /// A decoding context (one open of /dev/videoN) with its formats.
    CtxOpen => "dv_ctx_open" {
        /// Frontend-chosen id, unique while open.
        ctx_id: u32,
        /// `Codec` wire value.
        codec: u32,
        /// OUTPUT fourcc (`V4L2_PIX_FMT_*_SLICE`/`_FRAME`).
        coded_fourcc: u32,
        /// CAPTURE fourcc (NV12, NV12M, P010).
        capture_fourcc: u32,
        /// Coded width.
        width: u32,
        /// Coded height.
        height: u32,
        /// Memory planes of a CAPTURE buffer.
        num_planes: u32,
        /// Zero.
        reserved: u32,
        /// Plane layouts; entries past `num_planes` are zero.
        planes: [PlaneFmt; 4],
    }
}

wire_struct! {
    /// End of a context: the daemon drops its session and buffers.
    CtxClose => "dv_ctx_close" {
        /// Context id.
        ctx_id: u32,
        /// Zero.
        reserved: u32,
    }
}

wire_struct! {
    /// One memory plane of a registered buffer.
    BufPlane => "dv_buf_plane" {
        /// Index of the fd among those passed with the message.
        fd_index: u32,
        /// Offset of the plane within that fd.
        offset: u32,
        /// Usable bytes from `offset`.
        length: u32,
        /// Zero.
        reserved: u32,
    }
}

wire_struct! {
    /// Registers a buffer's memory once; jobs then name it by index.
    BufRegister => "dv_buf_register" {
        /// Context id.
        ctx_id: u32,
        /// `DV_QUEUE_*`
        queue: u32,
        /// V4L2 buffer index.
        index: u32,
        /// Memory planes.
        num_planes: u32,
        /// `DV_MEM_*`
        memory: u32,
        /// Zero.
        reserved: u32,
        /// Planes; entries past `num_planes` are zero.
        planes: [BufPlane; 4],
    }
}

wire_struct! {
    /// Forgets a buffer (REQBUFS(0), a new registration, close).
    BufUnregister => "dv_buf_unregister" {
        /// Context id.
        ctx_id: u32,
        /// `DV_QUEUE_*`
        queue: u32,
        /// V4L2 buffer index.
        index: u32,
        /// Zero.
        reserved: u32,
    }
}

wire_struct! {
    /// A reference picture of a job.
    RefEntry => "dv_ref" {
        /// The timestamp the controls name (nanoseconds, `v4l2_timeval_to_ns`).
        timestamp: u64,
        /// CAPTURE index holding it, or [`DV_NO_BUFFER`].
        capture_index: u32,
        /// Zero.
        reserved: u32,
    }
}

wire_struct! {
    /// A decode job. Followed by `ctrl_bytes` of controls, each a
    /// [`CtrlHeader`] and its payload padded to 8 bytes.
    DecodeJob => "dv_decode" {
        /// Context id.
        ctx_id: u32,
        /// `DV_DECODE_*`
        flags: u32,
        /// Frontend's job id; echoed in the result.
        cookie: u64,
        /// OUTPUT buffer timestamp (ns), copied to the CAPTURE buffer.
        timestamp: u64,
        /// OUTPUT buffer index.
        output_index: u32,
        /// Bitstream bytes in the OUTPUT buffer.
        bytesused: u32,
        /// CAPTURE buffer index.
        capture_index: u32,
        /// Valid entries of `refs`.
        num_refs: u32,
        /// Controls that follow.
        num_ctrls: u32,
        /// Bytes of controls that follow.
        ctrl_bytes: u32,
        /// References, resolved by the frontend.
        refs: [RefEntry; 16],
    }
}

wire_struct! {
    /// Header of one control in a decode job.
    CtrlHeader => "dv_ctrl" {
        /// `V4L2_CID_*`
        id: u32,
        /// Payload bytes (before padding).
        size: u32,
    }
}

wire_struct! {
    /// Asks the daemon to drop a job; it still answers with a result.
    Cancel => "dv_cancel" {
        /// Context id.
        ctx_id: u32,
        /// Zero.
        reserved: u32,
        /// The job.
        cookie: u64,
    }
}

wire_struct! {
    /// Outcome of a job.
    JobResult => "dv_result" {
        /// Context id.
        ctx_id: u32,
        /// `DV_STATUS_*`
        status: u32,
        /// The job's cookie.
        cookie: u64,
        /// Positive errno-style reason when `status` is ERROR.
        error: u32,
        /// `DV_RESULT_*`
        flags: u32,
        /// Bytes written per CAPTURE plane.
        bytesused: [u32; 4],
    }
}

wire_struct! {
    /// A context-level condition reported by the daemon.
    CtxStatus => "dv_ctx_status" {
        /// Context id.
        ctx_id: u32,
        /// 0 when the context is usable, else a positive errno (e.g. the
        /// codec or size is unsupported: its jobs will fail).
        error: u32,
    }
}

const _: () = assert!(size_of::<MsgHeader>() == 16);
const _: () = assert!(size_of::<Hello>() == 24);
const _: () = assert!(size_of::<PlaneFmt>() == 8);
const _: () = assert!(size_of::<CtxOpen>() == 64);
const _: () = assert!(size_of::<CtxClose>() == 8);
const _: () = assert!(size_of::<BufPlane>() == 16);
const _: () = assert!(size_of::<BufRegister>() == 88);
const _: () = assert!(size_of::<BufUnregister>() == 16);
const _: () = assert!(size_of::<RefEntry>() == 16);
const _: () = assert!(size_of::<DecodeJob>() == 304);
const _: () = assert!(size_of::<CtrlHeader>() == 8);
const _: () = assert!(size_of::<Cancel>() == 16);
const _: () = assert!(size_of::<JobResult>() == 40);
const _: () = assert!(size_of::<CtxStatus>() == 8);
const _: () = assert!(core::mem::offset_of!(DecodeJob, refs) == 48);
const _: () = assert!(core::mem::offset_of!(JobResult, bytesused) == 24);

/// Layout of every wire struct, for the C comparison test.
pub fn all_layouts() -> Vec<(&'static str, usize, Vec<FieldLayout>)> {
    fn one<T: WireLayout>() -> (&'static str, usize, Vec<FieldLayout>) {
        (T::C_NAME, size_of::<T>(), T::fields())
    }
    vec![
        one::<MsgHeader>(),
        one::<Hello>(),
        one::<PlaneFmt>(),
        one::<CtxOpen>(),
        one::<CtxClose>(),
        one::<BufPlane>(),
        one::<BufRegister>(),
        one::<BufUnregister>(),
        one::<RefEntry>(),
        one::<DecodeJob>(),
        one::<CtrlHeader>(),
        one::<Cancel>(),
        one::<JobResult>(),
        one::<CtxStatus>(),
    ]
}

/// Every constant the C header defines, by its C name.
pub fn all_constants() -> Vec<(&'static str, u64)> {
    let mut v = vec![
        ("DV_MAGIC", u64::from(DV_MAGIC)),
        ("DV_VERSION_MAJOR", u64::from(DV_VERSION_MAJOR)),
        ("DV_VERSION_MINOR", u64::from(DV_VERSION_MINOR)),
        ("DV_MAX_MSG_SIZE", u64::from(DV_MAX_MSG_SIZE)),
        ("DV_MAX_CTRLS", u64::from(DV_MAX_CTRLS)),
        ("DV_MAX_CTRL_SIZE", u64::from(DV_MAX_CTRL_SIZE)),
        ("DV_MAX_REFS", u64::from(DV_MAX_REFS)),
        ("DV_MAX_PLANES", u64::from(DV_MAX_PLANES)),
        ("DV_NO_BUFFER", u64::from(DV_NO_BUFFER)),
        ("DV_FEAT_DMABUF", DV_FEAT_DMABUF),
        ("DV_FEAT_MEMFD", DV_FEAT_MEMFD),
        ("DV_FEAT_CANCEL", DV_FEAT_CANCEL),
        ("DV_FEAT_HOLD_CAPTURE", DV_FEAT_HOLD_CAPTURE),
        ("DV_FEAT_ALL", DV_FEAT_ALL),
        ("DV_QUEUE_OUTPUT", u64::from(DV_QUEUE_OUTPUT)),
        ("DV_QUEUE_CAPTURE", u64::from(DV_QUEUE_CAPTURE)),
        ("DV_MEM_DMABUF", u64::from(DV_MEM_DMABUF)),
        ("DV_MEM_MEMFD", u64::from(DV_MEM_MEMFD)),
        ("DV_DECODE_HOLD_CAPTURE", u64::from(DV_DECODE_HOLD_CAPTURE)),
        ("DV_DECODE_CONTINUE", u64::from(DV_DECODE_CONTINUE)),
        ("DV_DECODE_ALL", u64::from(DV_DECODE_ALL)),
        ("DV_STATUS_DONE", u64::from(DV_STATUS_DONE)),
        ("DV_STATUS_ERROR", u64::from(DV_STATUS_ERROR)),
        ("DV_RESULT_KEYFRAME", u64::from(DV_RESULT_KEYFRAME)),
        ("DV_RESULT_CORRUPTED", u64::from(DV_RESULT_CORRUPTED)),
        ("DV_RESULT_ALL", u64::from(DV_RESULT_ALL)),
    ];
    for k in MsgKind::ALL {
        let name = match k {
            MsgKind::Hello => "DV_MSG_HELLO",
            MsgKind::HelloReply => "DV_MSG_HELLO_REPLY",
            MsgKind::CtxOpen => "DV_MSG_CTX_OPEN",
            MsgKind::CtxClose => "DV_MSG_CTX_CLOSE",
            MsgKind::BufRegister => "DV_MSG_BUF_REGISTER",
            MsgKind::BufUnregister => "DV_MSG_BUF_UNREGISTER",
            MsgKind::Decode => "DV_MSG_DECODE",
            MsgKind::Cancel => "DV_MSG_CANCEL",
            MsgKind::Result => "DV_MSG_RESULT",
            MsgKind::CtxStatus => "DV_MSG_CTX_STATUS",
        };
        v.push((name, k as u64));
    }
    v
}

/// Why a received message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// Fewer bytes than a header, or than the header's kind needs.
    #[error("message truncated: {got} bytes, need {need}")]
    Truncated {
        /// Bytes received.
        got: usize,
        /// Bytes needed.
        need: usize,
    },
    /// Not our magic.
    #[error("bad magic {0:#010x}")]
    BadMagic(u32),
    /// Another major version.
    #[error("unsupported protocol version {0}")]
    BadVersion(u16),
    /// Unknown message kind.
    #[error("unknown message kind {0}")]
    BadKind(u16),
    /// The header's length differs from the datagram's.
    #[error("header says {header} bytes, datagram has {got}")]
    LengthMismatch {
        /// Length in the header.
        header: u32,
        /// Bytes received.
        got: usize,
    },
    /// Larger than [`DV_MAX_MSG_SIZE`].
    #[error("message of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// A field is out of range (count above its limit, unknown flag, nonzero
    /// reserved field, inconsistent sizes).
    #[error("invalid field {0}")]
    BadField(&'static str),
}

impl ProtoError {
    /// errno for this error.
    pub fn errno(&self) -> i32 {
        match self {
            ProtoError::TooLarge(_) => crate::ctrl::libc_errno::E2BIG,
            _ => crate::ctrl::libc_errno::EPROTO,
        }
    }
}

/// A control inside a decode job, borrowed from the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireCtrl<'a> {
    /// `V4L2_CID_*`
    pub id: u32,
    /// Payload.
    pub payload: &'a [u8],
}

/// A decoded message.
// Decode is large (its fixed body is 304 bytes) but messages live only
// between a datagram and its handler: boxing would cost an allocation a job.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message<'a> {
    /// See [`MsgKind::Hello`].
    Hello(Hello),
    /// See [`MsgKind::HelloReply`].
    HelloReply(Hello),
    /// See [`MsgKind::CtxOpen`].
    CtxOpen(CtxOpen),
    /// See [`MsgKind::CtxClose`].
    CtxClose(CtxClose),
    /// See [`MsgKind::BufRegister`].
    BufRegister(BufRegister),
    /// See [`MsgKind::BufUnregister`].
    BufUnregister(BufUnregister),
    /// See [`MsgKind::Decode`].
    Decode(DecodeJob, Vec<WireCtrl<'a>>),
    /// See [`MsgKind::Cancel`].
    Cancel(Cancel),
    /// See [`MsgKind::Result`].
    Result(JobResult),
    /// See [`MsgKind::CtxStatus`].
    CtxStatus(CtxStatus),
}

impl Message<'_> {
    /// The kind of this message.
    pub fn kind(&self) -> MsgKind {
        match self {
            Message::Hello(_) => MsgKind::Hello,
            Message::HelloReply(_) => MsgKind::HelloReply,
            Message::CtxOpen(_) => MsgKind::CtxOpen,
            Message::CtxClose(_) => MsgKind::CtxClose,
            Message::BufRegister(_) => MsgKind::BufRegister,
            Message::BufUnregister(_) => MsgKind::BufUnregister,
            Message::Decode(..) => MsgKind::Decode,
            Message::Cancel(_) => MsgKind::Cancel,
            Message::Result(_) => MsgKind::Result,
            Message::CtxStatus(_) => MsgKind::CtxStatus,
        }
    }

    /// Appends the encoded message to `out`.
    pub fn encode(&self, seq: u32, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(MsgHeader::default().as_bytes());
        match self {
            Message::Hello(b) | Message::HelloReply(b) => out.extend_from_slice(b.as_bytes()),
            Message::CtxOpen(b) => out.extend_from_slice(b.as_bytes()),
            Message::CtxClose(b) => out.extend_from_slice(b.as_bytes()),
            Message::BufRegister(b) => out.extend_from_slice(b.as_bytes()),
            Message::BufUnregister(b) => out.extend_from_slice(b.as_bytes()),
            Message::Decode(job, ctrls) => {
                let body = out.len();
                out.extend_from_slice(job.as_bytes());
                let ctrl_start = out.len();
                for c in ctrls {
                    let h = CtrlHeader {
                        id: c.id,
                        size: c.payload.len() as u32,
                    };
                    out.extend_from_slice(h.as_bytes());
                    out.extend_from_slice(c.payload);
                    out.resize(out.len() + pad8(c.payload.len()), 0);
                }
                // The counts are derived from what was written, never trusted from the caller.
                let ctrl_bytes = (out.len() - ctrl_start) as u32;
                let mut j = *job;
                j.num_ctrls = ctrls.len() as u32;
                j.ctrl_bytes = ctrl_bytes;
                out[body..body + size_of::<DecodeJob>()].copy_from_slice(j.as_bytes());
            }
            Message::Cancel(b) => out.extend_from_slice(b.as_bytes()),
            Message::Result(b) => out.extend_from_slice(b.as_bytes()),
            Message::CtxStatus(b) => out.extend_from_slice(b.as_bytes()),
        }
        let h = MsgHeader {
            magic: DV_MAGIC,
            kind: self.kind() as u16,
            version: DV_VERSION_MAJOR,
            len: (out.len() - start) as u32,
            seq,
        };
        out[start..start + size_of::<MsgHeader>()].copy_from_slice(h.as_bytes());
    }

    /// Encodes into a fresh vector.
    pub fn to_bytes(&self, seq: u32) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode(seq, &mut v);
        v
    }
}

fn pad8(n: usize) -> usize {
    (8 - n % 8) % 8
}

/// Reads a `T` at the front of `buf`, checking the length.
fn read<T: FromBytes>(buf: &[u8]) -> Result<T, ProtoError> {
    T::read_from_prefix(buf)
        .map(|(v, _)| v)
        .map_err(|_| ProtoError::Truncated {
            got: buf.len(),
            need: size_of::<T>(),
        })
}

fn check(cond: bool, field: &'static str) -> Result<(), ProtoError> {
    if cond {
        Ok(())
    } else {
        Err(ProtoError::BadField(field))
    }
}

/// Decodes one datagram. Every count and size is checked against the
/// datagram's length and the protocol limits; nothing is sliced with a
/// peer's count before that check.
pub fn decode(buf: &[u8]) -> Result<Message<'_>, ProtoError> {
    if buf.len() > DV_MAX_MSG_SIZE as usize {
        return Err(ProtoError::TooLarge(buf.len()));
    }
    let h: MsgHeader = read(buf)?;
    if h.magic != DV_MAGIC {
        return Err(ProtoError::BadMagic(h.magic));
    }
    if h.version != DV_VERSION_MAJOR {
        return Err(ProtoError::BadVersion(h.version));
    }
    if h.len as usize != buf.len() {
        return Err(ProtoError::LengthMismatch {
            header: h.len,
            got: buf.len(),
        });
    }
    let kind = MsgKind::from_wire(h.kind).ok_or(ProtoError::BadKind(h.kind))?;
    let body = &buf[size_of::<MsgHeader>()..];
    let need = kind.body_size();
    if body.len() < need {
        return Err(ProtoError::Truncated {
            got: buf.len(),
            need: size_of::<MsgHeader>() + need,
        });
    }
    if kind != MsgKind::Decode && body.len() != need {
        return Err(ProtoError::BadField("len"));
    }
    Ok(match kind {
        MsgKind::Hello | MsgKind::HelloReply => {
            let m: Hello = read(body)?;
            check(m.reserved == 0, "hello.reserved")?;
            if kind == MsgKind::Hello {
                Message::Hello(m)
            } else {
                Message::HelloReply(m)
            }
        }
        MsgKind::CtxOpen => {
            let m: CtxOpen = read(body)?;
            check(
                crate::ctrl::Codec::from_wire(m.codec).is_some(),
                "ctx_open.codec",
            )?;
            check(
                m.num_planes >= 1 && m.num_planes <= DV_MAX_PLANES,
                "ctx_open.num_planes",
            )?;
            check(m.reserved == 0, "ctx_open.reserved")?;
            check(
                m.planes[m.num_planes as usize..]
                    .iter()
                    .all(|p| *p == PlaneFmt::default()),
                "ctx_open.planes",
            )?;
            Message::CtxOpen(m)
        }
        MsgKind::CtxClose => {
            let m: CtxClose = read(body)?;
            check(m.reserved == 0, "ctx_close.reserved")?;
            Message::CtxClose(m)
        }
        MsgKind::BufRegister => {
            let m: BufRegister = read(body)?;
            check(m.queue <= DV_QUEUE_CAPTURE, "buf_register.queue")?;
            check(
                m.num_planes >= 1 && m.num_planes <= DV_MAX_PLANES,
                "buf_register.num_planes",
            )?;
            check(
                m.memory == DV_MEM_DMABUF || m.memory == DV_MEM_MEMFD,
                "buf_register.memory",
            )?;
            check(m.reserved == 0, "buf_register.reserved")?;
            let used = &m.planes[..m.num_planes as usize];
            check(
                used.iter()
                    .all(|p| p.reserved == 0 && p.fd_index < DV_MAX_PLANES),
                "buf_register.planes",
            )?;
            check(
                used.iter()
                    .all(|p| u64::from(p.offset) + u64::from(p.length) <= u64::from(u32::MAX)),
                "buf_register.planes.length",
            )?;
            check(
                m.planes[m.num_planes as usize..]
                    .iter()
                    .all(|p| *p == BufPlane::default()),
                "buf_register.planes",
            )?;
            Message::BufRegister(m)
        }
        MsgKind::BufUnregister => {
            let m: BufUnregister = read(body)?;
            check(m.queue <= DV_QUEUE_CAPTURE, "buf_unregister.queue")?;
            check(m.reserved == 0, "buf_unregister.reserved")?;
            Message::BufUnregister(m)
        }
        MsgKind::Decode => {
            let m: DecodeJob = read(body)?;
            check(m.flags & !DV_DECODE_ALL == 0, "decode.flags")?;
            check(m.num_refs <= DV_MAX_REFS, "decode.num_refs")?;
            check(m.num_ctrls <= DV_MAX_CTRLS, "decode.num_ctrls")?;
            check(
                m.refs[m.num_refs as usize..]
                    .iter()
                    .all(|r| *r == RefEntry::default()),
                "decode.refs",
            )?;
            check(
                m.refs[..m.num_refs as usize]
                    .iter()
                    .all(|r| r.reserved == 0),
                "decode.refs.reserved",
            )?;
            let rest = &body[need..];
            check(rest.len() == m.ctrl_bytes as usize, "decode.ctrl_bytes")?;
            let ctrls = decode_ctrls(rest, m.num_ctrls)?;
            Message::Decode(m, ctrls)
        }
        MsgKind::Cancel => {
            let m: Cancel = read(body)?;
            check(m.reserved == 0, "cancel.reserved")?;
            Message::Cancel(m)
        }
        MsgKind::Result => {
            let m: JobResult = read(body)?;
            check(m.status <= DV_STATUS_ERROR, "result.status")?;
            check(m.flags & !DV_RESULT_ALL == 0, "result.flags")?;
            check(m.status == DV_STATUS_ERROR || m.error == 0, "result.error")?;
            Message::Result(m)
        }
        MsgKind::CtxStatus => Message::CtxStatus(read(body)?),
    })
}

/// Walks `num` controls in `buf`, which must be consumed exactly.
fn decode_ctrls(mut buf: &[u8], num: u32) -> Result<Vec<WireCtrl<'_>>, ProtoError> {
    let mut out = Vec::with_capacity(num as usize);
    for _ in 0..num {
        let h: CtrlHeader = read(buf)?;
        check(h.size <= DV_MAX_CTRL_SIZE, "ctrl.size")?;
        let size = h.size as usize;
        let total = size_of::<CtrlHeader>() + size + pad8(size);
        check(buf.len() >= total, "ctrl.size")?;
        let payload = &buf[size_of::<CtrlHeader>()..size_of::<CtrlHeader>() + size];
        check(
            buf[size_of::<CtrlHeader>() + size..total]
                .iter()
                .all(|b| *b == 0),
            "ctrl.padding",
        )?;
        out.push(WireCtrl { id: h.id, payload });
        buf = &buf[total..];
    }
    check(buf.is_empty(), "decode.ctrl_bytes")?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    // Golden vectors: written by hand from the layout in docs/protocol.md.
    #[test]
    fn golden_hello() {
        let m = Message::Hello(Hello {
            version_major: 1,
            version_minor: 0,
            max_inflight: 8,
            features: DV_FEAT_DMABUF | DV_FEAT_CANCEL,
            max_msg_size: 0x0010_0000,
            reserved: 0,
        });
        let want = hex("44 56 34 4c 01 00 01 00 28 00 00 00 07 00 00 00
             01 00 00 00 08 00 00 00 05 00 00 00 00 00 00 00
             00 00 10 00 00 00 00 00");
        assert_eq!(m.to_bytes(7), want);
        assert_eq!(decode(&want).unwrap(), m);
    }

    #[test]
    fn golden_hello_reply() {
        let m = Message::HelloReply(Hello {
            version_major: 1,
            version_minor: 2,
            max_inflight: 2,
            features: DV_FEAT_MEMFD,
            max_msg_size: 4096,
            reserved: 0,
        });
        let want = hex("44 56 34 4c 02 00 01 00 28 00 00 00 00 00 00 00
             01 00 02 00 02 00 00 00 02 00 00 00 00 00 00 00
             00 10 00 00 00 00 00 00");
        assert_eq!(m.to_bytes(0), want);
        assert_eq!(decode(&want).unwrap(), m);
    }

    #[test]
    fn golden_ctx_open() {
        let mut planes = [PlaneFmt::default(); 4];
        planes[0] = PlaneFmt {
            bytesperline: 64,
            sizeimage: 64 * 48 * 3 / 2,
        };
        let m = Message::CtxOpen(CtxOpen {
            ctx_id: 3,
            codec: 1,
            coded_fourcc: u32::from_le_bytes(*b"S264"),
            capture_fourcc: u32::from_le_bytes(*b"NV12"),
            width: 64,
            height: 48,
            num_planes: 1,
            reserved: 0,
            planes,
        });
        let want = hex("44 56 34 4c 03 00 01 00 50 00 00 00 01 00 00 00
             03 00 00 00 01 00 00 00 53 32 36 34 4e 56 31 32
             40 00 00 00 30 00 00 00 01 00 00 00 00 00 00 00
             40 00 00 00 00 12 00 00 00 00 00 00 00 00 00 00
             00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00");
        assert_eq!(m.to_bytes(1), want);
        assert_eq!(decode(&want).unwrap(), m);
    }

    #[test]
    fn golden_ctx_close_and_status() {
        let m = Message::CtxClose(CtxClose {
            ctx_id: 0x0102_0304,
            reserved: 0,
        });
        let want = hex("44 56 34 4c 04 00 01 00 18 00 00 00 02 00 00 00 04 03 02 01 00 00 00 00");
        assert_eq!(m.to_bytes(2), want);
        assert_eq!(decode(&want).unwrap(), m);
        let m = Message::CtxStatus(CtxStatus {
            ctx_id: 9,
            error: 22,
        });
        let want = hex("44 56 34 4c 11 00 01 00 18 00 00 00 00 00 00 00 09 00 00 00 16 00 00 00");
        assert_eq!(m.to_bytes(0), want);
        assert_eq!(decode(&want).unwrap(), m);
    }

    #[test]
    fn golden_buf_register_unregister() {
        let mut planes = [BufPlane::default(); 4];
        planes[0] = BufPlane {
            fd_index: 0,
            offset: 0,
            length: 0x1000,
            reserved: 0,
        };
        planes[1] = BufPlane {
            fd_index: 1,
            offset: 0x10,
            length: 0x800,
            reserved: 0,
        };
        let m = Message::BufRegister(BufRegister {
            ctx_id: 1,
            queue: DV_QUEUE_CAPTURE,
            index: 5,
            num_planes: 2,
            memory: DV_MEM_DMABUF,
            reserved: 0,
            planes,
        });
        let want = hex("44 56 34 4c 05 00 01 00 68 00 00 00 03 00 00 00
             01 00 00 00 01 00 00 00 05 00 00 00 02 00 00 00
             01 00 00 00 00 00 00 00
             00 00 00 00 00 00 00 00 00 10 00 00 00 00 00 00
             01 00 00 00 10 00 00 00 00 08 00 00 00 00 00 00
             00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
             00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00");
        assert_eq!(m.to_bytes(3), want);
        assert_eq!(decode(&want).unwrap(), m);
        let m = Message::BufUnregister(BufUnregister {
            ctx_id: 1,
            queue: DV_QUEUE_OUTPUT,
            index: 2,
            reserved: 0,
        });
        let want = hex("44 56 34 4c 06 00 01 00 20 00 00 00 04 00 00 00
             01 00 00 00 00 00 00 00 02 00 00 00 00 00 00 00");
        assert_eq!(m.to_bytes(4), want);
        assert_eq!(decode(&want).unwrap(), m);
    }

    #[test]
    fn golden_decode_with_ctrls() {
        let mut refs = [RefEntry::default(); 16];
        refs[0] = RefEntry {
            timestamp: 1000,
            capture_index: 2,
            reserved: 0,
        };
        let job = DecodeJob {
            ctx_id: 1,
            flags: DV_DECODE_HOLD_CAPTURE,
            cookie: 0x0000_0001_0000_002a,
            timestamp: 2000,
            output_index: 0,
            bytesused: 100,
            capture_index: 3,
            num_refs: 1,
            num_ctrls: 0,
            ctrl_bytes: 0,
            refs,
        };
        let payload_a = [0xaau8; 5];
        let payload_b = [0x11u8, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88];
        let m = Message::Decode(
            job,
            vec![
                WireCtrl {
                    id: 0x00a4_0902,
                    payload: &payload_a,
                },
                WireCtrl {
                    id: 0x00a4_0900,
                    payload: &payload_b,
                },
            ],
        );
        let bytes = m.to_bytes(5);
        // header: len = 16 + 304 + (8+5+3) + (8+8) = 352
        let mut want = hex("44 56 34 4c 07 00 01 00 60 01 00 00 05 00 00 00");
        want.extend(hex("01 00 00 00 01 00 00 00 2a 00 00 00 01 00 00 00
             d0 07 00 00 00 00 00 00 00 00 00 00 64 00 00 00
             03 00 00 00 01 00 00 00 02 00 00 00 20 00 00 00
             e8 03 00 00 00 00 00 00 02 00 00 00 00 00 00 00"));
        want.extend(std::iter::repeat_n(0u8, 15 * 16));
        want.extend(hex("02 09 a4 00 05 00 00 00 aa aa aa aa aa 00 00 00
             00 09 a4 00 08 00 00 00 11 22 33 44 55 66 77 88"));
        assert_eq!(bytes, want);
        match decode(&bytes).unwrap() {
            Message::Decode(j, c) => {
                assert_eq!(j.num_ctrls, 2);
                assert_eq!(j.ctrl_bytes, 32);
                assert_eq!(c.len(), 2);
                assert_eq!(c[0].payload, &payload_a);
                assert_eq!(c[1].payload, &payload_b);
            }
            other => panic!("decoded {other:?}"),
        }
    }

    #[test]
    fn golden_cancel_and_result() {
        let m = Message::Cancel(Cancel {
            ctx_id: 2,
            reserved: 0,
            cookie: 0x1122_3344_5566_7788,
        });
        let want = hex("44 56 34 4c 08 00 01 00 20 00 00 00 06 00 00 00
             02 00 00 00 00 00 00 00 88 77 66 55 44 33 22 11");
        assert_eq!(m.to_bytes(6), want);
        assert_eq!(decode(&want).unwrap(), m);
        let m = Message::Result(JobResult {
            ctx_id: 2,
            status: DV_STATUS_DONE,
            cookie: 7,
            error: 0,
            flags: DV_RESULT_KEYFRAME,
            bytesused: [6144, 0, 0, 0],
        });
        let want = hex("44 56 34 4c 10 00 01 00 38 00 00 00 00 00 00 00
             02 00 00 00 00 00 00 00 07 00 00 00 00 00 00 00
             00 00 00 00 01 00 00 00 00 18 00 00 00 00 00 00
             00 00 00 00 00 00 00 00");
        assert_eq!(m.to_bytes(0), want);
        assert_eq!(decode(&want).unwrap(), m);
    }

    fn valid_decode() -> Vec<u8> {
        let payload = [1u8, 2, 3];
        Message::Decode(
            DecodeJob {
                ctx_id: 1,
                num_refs: 0,
                ..Default::default()
            },
            vec![WireCtrl {
                id: 1,
                payload: &payload,
            }],
        )
        .to_bytes(0)
    }

    #[test]
    fn rejects_bad_headers() {
        let good = valid_decode();
        assert!(decode(&good).is_ok());
        assert!(matches!(
            decode(&good[..10]),
            Err(ProtoError::Truncated { .. })
        ));
        let mut b = good.clone();
        b[0] ^= 1;
        assert!(matches!(decode(&b), Err(ProtoError::BadMagic(_))));
        let mut b = good.clone();
        b[6] = 2;
        assert_eq!(decode(&b), Err(ProtoError::BadVersion(2)));
        let mut b = good.clone();
        b[4] = 99;
        assert_eq!(decode(&b), Err(ProtoError::BadKind(99)));
        let mut b = good.clone();
        b.push(0);
        assert!(matches!(decode(&b), Err(ProtoError::LengthMismatch { .. })));
        assert!(matches!(
            decode(&vec![0u8; DV_MAX_MSG_SIZE as usize + 1]),
            Err(ProtoError::TooLarge(_))
        ));
    }

    fn patch_u32(b: &mut [u8], off: usize, v: u32) {
        b[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }

    #[test]
    fn rejects_bad_decode_counts() {
        let h = size_of::<MsgHeader>();
        // a control count larger than what is there
        let mut b = valid_decode();
        patch_u32(&mut b, h + offset_of!(DecodeJob, num_ctrls), 2);
        assert!(decode(&b).is_err());
        // num_ctrls above the limit
        let mut b = valid_decode();
        patch_u32(
            &mut b,
            h + offset_of!(DecodeJob, num_ctrls),
            DV_MAX_CTRLS + 1,
        );
        assert_eq!(decode(&b), Err(ProtoError::BadField("decode.num_ctrls")));
        // ctrl_bytes disagreeing with the datagram
        let mut b = valid_decode();
        patch_u32(&mut b, h + offset_of!(DecodeJob, ctrl_bytes), 8);
        assert_eq!(decode(&b), Err(ProtoError::BadField("decode.ctrl_bytes")));
        // a control size pointing past the end
        let mut b = valid_decode();
        let c = h + size_of::<DecodeJob>();
        patch_u32(&mut b, c + 4, 0xffff_fff0);
        assert_eq!(decode(&b), Err(ProtoError::BadField("ctrl.size")));
        let mut b = valid_decode();
        patch_u32(&mut b, c + 4, 9);
        assert_eq!(decode(&b), Err(ProtoError::BadField("ctrl.size")));
        // nonzero padding
        let mut b = valid_decode();
        let last = b.len() - 1;
        b[last] = 1;
        assert_eq!(decode(&b), Err(ProtoError::BadField("ctrl.padding")));
        // too many refs
        let mut b = valid_decode();
        patch_u32(&mut b, h + offset_of!(DecodeJob, num_refs), 17);
        assert_eq!(decode(&b), Err(ProtoError::BadField("decode.num_refs")));
        // unknown flag
        let mut b = valid_decode();
        patch_u32(&mut b, h + offset_of!(DecodeJob, flags), 1 << 7);
        assert_eq!(decode(&b), Err(ProtoError::BadField("decode.flags")));
    }

    #[test]
    fn rejects_bad_fixed_bodies() {
        let r = JobResult {
            status: 5,
            ..Default::default()
        };
        assert_eq!(
            decode(&Message::Result(r).to_bytes(0)),
            Err(ProtoError::BadField("result.status"))
        );
        let r = JobResult {
            status: DV_STATUS_DONE,
            error: 5,
            ..Default::default()
        };
        assert_eq!(
            decode(&Message::Result(r).to_bytes(0)),
            Err(ProtoError::BadField("result.error"))
        );
        let mut b = Message::CtxClose(CtxClose::default()).to_bytes(0);
        b.extend_from_slice(&[0; 8]);
        let len = b.len() as u32;
        patch_u32(&mut b, 8, len);
        assert_eq!(decode(&b), Err(ProtoError::BadField("len")));
        let m = BufRegister {
            num_planes: 5,
            memory: DV_MEM_MEMFD,
            ..Default::default()
        };
        assert_eq!(
            decode(&Message::BufRegister(m).to_bytes(0)),
            Err(ProtoError::BadField("buf_register.num_planes"))
        );
        let m = CtxOpen {
            codec: 77,
            num_planes: 1,
            ..Default::default()
        };
        assert_eq!(
            decode(&Message::CtxOpen(m).to_bytes(0)),
            Err(ProtoError::BadField("ctx_open.codec"))
        );
    }

    use core::mem::offset_of;
}
