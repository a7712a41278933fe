//! Stateless codec controls of the Linux 6.12 uAPI.
//!
//! Each codec module (`h264`, `hevc`, `vp8`, `vp9`, `av1`) defines the
//! `#[repr(C)]` payload structs with the kernel's exact layout (names are the
//! CamelCase of the C struct, fields keep the C names), compile-time size
//! asserts, the default value the kernel initialises them with, and a
//! validation function equivalent to the kernel's `std_validate_compound`
//! plus the stricter bounds a consumer needs before it indexes anything with
//! a value it got from a client.
//!
//! The generic part here describes controls ([`CtrlDesc`]), keeps a set of
//! values ([`ControlValues`]) and validates a client's write
//! ([`validate_write`]).

use std::collections::BTreeMap;

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

pub mod av1;
pub mod h264;
pub mod hevc;
pub mod vp8;
pub mod vp9;

/// The coded formats (and so control families) the decoder supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u32)]
pub enum Codec {
    /// `V4L2_PIX_FMT_H264_SLICE`
    H264 = 1,
    /// `V4L2_PIX_FMT_HEVC_SLICE`
    Hevc = 2,
    /// `V4L2_PIX_FMT_VP8_FRAME`
    Vp8 = 3,
    /// `V4L2_PIX_FMT_VP9_FRAME`
    Vp9 = 4,
    /// `V4L2_PIX_FMT_AV1_FRAME`
    Av1 = 5,
}

impl Codec {
    /// All codecs, in protocol order.
    pub const ALL: [Codec; 5] = [Codec::H264, Codec::Hevc, Codec::Vp8, Codec::Vp9, Codec::Av1];

    /// Protocol value of this codec.
    pub fn to_wire(self) -> u32 {
        self as u32
    }

    /// Codec for a protocol value.
    pub fn from_wire(v: u32) -> Option<Codec> {
        Codec::ALL.into_iter().find(|c| c.to_wire() == v)
    }

    /// The control family of this codec.
    pub fn desc(self) -> &'static CodecDesc {
        match self {
            Codec::H264 => &h264::CODEC,
            Codec::Hevc => &hevc::CODEC,
            Codec::Vp8 => &vp8::CODEC,
            Codec::Vp9 => &vp9::CODEC,
            Codec::Av1 => &av1::CODEC,
        }
    }
}

/// `V4L2_CTRL_CLASS_CODEC_STATELESS`
pub const V4L2_CTRL_CLASS_CODEC_STATELESS: u32 = 0x00a4_0000;
/// `V4L2_CID_CODEC_STATELESS_BASE`
pub const V4L2_CID_CODEC_STATELESS_BASE: u32 = V4L2_CTRL_CLASS_CODEC_STATELESS | 0x900;
/// `V4L2_CTRL_CLASS_CODEC` (the old MPEG class: profiles and levels).
pub const V4L2_CTRL_CLASS_CODEC: u32 = 0x0099_0000;

/// `enum v4l2_ctrl_type` values used here.
pub mod ctrl_type {
    #![allow(missing_docs)]
    pub const INTEGER: u32 = 1;
    pub const BOOLEAN: u32 = 2;
    pub const MENU: u32 = 3;
    pub const BUTTON: u32 = 4;
    pub const INTEGER64: u32 = 5;
    pub const CTRL_CLASS: u32 = 6;
    pub const INTEGER_MENU: u32 = 9;
    pub const U8: u32 = 0x0100;
    pub const U16: u32 = 0x0101;
    pub const U32: u32 = 0x0102;
    pub const H264_SPS: u32 = 0x0200;
    pub const H264_PPS: u32 = 0x0201;
    pub const H264_SCALING_MATRIX: u32 = 0x0202;
    pub const H264_SLICE_PARAMS: u32 = 0x0203;
    pub const H264_DECODE_PARAMS: u32 = 0x0204;
    pub const H264_PRED_WEIGHTS: u32 = 0x0205;
    pub const VP8_FRAME: u32 = 0x0240;
    pub const VP9_COMPRESSED_HDR: u32 = 0x0260;
    pub const VP9_FRAME: u32 = 0x0261;
    pub const HEVC_SPS: u32 = 0x0270;
    pub const HEVC_PPS: u32 = 0x0271;
    pub const HEVC_SLICE_PARAMS: u32 = 0x0272;
    pub const HEVC_SCALING_MATRIX: u32 = 0x0273;
    pub const HEVC_DECODE_PARAMS: u32 = 0x0274;
    pub const AV1_SEQUENCE: u32 = 0x0280;
    pub const AV1_TILE_GROUP_ENTRY: u32 = 0x0281;
    pub const AV1_FRAME: u32 = 0x0282;
    pub const AV1_FILM_GRAIN: u32 = 0x0283;
}

