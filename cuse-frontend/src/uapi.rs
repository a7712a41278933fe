//! The V4L2 and media-controller uAPI structs this frontend serves, with
//! the x86-64 layouts of Linux 6.12 (`videodev2.h`, `media.h`), and their
//! ioctl numbers. Sizes are checked by tests against the C headers' values.

#![allow(missing_docs)]

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

const IOC_WRITE: u32 = 1;
const IOC_READ: u32 = 2;

/// `_IOC(dir, type, nr, size)`
pub const fn ioc(dir: u32, ty: u8, nr: u8, size: usize) -> u32 {
    (dir << 30) | ((size as u32) << 16) | ((ty as u32) << 8) | nr as u32
}
const fn iowr(ty: u8, nr: u8, size: usize) -> u32 {
    ioc(IOC_READ | IOC_WRITE, ty, nr, size)
}
const fn ior(ty: u8, nr: u8, size: usize) -> u32 {
    ioc(IOC_READ, ty, nr, size)
}
const fn iow(ty: u8, nr: u8, size: usize) -> u32 {
    ioc(IOC_WRITE, ty, nr, size)
}

/// Direction bits of an ioctl number: (copies in, copies out).
pub fn ioc_dir(cmd: u32) -> (bool, bool) {
    let d = cmd >> 30;
    (d & IOC_WRITE != 0, d & IOC_READ != 0)
}

/// Size field of an ioctl number.
pub fn ioc_size(cmd: u32) -> usize {
    ((cmd >> 16) & 0x3fff) as usize
}

macro_rules! sz {
    ($t:ty) => {
        core::mem::size_of::<$t>()
    };
}

pub const VIDIOC_QUERYCAP: u32 = ior(b'V', 0, sz!(Capability));
pub const VIDIOC_ENUM_FMT: u32 = iowr(b'V', 2, sz!(FmtDesc));
pub const VIDIOC_G_FMT: u32 = iowr(b'V', 4, sz!(Format));
pub const VIDIOC_S_FMT: u32 = iowr(b'V', 5, sz!(Format));
pub const VIDIOC_REQBUFS: u32 = iowr(b'V', 8, sz!(RequestBuffers));
pub const VIDIOC_QUERYBUF: u32 = iowr(b'V', 9, sz!(Buffer));
pub const VIDIOC_QBUF: u32 = iowr(b'V', 15, sz!(Buffer));
pub const VIDIOC_EXPBUF: u32 = iowr(b'V', 16, 64);
pub const VIDIOC_DQBUF: u32 = iowr(b'V', 17, sz!(Buffer));
pub const VIDIOC_STREAMON: u32 = iow(b'V', 18, 4);
pub const VIDIOC_STREAMOFF: u32 = iow(b'V', 19, 4);
pub const VIDIOC_G_CTRL: u32 = iowr(b'V', 27, 8);
pub const VIDIOC_S_CTRL: u32 = iowr(b'V', 28, 8);
pub const VIDIOC_QUERYCTRL: u32 = iowr(b'V', 36, sz!(QueryCtrl));
pub const VIDIOC_QUERYMENU: u32 = iowr(b'V', 37, sz!(QueryMenu));
pub const VIDIOC_TRY_FMT: u32 = iowr(b'V', 64, sz!(Format));
pub const VIDIOC_G_PRIORITY: u32 = ior(b'V', 67, 4);
pub const VIDIOC_S_PRIORITY: u32 = iow(b'V', 68, 4);
pub const VIDIOC_G_EXT_CTRLS: u32 = iowr(b'V', 71, sz!(ExtControls));
pub const VIDIOC_S_EXT_CTRLS: u32 = iowr(b'V', 72, sz!(ExtControls));
pub const VIDIOC_TRY_EXT_CTRLS: u32 = iowr(b'V', 73, sz!(ExtControls));
pub const VIDIOC_ENUM_FRAMESIZES: u32 = iowr(b'V', 74, sz!(FrmSizeEnum));
pub const VIDIOC_DQEVENT: u32 = ior(b'V', 89, sz!(V4l2Event));
pub const VIDIOC_SUBSCRIBE_EVENT: u32 = iow(b'V', 90, sz!(EventSubscription));
pub const VIDIOC_UNSUBSCRIBE_EVENT: u32 = iow(b'V', 91, sz!(EventSubscription));
pub const VIDIOC_CREATE_BUFS: u32 = iowr(b'V', 92, sz!(CreateBuffers));
pub const VIDIOC_PREPARE_BUF: u32 = iowr(b'V', 93, sz!(Buffer));
pub const VIDIOC_G_SELECTION: u32 = iowr(b'V', 94, sz!(Selection));
pub const VIDIOC_DECODER_CMD: u32 = iowr(b'V', 96, sz!(DecoderCmd));
pub const VIDIOC_TRY_DECODER_CMD: u32 = iowr(b'V', 97, sz!(DecoderCmd));
pub const VIDIOC_QUERY_EXT_CTRL: u32 = iowr(b'V', 103, sz!(QueryExtCtrl));

