//! A decoder plugin for tests: implements the C ABI of
//! `include/daedalus_backend.h` without decoding anything.
//!
//! Each picture is a deterministic gradient computed from everything the
//! host passed for it, so a test can recompute the expected bytes and catch
//! any field the host passes wrongly:
//!
//! * `seed` = FNV-1a 64 over, in order: every control of the job completing
//!   the picture (`id` and `size` as little-endian u32, then the payload),
//!   the picture's bitstream (all its slices concatenated), the timestamp
//!   (little-endian u64) and every reference timestamp (little-endian u64);
//! * sample of plane `p` (0 = Y, 1 = Cb, 2 = Cr) at column `x` (for chroma:
//!   the CbCr pair index) and row `y`:
//!   `v = (seed >> 8p) as u32 + x * (p + 1) + y * (2p + 3)` (wrapping),
//!   stored as `v as u8` in NV12 and as the little-endian u16
//!   `(v & 0x3ff) << 6` in P010. Bytes beyond each row's width are not
//!   written.
//!
//! The first byte of a picture's bitstream selects what the plugin does:
//! `K` key frame; `P` inter picture (needs every reference flagged decoded
//! and no pending key frame, else `DAEDALUS_NEED_KEYFRAME`); `E` fails with
//! errno = second byte; `W` claims more bytes written than the plane holds;
//! `S` claims fewer than the picture needs; `H` returns `DAEDALUS_HELD` even
//! for the last slice. Anything else is `-EBADMSG`.
//!
//! The plugin announces H.264, VP8 and VP9, and refuses (returns NULL to)
//! hosts of another ABI major. `daedalus_test_plugin_live_sessions()`
//! counts the sessions created and not yet destroyed.

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

use std::ffi::{c_char, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicI64, Ordering};

const ABI_MAJOR: u16 = 1;
const ABI_MINOR: u16 = 0;
const MAX_PLANES: usize = 4;
const MESSAGE_SIZE: usize = 128;

const DECODED: i32 = 0;
const HELD: i32 = 1;
const NEED_KEYFRAME: i32 = 2;
const JOB_MORE_SLICES: u32 = 1 << 0;
const JOB_CONTINUES_PICTURE: u32 = 1 << 1;
const REF_DECODED: u32 = 1 << 0;
const RESULT_KEYFRAME: u32 = 1 << 0;

const FOURCC_NV12: u32 = u32::from_le_bytes(*b"NV12");
const FOURCC_P010: u32 = u32::from_le_bytes(*b"P010");

const CODEC_H264: u32 = 1;
const CODEC_VP8: u32 = 3;
const CODEC_VP9: u32 = 4;
const CODECS: u32 = (1 << CODEC_H264) | (1 << CODEC_VP8) | (1 << CODEC_VP9);

const EIO: i32 = 5;
const EINVAL: i32 = 22;
const ENOSPC: i32 = 28;
const EBADMSG: i32 = 74;
const EOPNOTSUPP: i32 = 95;

#[repr(C)]
struct SessionParams {
    struct_size: u32,
    codec: u32,
    width: u32,
    height: u32,
    fourcc: u32,
    num_planes: u32,
    stride: [u32; MAX_PLANES],
}

#[repr(C)]
struct Control {
    id: u32,
    size: u32,
    data: *const c_void,
}

#[repr(C)]
struct Reference {
    timestamp: u64,
    flags: u32,
    reserved: u32,
}