/// `V4L2_CTRL_FLAG_*` values used here.
pub mod ctrl_flag {
    #![allow(missing_docs)]
    pub const READ_ONLY: u32 = 0x0004;
    pub const HAS_PAYLOAD: u32 = 0x0100;
    pub const DYNAMIC_ARRAY: u32 = 0x0800;
}

/// Why a control value was refused. Every variant maps to the errno the
/// kernel's control framework returns for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CtrlError {
    /// The control id is not one of this context's controls.
    #[error("unknown control {0:#x}")]
    Unknown(u32),
    /// The payload is smaller than the control (for a dynamic array: holds
    /// no whole element). The kernel answers `EFAULT`.
    #[error("control {id:#x}: payload of {got} bytes, expected {expected}")]
    Size {
        /// Control id.
        id: u32,
        /// Size given.
        got: usize,
        /// Size expected (one element, or the array maximum).
        expected: usize,
    },
    /// A dynamic array with more elements than the control allows.
    #[error("control {id:#x}: {got} elements, at most {max}")]
    TooManyElems {
        /// Control id.
        id: u32,
        /// Elements given.
        got: usize,
        /// Maximum.
        max: u32,
    },
    /// A field is out of its valid range.
    #[error("control {id:#x}: field {field} out of range")]
    Range {
        /// Control id.
        id: u32,
        /// Offending field, by its C name.
        field: &'static str,
    },
    /// The control is read-only.
    #[error("control {0:#x} is read-only")]
    ReadOnly(u32),
}

impl CtrlError {
    /// The errno a V4L2 ioctl returns for this error.
    pub fn errno(&self) -> i32 {
        match self {
            CtrlError::Unknown(_) => libc_errno::EINVAL,
            CtrlError::Size { .. } => libc_errno::EFAULT,
            CtrlError::TooManyElems { .. } => libc_errno::ENOSPC,
            CtrlError::Range { .. } => libc_errno::ERANGE,
            CtrlError::ReadOnly(_) => libc_errno::EACCES,
        }
    }

    /// Range error helper for validation functions.
    pub fn range(id: u32, field: &'static str) -> CtrlError {
        CtrlError::Range { id, field }
    }
}

/// Linux errno values (identical on every architecture we target).
pub mod libc_errno {
    #![allow(missing_docs)]
    pub const EPERM: i32 = 1;
    pub const ENOENT: i32 = 2;
    pub const EIO: i32 = 5;
    pub const E2BIG: i32 = 7;
    pub const EBADF: i32 = 9;
    pub const EAGAIN: i32 = 11;
    pub const ENOMEM: i32 = 12;
    pub const EACCES: i32 = 13;
    pub const EFAULT: i32 = 14;
    pub const EBUSY: i32 = 16;
    pub const ENODEV: i32 = 19;
    pub const EINVAL: i32 = 22;
    pub const ENOSPC: i32 = 28;
    pub const EPIPE: i32 = 32;
    pub const ERANGE: i32 = 34;
    pub const ENOTTY: i32 = 25;
    pub const EPROTO: i32 = 71;
    pub const EBADMSG: i32 = 74;
    pub const EBADR: i32 = 53;
    pub const ENODATA: i32 = 61;
    pub const ETIMEDOUT: i32 = 110;
    pub const ECANCELED: i32 = 125;
    pub const ENOTCONN: i32 = 107;
}

/// Validates (and, like the kernel, normalises: reserved fields zeroed) one
/// element of a compound control in place.
pub type ValidateFn = fn(&mut [u8]) -> Result<(), CtrlError>;
/// Writes the default value of one element.
pub type InitFn = fn(&mut [u8]);

/// Static description of one control, enough for QUERY_EXT_CTRL, QUERYMENU
/// and validation.
#[derive(Debug, Clone, Copy)]
pub struct CtrlDesc {
    /// `V4L2_CID_*`
    pub id: u32,
    /// The name the kernel reports (`v4l2_ctrl_get_name`).
    pub name: &'static str,
    /// `enum v4l2_ctrl_type`
    pub v4l2_type: u32,
    /// Size of one element in bytes (4 for integer and menu controls).
    pub elem_size: u32,
    /// 1 for a single value, the array maximum for dynamic arrays.
    pub max_elems: u32,
    /// `V4L2_CTRL_FLAG_*` reported by QUERY_EXT_CTRL.
    pub flags: u32,
    /// Minimum (integer and menu controls; 0 for compound controls).
    pub min: i64,
    /// Maximum (integer and menu controls; 0 for compound controls).
    pub max: i64,
    /// Step (1 for menus and integers, 0 for compound controls).
    pub step: u64,
    /// Default (integer and menu controls; 0 for compound controls).
    pub default: i64,
    /// Menu entries that are not supported (bit N set: entry N skipped).
    pub menu_skip_mask: u64,
    /// Menu entry names (index = value) for MENU controls, empty otherwise.
    pub menu: &'static [&'static str],
    /// Default value of one element (compound controls).
    pub init: Option<InitFn>,
    /// Validation of one element (compound controls).
    pub validate: Option<ValidateFn>,
}