pub const MEDIA_IOC_DEVICE_INFO: u32 = iowr(b'|', 0x00, sz!(MediaDeviceInfo));
pub const MEDIA_IOC_ENUM_ENTITIES: u32 = iowr(b'|', 0x01, sz!(MediaEntityDesc));
pub const MEDIA_IOC_ENUM_LINKS: u32 = iowr(b'|', 0x02, sz!(MediaLinksEnum));
pub const MEDIA_IOC_SETUP_LINK: u32 = iowr(b'|', 0x03, 52);
pub const MEDIA_IOC_G_TOPOLOGY: u32 = iowr(b'|', 0x04, sz!(MediaTopology));
pub const MEDIA_IOC_REQUEST_ALLOC: u32 = ior(b'|', 0x05, 4);
pub const MEDIA_REQUEST_IOC_QUEUE: u32 = ioc(0, b'|', 0x80, 0);
pub const MEDIA_REQUEST_IOC_REINIT: u32 = ioc(0, b'|', 0x81, 0);

pub const BUF_TYPE_VIDEO_CAPTURE_MPLANE: u32 = 9;
pub const BUF_TYPE_VIDEO_OUTPUT_MPLANE: u32 = 10;
pub const MEMORY_MMAP: u32 = 1;
pub const MEMORY_USERPTR: u32 = 2;
pub const MEMORY_DMABUF: u32 = 4;
pub const FIELD_NONE: u32 = 1;
pub const VIDEO_MAX_PLANES: u32 = 8;

pub const CAP_VIDEO_M2M_MPLANE: u32 = 0x0000_4000;
pub const CAP_EXT_PIX_FORMAT: u32 = 0x0020_0000;
pub const CAP_STREAMING: u32 = 0x0400_0000;
pub const CAP_DEVICE_CAPS: u32 = 0x8000_0000;

pub const FMT_FLAG_COMPRESSED: u32 = 0x0001;
pub const FRMSIZE_TYPE_STEPWISE: u32 = 3;

pub const BUF_CAP_SUPPORTS_MMAP: u32 = 1 << 0;
pub const BUF_CAP_SUPPORTS_USERPTR: u32 = 1 << 1;
pub const BUF_CAP_SUPPORTS_DMABUF: u32 = 1 << 2;
pub const BUF_CAP_SUPPORTS_REQUESTS: u32 = 1 << 3;
pub const BUF_CAP_SUPPORTS_ORPHANED_BUFS: u32 = 1 << 4;
pub const BUF_CAP_SUPPORTS_M2M_HOLD_CAPTURE_BUF: u32 = 1 << 5;

pub const BUF_FLAG_MAPPED: u32 = 0x0001;
pub const BUF_FLAG_QUEUED: u32 = 0x0002;
pub const BUF_FLAG_DONE: u32 = 0x0004;
pub const BUF_FLAG_PREPARED: u32 = 0x0400;
pub const BUF_FLAG_IN_REQUEST: u32 = 0x0080;
pub const BUF_FLAG_REQUEST_FD: u32 = 0x0080_0000;
pub const BUF_FLAG_TIMESTAMP_COPY: u32 = 0x4000;