#[repr(C)]
struct Job {
    struct_size: u32,
    codec: u32,
    timestamp: u64,
    flags: u32,
    num_controls: u32,
    controls: *const Control,
    bitstream: *const u8,
    bitstream_len: u64,
    references: *const Reference,
    num_references: u32,
    reserved: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Plane {
    length: u64,
    data: *mut u8,
    stride: u32,
    reserved: u32,
}

#[repr(C)]
struct Capture {
    struct_size: u32,
    fourcc: u32,
    width: u32,
    height: u32,
    num_planes: u32,
    reserved: u32,
    planes: [Plane; MAX_PLANES],
}

#[repr(C)]
struct DecodeResult {
    struct_size: u32,
    flags: u32,
    bytes_written: [u64; MAX_PLANES],
    message: [c_char; MESSAGE_SIZE],
}

#[repr(C)]
struct Descriptor {
    abi_major: u16,
    abi_minor: u16,
    struct_size: u32,
    name: *const c_char,
    codecs: u32,
    flags: u32,
    create: unsafe extern "C" fn(*const SessionParams, *mut *mut Session) -> i32,
    decode:
        unsafe extern "C" fn(*mut Session, *const Job, *const Capture, *mut DecodeResult) -> i32,
    reset: unsafe extern "C" fn(*mut Session),
    destroy: unsafe extern "C" fn(*mut Session),
}

/// The descriptor is immutable; its only pointer is to a static string.
struct SyncDescriptor(Descriptor);
// SAFETY: nothing mutates the descriptor and the name it points to is a
// 'static immutable string, so sharing it between threads is sound.
unsafe impl Sync for SyncDescriptor {}

static DESCRIPTOR: SyncDescriptor = SyncDescriptor(Descriptor {
    abi_major: ABI_MAJOR,
    abi_minor: ABI_MINOR,
    struct_size: std::mem::size_of::<Descriptor>() as u32,
    name: c"daedalus-test".as_ptr(),
    codecs: CODECS,
    flags: 0,
    create,
    decode,
    reset,
    destroy,
});

static LIVE: AtomicI64 = AtomicI64::new(0);

/// A session: the negotiated format and the decoding state.
struct Session {
    codec: u32,
    width: u32,
    height: u32,
    fourcc: u32,
    need_key: bool,
    /// Slices of the picture being assembled.
    held: Vec<u8>,
    held_ts: Option<u64>,
}

/// The entry point: the descriptor for ABI 1.x hosts, NULL for others.
#[no_mangle]
pub extern "C" fn daedalus_backend_entry(host_major: u32, _host_minor: u32) -> *const c_void {
    if host_major != u32::from(ABI_MAJOR) {
        return std::ptr::null();
    }
    std::ptr::from_ref(&DESCRIPTOR.0).cast()
}

/// Sessions created and not yet destroyed.
#[no_mangle]
pub extern "C" fn daedalus_test_plugin_live_sessions() -> i64 {
    LIVE.load(Ordering::SeqCst)
}

fn guarded(f: impl FnOnce() -> i32) -> i32 {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(-EIO)
}

unsafe extern "C" fn create(params: *const SessionParams, out: *mut *mut Session) -> i32 {
    guarded(|| {
        if params.is_null() || out.is_null() {
            return -EINVAL;
        }
        // SAFETY: the host passes a valid params struct for the call.
        let p = unsafe { &*params };
        if (p.struct_size as usize) < std::mem::size_of::<SessionParams>() {
            return -EINVAL;
        }
        if p.codec >= 32 || CODECS & (1 << p.codec) == 0 {
            return -EOPNOTSUPP;
        }
        if p.fourcc != FOURCC_NV12 && p.fourcc != FOURCC_P010 {
            return -EOPNOTSUPP;
        }
        if p.width == 0 || p.height == 0 || p.width > 16384 || p.height > 16384 {
            return -EINVAL;
        }
        let bps = if p.fourcc == FOURCC_P010 { 2 } else { 1 };
        if p.num_planes != 2
            || p.stride[0] < p.width * bps
            || p.stride[1] < p.width.div_ceil(2) * 2 * bps
        {
            return -EINVAL;
        }
        let s = Box::new(Session {
            codec: p.codec,
            width: p.width,
            height: p.height,
            fourcc: p.fourcc,
            need_key: true,
            held: Vec::new(),
            held_ts: None,
        });
        LIVE.fetch_add(1, Ordering::SeqCst);
        // SAFETY: `out` is a valid pointer for writes during the call.
        unsafe { *out = Box::into_raw(s) };
        0
    })
}

unsafe extern "C" fn reset(session: *mut Session) {
    // SAFETY: the host passes a live session it does not use elsewhere.
    let Some(s) = (unsafe { session.as_mut() }) else {
        return;
    };
    s.need_key = true;
    s.held.clear();
    s.held_ts = None;
}

unsafe extern "C" fn destroy(session: *mut Session) {
    if session.is_null() {
        return;
    }
    // SAFETY: `session` came from `Box::into_raw` in `create` and the host
    // destroys it once.
    drop(unsafe { Box::from_raw(session) });
    LIVE.fetch_sub(1, Ordering::SeqCst);
}

fn set_message(result: &mut DecodeResult, text: &str) {
    let n = text.len().min(MESSAGE_SIZE - 1);
    for (d, &b) in result.message.iter_mut().zip(&text.as_bytes()[..n]) {
        *d = c_char::from_ne_bytes([b]);
    }
    result.message[n] = 0;
}

/// A slice from a (pointer, length) pair, empty when the length is 0.
///
/// # Safety
/// When `len > 0`, `ptr` must be valid for reads of `len` elements during
/// the borrow.
unsafe fn slice<'a, T>(ptr: *const T, len: usize) -> Option<&'a [T]> {
    if len == 0 {
        return Some(&[]);
    }
    if ptr.is_null() {
        return None;
    }
    // SAFETY: guaranteed by the caller.
    Some(unsafe { std::slice::from_raw_parts(ptr, len) })
}

struct Fnv(u64);

impl Fnv {
    fn add(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

fn sample(seed: u64, plane: u32, x: u32, y: u32) -> u32 {
    ((seed >> (plane * 8)) as u32)
        .wrapping_add(x.wrapping_mul(plane + 1))
        .wrapping_add(y.wrapping_mul(2 * plane + 3))
}

unsafe extern "C" fn decode(
    session: *mut Session,
    job: *const Job,
    capture: *const Capture,
    result: *mut DecodeResult,
) -> i32 {
    guarded(|| {
        // SAFETY: the host passes a live session, not used elsewhere during
        // the call, and valid job, capture and result structs.
        let (s, job, cap, result) = unsafe {
            match (
                session.as_mut(),
                job.as_ref(),
                capture.as_ref(),
                result.as_mut(),
            ) {
                (Some(s), Some(j), Some(c), Some(r)) => (s, j, c, r),
                _ => return -EINVAL,
            }
        };
        // SAFETY: as above, with the pointers and lengths of the ABI.
        unsafe { decode_job(s, job, cap, result) }
    })
}

/// # Safety
/// The job's and capture's pointers must be valid as the ABI says.
unsafe fn decode_job(s: &mut Session, job: &Job, cap: &Capture, result: &mut DecodeResult) -> i32 {
    if (job.struct_size as usize) < std::mem::size_of::<Job>()
        || (cap.struct_size as usize) < std::mem::size_of::<Capture>()
        || (result.struct_size as usize) < std::mem::size_of::<DecodeResult>()
    {
        set_message(result, "struct too small");
        return -EINVAL;
    }
    if job.codec != s.codec || job.reserved != 0 || cap.reserved != 0 {
        set_message(result, "job does not match the session");
        return -EINVAL;
    }
    // SAFETY: the ABI makes these arrays valid for their lengths during
    // the call.
    let parts = unsafe {
        (
            slice(job.controls, job.num_controls as usize),
            slice(job.bitstream, job.bitstream_len as usize),
            slice(job.references, job.num_references as usize),
        )
    };
    let (Some(controls), Some(bitstream), Some(refs)) = parts else {
        set_message(result, "NULL array with a length");
        return -EINVAL;
    };
    if controls.windows(2).any(|w| w[0].id >= w[1].id) {
        set_message(result, "controls not in ascending id order");
        return -EINVAL;
    }

    // Slices: a new picture drops whatever was held.
    if job.flags & JOB_CONTINUES_PICTURE == 0 || s.held_ts != Some(job.timestamp) {
        s.held.clear();
    }
    s.held.extend_from_slice(bitstream);
    if job.flags & JOB_MORE_SLICES != 0 {
        s.held_ts = Some(job.timestamp);
        return HELD;
    }
    s.held_ts = None;
    let data = std::mem::take(&mut s.held);

    let mut keyframe = false;
    let mut misreport = 0i64;
    match data.first() {
        Some(b'K') => keyframe = true,
        Some(b'P') => {
            if s.need_key || refs.iter().any(|r| r.flags & REF_DECODED == 0) {
                s.need_key = true;
                return NEED_KEYFRAME;
            }
        }
        Some(b'E') => {
            let e = i32::from(data.get(1).copied().unwrap_or(EIO as u8));
            set_message(result, &format!("injected error {e}"));
            if e == EBADMSG {
                s.need_key = true;
            }
            return -e;
        }
        Some(b'W') => misreport = 1,
        Some(b'S') => misreport = -1,
        Some(b'H') => return HELD,
        _ => {
            s.need_key = true;
            set_message(result, "unknown picture type");
            return -EBADMSG;
        }
    }

    if cap.fourcc != s.fourcc || cap.width != s.width || cap.height != s.height {
        set_message(result, "capture format differs from the session");
        return -EINVAL;
    }
    if cap.num_planes != 2 {
        return -EINVAL;
    }
    let p010 = cap.fourcc == FOURCC_P010;
    let bps: usize = if p010 { 2 } else { 1 };
    let w = cap.width as usize;
    let h = cap.height as usize;
    let shapes = [(h, w * bps), (h.div_ceil(2), w.div_ceil(2) * 2 * bps)];
    let mut extent = [0u64; 2];
    for (i, &(rows, row)) in shapes.iter().enumerate() {
        let p = cap.planes[i];
        let stride = p.stride as usize;
        let need = if rows == 0 {
            0
        } else {
            (rows - 1) * stride + row
        };
        if p.data.is_null() || stride < row || (p.length as usize) < need {
            set_message(result, &format!("plane {i} too small"));
            return -ENOSPC;
        }
        extent[i] = need as u64;
    }

    let mut fnv = Fnv(0xcbf2_9ce4_8422_2325);
    for c in controls {
        // SAFETY: the ABI makes every control payload valid for `size`
        // bytes during the call.
        let Some(payload) = (unsafe { slice(c.data.cast::<u8>(), c.size as usize) }) else {
            return -EINVAL;
        };
        fnv.add(&c.id.to_le_bytes());
        fnv.add(&c.size.to_le_bytes());
        fnv.add(payload);
    }
    fnv.add(&data);
    fnv.add(&job.timestamp.to_le_bytes());
    for r in refs {
        fnv.add(&r.timestamp.to_le_bytes());
    }
    let seed = fnv.0;

    for (i, &(rows, _)) in shapes.iter().enumerate() {
        let p = cap.planes[i];
        // SAFETY: the host gives `length` writable bytes at `data`, not
        // aliased by anything else during the call (checked non-null
        // above).
        let mem = unsafe { std::slice::from_raw_parts_mut(p.data, p.length as usize) };
        let stride = p.stride as usize;
        for y in 0..rows {
            let row = &mut mem[y * stride..];
            let put = |row: &mut [u8], idx: usize, v: u32| {
                if p010 {
                    let b = (((v & 0x3ff) << 6) as u16).to_le_bytes();
                    row[idx * 2..idx * 2 + 2].copy_from_slice(&b);
                } else {
                    row[idx] = v as u8;
                }
            };
            if i == 0 {
                for x in 0..w {
                    put(row, x, sample(seed, 0, x as u32, y as u32));
                }
            } else {
                for x in 0..w.div_ceil(2) {
                    put(row, 2 * x, sample(seed, 1, x as u32, y as u32));
                    put(row, 2 * x + 1, sample(seed, 2, x as u32, y as u32));
                }
            }
        }
    }

    result.bytes_written = [0; MAX_PLANES];
    for (i, &e) in extent.iter().enumerate() {
        result.bytes_written[i] = match misreport {
            1 => cap.planes[i].length + 1,
            -1 => e - 1,
            _ => e,
        };
    }
    if keyframe {
        result.flags |= RESULT_KEYFRAME;
        s.need_key = false;
    }
    set_message(result, &format!("seed {seed:016x}"));
    DECODED
}