impl CtrlDesc {
    /// True for compound (payload) controls.
    pub fn is_compound(&self) -> bool {
        self.v4l2_type >= 0x0100
    }

    /// True for dynamic-array controls.
    pub fn is_dynamic_array(&self) -> bool {
        self.flags & ctrl_flag::DYNAMIC_ARRAY != 0
    }

    /// The default value, as stored in [`ControlValues`].
    pub fn default_bytes(&self) -> Vec<u8> {
        if self.is_compound() {
            let mut v = vec![0u8; self.elem_size as usize];
            if let Some(init) = self.init {
                init(&mut v);
            }
            v
        } else {
            (self.default as i32).to_le_bytes().to_vec()
        }
    }

    /// Description of a compound control whose payload is `T`.
    pub const fn compound<T: CompoundControl>() -> CtrlDesc {
        CtrlDesc {
            id: T::ID,
            name: T::NAME,
            v4l2_type: T::V4L2_TYPE,
            elem_size: core::mem::size_of::<T>() as u32,
            max_elems: T::MAX_ELEMS,
            flags: ctrl_flag::HAS_PAYLOAD
                | if T::MAX_ELEMS > 1 {
                    ctrl_flag::DYNAMIC_ARRAY
                } else {
                    0
                },
            min: 0,
            max: 0,
            step: 0,
            default: 0,
            menu_skip_mask: 0,
            menu: &[],
            init: Some(init_as::<T>),
            validate: Some(validate_as::<T>),
        }
    }

    /// Description of a menu control.
    pub const fn menu(
        id: u32,
        name: &'static str,
        entries: &'static [&'static str],
        min: i64,
        max: i64,
        default: i64,
        skip_mask: u64,
    ) -> CtrlDesc {
        CtrlDesc {
            id,
            name,
            v4l2_type: ctrl_type::MENU,
            elem_size: 4,
            max_elems: 1,
            flags: 0,
            min,
            max,
            step: 1,
            default,
            menu_skip_mask: skip_mask,
            menu: entries,
            init: None,
            validate: None,
        }
    }
}

fn init_as<T: CompoundControl>(buf: &mut [u8]) {
    buf.copy_from_slice(T::default_value().as_bytes());
}

fn validate_as<T: CompoundControl>(buf: &mut [u8]) -> Result<(), CtrlError> {
    let mut v = T::read_from_bytes(buf).map_err(|_| CtrlError::Size {
        id: T::ID,
        got: buf.len(),
        expected: core::mem::size_of::<T>(),
    })?;
    v.validate()?;
    buf.copy_from_slice(v.as_bytes());
    Ok(())
}

/// A compound control payload with the kernel's layout.
pub trait CompoundControl:
    FromBytes + IntoBytes + Immutable + KnownLayout + Copy + 'static
{
    /// `V4L2_CID_STATELESS_*`
    const ID: u32;
    /// Name as `v4l2_ctrl_get_name()` reports it.
    const NAME: &'static str;
    /// `enum v4l2_ctrl_type`
    const V4L2_TYPE: u32;
    /// 1, or the maximum element count for a dynamic array.
    const MAX_ELEMS: u32 = 1;
    /// The value the kernel initialises the control with
    /// (`std_init_compound`).
    fn default_value() -> Self;
    /// `std_validate_compound` plus our stricter bounds. May normalise the
    /// value (zero reserved fields) as the kernel does.
    fn validate(&mut self) -> Result<(), CtrlError>;
}

/// Per-codec description: its controls and how to find its references.
#[derive(Debug)]
pub struct CodecDesc {
    /// The codec.
    pub codec: Codec,
    /// Every control a context of this codec exposes.
    pub controls: &'static [CtrlDesc],
    /// Appends the timestamps of every reference picture the given controls
    /// name (DPB entries, reference frame slots), in a fixed order. The
    /// frontend resolves each to a CAPTURE buffer.
    pub reference_timestamps: fn(&ControlValues, &mut Vec<u64>),
}

impl CodecDesc {
    /// Looks up a control of this codec.
    pub fn find(&self, id: u32) -> Option<&'static CtrlDesc> {
        self.controls.iter().find(|c| c.id == id)
    }
}

/// A set of control values, keyed by control id. Values are stored as the
/// raw little-endian payload (4 bytes for integer/menu controls).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ControlValues {
    map: BTreeMap<u32, Vec<u8>>,
}