pub const CTRL_WHICH_CUR_VAL: u32 = 0;
pub const CTRL_WHICH_DEF_VAL: u32 = 0x0f00_0000;
pub const CTRL_WHICH_REQUEST_VAL: u32 = 0x0f01_0000;
pub const CTRL_FLAG_NEXT_CTRL: u32 = 0x8000_0000;
pub const CTRL_FLAG_NEXT_COMPOUND: u32 = 0x4000_0000;
pub const CID_MAX_CTRLS: u32 = 1024;

pub const EVENT_ALL: u32 = 0;
pub const EVENT_EOS: u32 = 2;
pub const EVENT_CTRL: u32 = 3;
pub const EVENT_SOURCE_CHANGE: u32 = 5;
pub const EVENT_SUB_FL_SEND_INITIAL: u32 = 1;
pub const EVENT_CTRL_CH_VALUE: u32 = 1;
pub const EVENT_CTRL_CH_FLAGS: u32 = 2;
pub const EVENT_CTRL_CH_RANGE: u32 = 4;

pub const DEC_CMD_START: u32 = 0;
pub const DEC_CMD_STOP: u32 = 1;
pub const DEC_CMD_PAUSE: u32 = 2;
pub const DEC_CMD_RESUME: u32 = 3;
pub const DEC_CMD_FLUSH: u32 = 4;

pub const PRIORITY_BACKGROUND: u32 = 1;
pub const PRIORITY_INTERACTIVE: u32 = 2;
pub const PRIORITY_RECORD: u32 = 3;

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct Capability {
    pub driver: [u8; 16],
    pub card: [u8; 32],
    pub bus_info: [u8; 32],
    pub version: u32,
    pub capabilities: u32,
    pub device_caps: u32,
    pub reserved: [u32; 3],
}

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct FmtDesc {
    pub index: u32,
    pub type_: u32,
    pub flags: u32,
    pub description: [u8; 32],
    pub pixelformat: u32,
    pub mbus_code: u32,
    pub reserved: [u32; 3],
}

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Default)]
#[repr(C)]
pub struct PlanePixFormat {
    pub sizeimage: u32,
    pub bytesperline: u32,
    pub reserved: [u16; 6],
}

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct PixFormatMplane {
    pub width: u32,
    pub height: u32,
    pub pixelformat: u32,
    pub field: u32,
    pub colorspace: u32,
    pub plane_fmt: [PlanePixFormat; 8],
    pub num_planes: u8,
    pub flags: u8,
    pub ycbcr_enc: u8,
    pub quantization: u8,
    pub xfer_func: u8,
    pub reserved: [u8; 7],
}

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct Format {
    pub type_: u32,
    pub pad: u32,
    pub pix_mp: PixFormatMplane,
    pub rest: [u8; 8],
}

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct FrmSizeEnum {
    pub index: u32,
    pub pixel_format: u32,
    pub type_: u32,
    /// stepwise: min_width, max_width, step_width, min_height, max_height, step_height
    pub u: [u32; 6],
    pub reserved: [u32; 2],
}

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct RequestBuffers {
    pub count: u32,
    pub type_: u32,
    pub memory: u32,
    pub capabilities: u32,
    pub flags: u8,
    pub reserved: [u8; 3],
}

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct Buffer {
    pub index: u32,
    pub type_: u32,
    pub bytesused: u32,
    pub flags: u32,
    pub field: u32,
    pub pad0: u32,
    pub tv_sec: i64,
    pub tv_usec: i64,
    pub timecode: [u32; 4],
    pub sequence: u32,
    pub memory: u32,
    /// offset / userptr / planes pointer / fd
    pub m: u64,
    pub length: u32,
    pub reserved2: u32,
    pub request_fd: i32,
    pub pad1: u32,
}

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Default)]
#[repr(C)]
pub struct Plane {
    pub bytesused: u32,
    pub length: u32,
    /// mem_offset / userptr / fd
    pub m: u64,
    pub data_offset: u32,
    pub reserved: [u32; 11],
}

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct CreateBuffers {
    pub index: u32,
    pub count: u32,
    pub memory: u32,
    pub pad: u32,
    pub format: Format,
    pub capabilities: u32,
    pub flags: u32,
    pub max_num_buffers: u32,
    pub reserved: [u32; 5],
}

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct ExtControls {
    pub which: u32,
    pub count: u32,
    pub error_idx: u32,
    pub request_fd: i32,
    pub reserved: u32,
    pub pad: u32,
    pub controls: u64,
}

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C, packed)]
pub struct ExtControl {
    pub id: u32,
    pub size: u32,
    pub reserved2: u32,
    /// value / value64 / pointer
    pub value: u64,
}

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct QueryExtCtrl {
    pub id: u32,
    pub type_: u32,
    pub name: [u8; 32],
    pub minimum: i64,
    pub maximum: i64,
    pub step: u64,
    pub default_value: i64,
    pub flags: u32,
    pub elem_size: u32,
    pub elems: u32,
    pub nr_of_dims: u32,
    pub dims: [u32; 4],
    pub reserved: [u32; 32],
}

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct QueryCtrl {
    pub id: u32,
    pub type_: u32,
    pub name: [u8; 32],
    pub minimum: i32,
    pub maximum: i32,
    pub step: i32,
    pub default_value: i32,
    pub flags: u32,
    pub reserved: [u32; 2],
}

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C, packed)]
pub struct QueryMenu {
    pub id: u32,
    pub index: u32,
    pub name: [u8; 32],
    pub reserved: u32,
}

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct EventSubscription {
    pub type_: u32,
    pub id: u32,
    pub flags: u32,
    pub reserved: [u32; 5],
}

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct V4l2Event {
    pub type_: u32,
    pub pad: u32,
    pub u: [u8; 64],
    pub pending: u32,
    pub sequence: u32,
    pub ts_sec: i64,
    pub ts_nsec: i64,
    pub id: u32,
    pub reserved: [u32; 8],
    pub pad2: u32,
}