impl ControlValues {
    /// Empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every control of `codec` at its default value.
    pub fn defaults(codec: Codec) -> Self {
        let mut s = Self::new();
        for d in codec.desc().controls {
            s.map.insert(d.id, d.default_bytes());
        }
        s
    }

    /// Raw payload of a control.
    pub fn get_raw(&self, id: u32) -> Option<&[u8]> {
        self.map.get(&id).map(|v| v.as_slice())
    }

    /// Stores an already validated payload.
    pub fn set_raw(&mut self, id: u32, bytes: Vec<u8>) {
        self.map.insert(id, bytes);
    }

    /// Stores a single-element compound control as built by the caller
    /// (validated later, where a frontend takes it: `Device::set_controls`).
    pub fn set<T: CompoundControl>(&mut self, c: &T) {
        self.set_raw(T::ID, c.as_bytes().to_vec());
    }

    /// A single-element compound control, copied out.
    pub fn get<T: CompoundControl>(&self) -> Option<T> {
        let raw = self.map.get(&T::ID)?;
        T::read_from_prefix(raw).ok().map(|(v, _)| v)
    }

    /// Every element of a (dynamic array) compound control.
    pub fn get_array<T: CompoundControl>(&self) -> Vec<T> {
        let Some(raw) = self.map.get(&T::ID) else {
            return Vec::new();
        };
        raw.chunks_exact(core::mem::size_of::<T>())
            .filter_map(|c| T::read_from_bytes(c).ok())
            .collect()
    }

    /// Value of an integer or menu control.
    pub fn get_int(&self, id: u32) -> Option<i32> {
        let raw = self.map.get(&id)?;
        Some(i32::from_le_bytes(raw.get(..4)?.try_into().ok()?))
    }

    /// Overlays `other` on `self`.
    pub fn merge(&mut self, other: &ControlValues) {
        for (k, v) in &other.map {
            self.map.insert(*k, v.clone());
        }
    }

    /// Iterates (id, payload) in id order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &[u8])> {
        self.map.iter().map(|(k, v)| (*k, v.as_slice()))
    }

    /// Number of controls in the set.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when the set is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Checks that need several controls of one request together (e.g. HEVC
/// slice reference indexes against the decode parameters' DPB size). Run
/// when a request is queued, on the values the job will be decoded with.
pub fn check_request(codec: Codec, ctrls: &ControlValues) -> Result<(), CtrlError> {
    match codec {
        Codec::Hevc => hevc::check_request(ctrls),
        Codec::Av1 => av1::check_request(ctrls),
        Codec::H264 | Codec::Vp8 | Codec::Vp9 => Ok(()),
    }
}

/// Validates a client's value for control `id` of `codec` and returns the
/// normalised payload to store. `bytes` is what the client passed: the whole
/// payload for compound controls, 4 little-endian bytes for integer and menu
/// controls.
pub fn validate_write(codec: Codec, id: u32, bytes: &[u8]) -> Result<Vec<u8>, CtrlError> {
    let d = codec.desc().find(id).ok_or(CtrlError::Unknown(id))?;
    if d.flags & ctrl_flag::READ_ONLY != 0 {
        return Err(CtrlError::ReadOnly(id));
    }
    let elem = d.elem_size as usize;
    if !d.is_compound() {
        let v: [u8; 4] = bytes.try_into().map_err(|_| CtrlError::Size {
            id,
            got: bytes.len(),
            expected: 4,
        })?;
        let v = i64::from(i32::from_le_bytes(v));
        if v < d.min || v > d.max {
            return Err(CtrlError::range(id, "value"));
        }
        if d.v4l2_type == ctrl_type::MENU
            && (0..64).contains(&v)
            && d.menu_skip_mask & (1u64 << v) != 0
        {
            return Err(CtrlError::range(id, "value"));
        }
        return Ok(v.to_le_bytes()[..4].to_vec());
    }
    // Like the kernel's prepare_ext_ctrls(): a payload larger than the
    // control is cut to it (a dynamic array to whole elements); one that is
    // smaller is refused.
    let n = if d.is_dynamic_array() {
        let n = bytes.len() / elem;
        if n == 0 {
            return Err(CtrlError::Size {
                id,
                got: bytes.len(),
                expected: elem,
            });
        }
        if n > d.max_elems as usize {
            return Err(CtrlError::TooManyElems {
                id,
                got: n,
                max: d.max_elems,
            });
        }
        n
    } else {
        if bytes.len() < elem {
            return Err(CtrlError::Size {
                id,
                got: bytes.len(),
                expected: elem,
            });
        }
        1
    };
    let mut out = bytes[..n * elem].to_vec();
    if let Some(validate) = d.validate {
        for i in 0..n {
            validate(&mut out[i * elem..(i + 1) * elem])?;
        }
    }
    Ok(out)
}