/// `struct v4l2_event_ctrl` (the first 40 bytes of [`V4l2Event::u`]).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Default)]
#[repr(C)]
pub struct EventCtrl {
    pub changes: u32,
    pub type_: u32,
    pub value64: i64,
    pub flags: u32,
    pub minimum: i32,
    pub maximum: i32,
    pub step: i32,
    pub default_value: i32,
    pub pad: u32,
}

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct DecoderCmd {
    pub cmd: u32,
    pub flags: u32,
    pub raw: [u32; 16],
}

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct Selection {
    pub type_: u32,
    pub target: u32,
    pub flags: u32,
    pub left: i32,
    pub top: i32,
    pub width: u32,
    pub height: u32,
    pub reserved: [u32; 9],
}

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct MediaDeviceInfo {
    pub driver: [u8; 16],
    pub model: [u8; 32],
    pub serial: [u8; 40],
    pub bus_info: [u8; 32],
    pub media_version: u32,
    pub hw_revision: u32,
    pub driver_version: u32,
    pub reserved: [u32; 31],
}

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Default)]
#[repr(C)]
pub struct MediaTopology {
    pub topology_version: u64,
    pub num_entities: u32,
    pub reserved1: u32,
    pub ptr_entities: u64,
    pub num_interfaces: u32,
    pub reserved2: u32,
    pub ptr_interfaces: u64,
    pub num_pads: u32,
    pub reserved3: u32,
    pub ptr_pads: u64,
    pub num_links: u32,
    pub reserved4: u32,
    pub ptr_links: u64,
}

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct MediaEntity {
    pub id: u32,
    pub name: [u8; 64],
    pub function: u32,
    pub flags: u32,
    pub reserved: [u32; 5],
}

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct MediaInterface {
    pub id: u32,
    pub intf_type: u32,
    pub flags: u32,
    pub reserved: [u32; 9],
    pub major: u32,
    pub minor: u32,
    pub raw: [u32; 14],
}

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct MediaPad {
    pub id: u32,
    pub entity_id: u32,
    pub flags: u32,
    pub index: u32,
    pub reserved: [u32; 4],
}

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct MediaLink {
    pub id: u32,
    pub source_id: u32,
    pub sink_id: u32,
    pub flags: u32,
    pub reserved: [u32; 6],
}

/// `struct media_entity_desc` (the old enumeration API).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct MediaEntityDesc {
    pub id: u32,
    pub name: [u8; 32],
    pub type_: u32,
    pub revision: u32,
    pub flags: u32,
    pub group_id: u32,
    pub pads: u16,
    pub links: u16,
    pub reserved: [u32; 4],
    /// `dev.major`, `dev.minor`, then the rest of the union.
    pub raw: [u32; 46],
}

/// `struct media_links_enum`
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct MediaLinksEnum {
    pub entity: u32,
    pub pad: u32,
    pub pads: u64,
    pub links: u64,
    pub reserved: [u32; 4],
}

/// Copies `s` into a fixed C string field (NUL-terminated, truncated).
pub fn cstr<const N: usize>(s: &str) -> [u8; N] {
    let mut out = [0u8; N];
    let n = s.len().min(N - 1);
    out[..n].copy_from_slice(&s.as_bytes()[..n]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sizes and ioctl numbers as the 6.12 headers define them (printed
    /// by a C program against linux-libc-dev).
    #[test]
    fn sizes_and_numbers() {
        assert_eq!(sz!(Capability), 104);
        assert_eq!(sz!(FmtDesc), 64);
        assert_eq!(sz!(Format), 208);
        assert_eq!(sz!(PixFormatMplane), 192);
        assert_eq!(sz!(FrmSizeEnum), 44);
        assert_eq!(sz!(RequestBuffers), 20);
        assert_eq!(sz!(Buffer), 88);
        assert_eq!(sz!(Plane), 64);
        assert_eq!(sz!(CreateBuffers), 256);
        assert_eq!(sz!(ExtControls), 32);
        assert_eq!(sz!(ExtControl), 20);
        assert_eq!(sz!(QueryExtCtrl), 232);
        assert_eq!(sz!(QueryCtrl), 68);
        assert_eq!(sz!(QueryMenu), 44);
        assert_eq!(sz!(EventSubscription), 32);
        assert_eq!(sz!(V4l2Event), 136);
        assert_eq!(sz!(EventCtrl), 40);
        assert_eq!(sz!(DecoderCmd), 72);
        assert_eq!(sz!(Selection), 64);
        assert_eq!(sz!(MediaDeviceInfo), 256);
        assert_eq!(sz!(MediaTopology), 72);
        assert_eq!(sz!(MediaEntity), 96);
        assert_eq!(sz!(MediaInterface), 112);
        assert_eq!(sz!(MediaPad), 32);
        assert_eq!(sz!(MediaLink), 40);
        assert_eq!(sz!(MediaEntityDesc), 256);
        assert_eq!(sz!(MediaLinksEnum), 40);
        assert_eq!(MEDIA_IOC_ENUM_ENTITIES, 0xc100_7c01);
        assert_eq!(MEDIA_IOC_ENUM_LINKS, 0xc028_7c02);
        assert_eq!(MEDIA_IOC_SETUP_LINK, 0xc034_7c03);
        assert_eq!(VIDIOC_QUERYCAP, 0x8068_5600);
        assert_eq!(VIDIOC_G_FMT, 0xc0d0_5604);
        assert_eq!(VIDIOC_TRY_FMT, 0xc0d0_5640);
        assert_eq!(VIDIOC_REQBUFS, 0xc014_5608);
        assert_eq!(VIDIOC_QBUF, 0xc058_560f);
        assert_eq!(VIDIOC_DQBUF, 0xc058_5611);
        assert_eq!(VIDIOC_STREAMON, 0x4004_5612);
        assert_eq!(ioc_size(VIDIOC_S_EXT_CTRLS), 32);
        assert_eq!(ioc_dir(VIDIOC_QUERYCAP), (false, true));
        assert_eq!(ioc_dir(MEDIA_REQUEST_IOC_QUEUE), (false, false));
    }
}
