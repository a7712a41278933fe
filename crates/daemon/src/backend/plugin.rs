//! Plugin backends: decoders in a shared library loaded at run time.
//!
//! A plugin implements the C ABI of `include/daedalus_backend.h` (contract:
//! `docs/backend-abi.md`). [`PluginLibrary::load`] opens the library, calls
//! its entry point and checks the descriptor it returns (ABI major, struct
//! size, non-null functions); [`PluginLibrary::backend`] then opens
//! [`PluginBackend`] sessions, which implement [`Backend`].
//!
//! [`abi`] mirrors the header's structs as `#[repr(C)]` types;
//! `tests/plugin_abi.rs` compares their layout with what a C compiler makes
//! of the header. Every foreign call of the daemon's plugin support is in
//! this module.

use std::collections::{BTreeSet, HashSet};
use std::ffi::{c_void, CStr};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Arc;

use decoder_core::ctrl::Codec;
use parking_lot::Mutex;

use super::{
    Backend, CaptureFormat, CapturePlane, CaptureTarget, DecodeError, DecodeOutcome, JobInput,
};

/// The `#[repr(C)]` twins of the structs and constants of
/// `include/daedalus_backend.h` (same names without the `daedalus_`
/// prefix, CamelCase).
pub mod abi {
    use std::ffi::{c_char, c_void};
    use std::mem::{offset_of, size_of};

    /// `DAEDALUS_BACKEND_ABI_MAJOR`: the ABI major this daemon speaks.
    pub const ABI_MAJOR: u16 = 1;
    /// `DAEDALUS_BACKEND_ABI_MINOR`: the newest minor this daemon knows.
    pub const ABI_MINOR: u16 = 0;
    /// `DAEDALUS_BACKEND_ENTRY_SYMBOL`.
    pub const ENTRY_SYMBOL: &str = "daedalus_backend_entry";

    /// `DAEDALUS_CODEC_H264`.
    pub const CODEC_H264: u32 = 1;
    /// `DAEDALUS_CODEC_HEVC`.
    pub const CODEC_HEVC: u32 = 2;
    /// `DAEDALUS_CODEC_VP8`.
    pub const CODEC_VP8: u32 = 3;
    /// `DAEDALUS_CODEC_VP9`.
    pub const CODEC_VP9: u32 = 4;
    /// `DAEDALUS_CODEC_AV1`.
    pub const CODEC_AV1: u32 = 5;

    /// `DAEDALUS_FOURCC_NV12`.
    pub const FOURCC_NV12: u32 = u32::from_le_bytes(*b"NV12");
    /// `DAEDALUS_FOURCC_P010`.
    pub const FOURCC_P010: u32 = u32::from_le_bytes(*b"P010");

    /// `DAEDALUS_MAX_PLANES`.
    pub const MAX_PLANES: usize = 4;
    /// `DAEDALUS_MESSAGE_SIZE`.
    pub const MESSAGE_SIZE: usize = 128;

    /// `DAEDALUS_DECODED`: the picture is complete in the planes.
    pub const DECODED: i32 = 0;
    /// `DAEDALUS_HELD`: the slice was kept, the planes are untouched.
    pub const HELD: i32 = 1;
    /// `DAEDALUS_NEED_KEYFRAME`: skipped while waiting for a key frame.
    pub const NEED_KEYFRAME: i32 = 2;

    /// `DAEDALUS_JOB_MORE_SLICES`.
    pub const JOB_MORE_SLICES: u32 = 1 << 0;
    /// `DAEDALUS_JOB_CONTINUES_PICTURE`.
    pub const JOB_CONTINUES_PICTURE: u32 = 1 << 1;
    /// `DAEDALUS_REF_DECODED`.
    pub const REF_DECODED: u32 = 1 << 0;
    /// `DAEDALUS_RESULT_KEYFRAME`.
    pub const RESULT_KEYFRAME: u32 = 1 << 0;

    /// `struct daedalus_session`: opaque, defined by the plugin.
    #[repr(C)]
    pub struct Session {
        _opaque: [u8; 0],
    }

    /// `struct daedalus_session_params`.
    #[repr(C)]
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub struct SessionParams {
        /// Size of the struct as the host knows it.
        pub struct_size: u32,
        /// Codec number.
        pub codec: u32,
        /// Coded width in pixels.
        pub width: u32,
        /// Coded height in pixels.
        pub height: u32,
        /// `FOURCC_*` of the capture buffers.
        pub fourcc: u32,
        /// Image planes of the capture buffers.
        pub num_planes: u32,
        /// Bytes per row of each plane.
        pub stride: [u32; MAX_PLANES],
    }

    /// `struct daedalus_control`.
    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    pub struct Control {
        /// V4L2 control id.
        pub id: u32,
        /// Payload bytes.
        pub size: u32,
        /// Payload.
        pub data: *const c_void,
    }

    /// `struct daedalus_reference`.
    #[repr(C)]
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub struct Reference {
        /// Timestamp (ns) of the reference picture.
        pub timestamp: u64,
        /// `REF_*` flags.
        pub flags: u32,
        /// Zero.
        pub reserved: u32,
    }

    /// `struct daedalus_job`.
    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    pub struct Job {
        /// Size of the struct as the host knows it.
        pub struct_size: u32,
        /// Codec number.
        pub codec: u32,
        /// Timestamp (ns) naming the decoded picture.
        pub timestamp: u64,
        /// `JOB_*` flags.
        pub flags: u32,
        /// Entries of `controls`.
        pub num_controls: u32,
        /// Controls, ascending id order.
        pub controls: *const Control,
        /// Bitstream bytes.
        pub bitstream: *const u8,
        /// Length of `bitstream`.
        pub bitstream_len: u64,
        /// Reference pictures.
        pub references: *const Reference,
        /// Entries of `references`.
        pub num_references: u32,
        /// Zero.
        pub reserved: u32,
    }

    /// `struct daedalus_plane`.
    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    pub struct Plane {
        /// Writable bytes at `data`.
        pub length: u64,
        /// Plane memory.
        pub data: *mut u8,
        /// Bytes per row.
        pub stride: u32,
        /// Zero.
        pub reserved: u32,
    }

    /// `struct daedalus_capture`.
    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    pub struct Capture {
        /// Size of the struct as the host knows it.
        pub struct_size: u32,
        /// `FOURCC_*`.
        pub fourcc: u32,
        /// Pixels per row to write.
        pub width: u32,
        /// Luma rows to write.
        pub height: u32,
        /// Used entries of `planes`.
        pub num_planes: u32,
        /// Zero.
        pub reserved: u32,
        /// Image planes (Y, CbCr).
        pub planes: [Plane; MAX_PLANES],
    }

    /// `struct daedalus_decode_result`.
    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    pub struct DecodeResult {
        /// Size of the struct as the host knows it.
        pub struct_size: u32,
        /// `RESULT_*` flags.
        pub flags: u32,
        /// Per plane, one past the last byte written.
        pub bytes_written: [u64; MAX_PLANES],
        /// NUL-terminated message.
        pub message: [c_char; MESSAGE_SIZE],
    }

    /// `daedalus_create_fn`.
    pub type CreateFn =
        unsafe extern "C" fn(params: *const SessionParams, session: *mut *mut Session) -> i32;
    /// `daedalus_decode_fn`.
    pub type DecodeFn = unsafe extern "C" fn(
        session: *mut Session,
        job: *const Job,
        capture: *const Capture,
        result: *mut DecodeResult,
    ) -> i32;
    /// `daedalus_reset_fn` and `daedalus_destroy_fn`.
    pub type SessionFn = unsafe extern "C" fn(session: *mut Session);
    /// `daedalus_backend_entry_fn`.
    pub type EntryFn =
        unsafe extern "C" fn(host_abi_major: u32, host_abi_minor: u32) -> *const Descriptor;

    /// `struct daedalus_backend`, the plugin descriptor. The function
    /// pointers are `Option`s because a plugin may leave them NULL (the
    /// loader refuses it then).
    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    pub struct Descriptor {
        /// ABI major of the plugin.
        pub abi_major: u16,
        /// ABI minor of the plugin.
        pub abi_minor: u16,
        /// Size of the descriptor as the plugin knows it.
        pub struct_size: u32,
        /// NUL-terminated name.
        pub name: *const c_char,
        /// Bit `1 << codec` of every supported codec.
        pub codecs: u32,
        /// Zero.
        pub flags: u32,
        /// Creates a session.
        pub create: Option<CreateFn>,
        /// Decodes a job.
        pub decode: Option<DecodeFn>,
        /// Resets a session.
        pub reset: Option<SessionFn>,
        /// Destroys a session.
        pub destroy: Option<SessionFn>,
    }

    /// Descriptor bytes every ABI 1.x plugin provides (all of 1.0's fields).
    pub const DESCRIPTOR_MIN_SIZE: usize = size_of::<Descriptor>();

    // The LP64 layout (the Raspberry Pi 5 and every 64-bit Linux target).
    // The C comparison test checks any target it runs on.
    #[cfg(target_pointer_width = "64")]
    const _: () = {
        assert!(size_of::<SessionParams>() == 40);
        assert!(offset_of!(SessionParams, stride) == 24);
        assert!(size_of::<Control>() == 16);
        assert!(offset_of!(Control, data) == 8);
        assert!(size_of::<Reference>() == 16);
        assert!(offset_of!(Reference, flags) == 8);
        assert!(size_of::<Job>() == 64);
        assert!(offset_of!(Job, timestamp) == 8);
        assert!(offset_of!(Job, flags) == 16);
        assert!(offset_of!(Job, num_controls) == 20);
        assert!(offset_of!(Job, controls) == 24);
        assert!(offset_of!(Job, bitstream) == 32);
        assert!(offset_of!(Job, bitstream_len) == 40);
        assert!(offset_of!(Job, references) == 48);
        assert!(offset_of!(Job, num_references) == 56);
        assert!(offset_of!(Job, reserved) == 60);
        assert!(size_of::<Plane>() == 24);
        assert!(offset_of!(Plane, data) == 8);
        assert!(offset_of!(Plane, stride) == 16);
        assert!(size_of::<Capture>() == 24 + 4 * 24);
        assert!(offset_of!(Capture, planes) == 24);
        assert!(size_of::<DecodeResult>() == 8 + 32 + 128);
        assert!(offset_of!(DecodeResult, bytes_written) == 8);
        assert!(offset_of!(DecodeResult, message) == 40);
        assert!(size_of::<Descriptor>() == 56);
        assert!(offset_of!(Descriptor, name) == 8);
        assert!(offset_of!(Descriptor, codecs) == 16);
        assert!(offset_of!(Descriptor, create) == 24);
        assert!(offset_of!(Descriptor, decode) == 32);
        assert!(offset_of!(Descriptor, reset) == 40);
        assert!(offset_of!(Descriptor, destroy) == 48);
    };

    /// One field of a struct layout.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Field {
        /// Field name (identical in C).
        pub name: &'static str,
        /// Byte offset.
        pub offset: usize,
        /// Byte size.
        pub size: usize,
    }

    fn size_of_field<T, F>(_: fn(&T) -> &F) -> usize {
        size_of::<F>()
    }

    macro_rules! layout {
        ($c:literal, $t:ty { $($f:ident),* $(,)? }) => {
            (
                $c,
                size_of::<$t>(),
                vec![$(Field {
                    name: stringify!($f),
                    offset: offset_of!($t, $f),
                    size: size_of_field(|s: &$t| &s.$f),
                }),*],
            )
        };
    }

    /// Every struct of the header: C name, size and fields in order.
    pub fn layouts() -> Vec<(&'static str, usize, Vec<Field>)> {
        vec![
            layout!(
                "daedalus_session_params",
                SessionParams {
                    struct_size,
                    codec,
                    width,
                    height,
                    fourcc,
                    num_planes,
                    stride
                }
            ),
            layout!("daedalus_control", Control { id, size, data }),
            layout!(
                "daedalus_reference",
                Reference {
                    timestamp,
                    flags,
                    reserved
                }
            ),
            layout!(
                "daedalus_job",
                Job {
                    struct_size,
                    codec,
                    timestamp,
                    flags,
                    num_controls,
                    controls,
                    bitstream,
                    bitstream_len,
                    references,
                    num_references,
                    reserved
                }
            ),
            layout!(
                "daedalus_plane",
                Plane {
                    length,
                    data,
                    stride,
                    reserved
                }
            ),
            layout!(
                "daedalus_capture",
                Capture {
                    struct_size,
                    fourcc,
                    width,
                    height,
                    num_planes,
                    reserved,
                    planes
                }
            ),
            layout!(
                "daedalus_decode_result",
                DecodeResult {
                    struct_size,
                    flags,
                    bytes_written,
                    message
                }
            ),
            layout!(
                "daedalus_backend",
                Descriptor {
                    abi_major,
                    abi_minor,
                    struct_size,
                    name,
                    codecs,
                    flags,
                    create,
                    decode,
                    reset,
                    destroy
                }
            ),
        ]
    }

    /// Every numeric constant of the header with its value.
    pub fn constants() -> Vec<(&'static str, u64)> {
        vec![
            ("DAEDALUS_BACKEND_ABI_MAJOR", ABI_MAJOR.into()),
            ("DAEDALUS_BACKEND_ABI_MINOR", ABI_MINOR.into()),
            ("DAEDALUS_CODEC_H264", CODEC_H264.into()),
            ("DAEDALUS_CODEC_HEVC", CODEC_HEVC.into()),
            ("DAEDALUS_CODEC_VP8", CODEC_VP8.into()),
            ("DAEDALUS_CODEC_VP9", CODEC_VP9.into()),
            ("DAEDALUS_CODEC_AV1", CODEC_AV1.into()),
            ("DAEDALUS_FOURCC_NV12", FOURCC_NV12.into()),
            ("DAEDALUS_FOURCC_P010", FOURCC_P010.into()),
            ("DAEDALUS_MAX_PLANES", MAX_PLANES as u64),
            ("DAEDALUS_MESSAGE_SIZE", MESSAGE_SIZE as u64),
            ("DAEDALUS_DECODED", DECODED as u64),
            ("DAEDALUS_HELD", HELD as u64),
            ("DAEDALUS_NEED_KEYFRAME", NEED_KEYFRAME as u64),
            ("DAEDALUS_JOB_MORE_SLICES", JOB_MORE_SLICES.into()),
            (
                "DAEDALUS_JOB_CONTINUES_PICTURE",
                JOB_CONTINUES_PICTURE.into(),
            ),
            ("DAEDALUS_REF_DECODED", REF_DECODED.into()),
            ("DAEDALUS_RESULT_KEYFRAME", RESULT_KEYFRAME.into()),
        ]
    }
}

/// Linux errno values the ABI gives a meaning to.
mod errno {
    pub const ENOMEM: i32 = 12;
    pub const EINVAL: i32 = 22;
    pub const ENOSPC: i32 = 28;
    pub const EBADMSG: i32 = 74;
    pub const EOPNOTSUPP: i32 = 95;
}

/// Why a plugin could not be loaded or could not open a session.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// `dlopen` failed: no such file, not a shared library, unresolved
    /// dependencies...
    #[error("backend plugin {}: cannot load the library: {source}", path.display())]
    Load {
        /// Library path.
        path: PathBuf,
        /// The loader's error.
        #[source]
        source: libloading::Error,
    },
    /// The library does not export the entry point.
    #[error("backend plugin {}: no entry point `{symbol}`: {source}", path.display())]
    MissingSymbol {
        /// Library path.
        path: PathBuf,
        /// The symbol looked for.
        symbol: &'static str,
        /// The loader's error.
        #[source]
        source: libloading::Error,
    },
    /// The entry point returned NULL: the plugin cannot serve this host's
    /// ABI version.
    #[error(
        "backend plugin {}: the entry point refused host ABI {}.{}",
        path.display(), abi::ABI_MAJOR, abi::ABI_MINOR
    )]
    Refused {
        /// Library path.
        path: PathBuf,
    },
    /// The descriptor pointer is not aligned for the descriptor struct.
    #[error("backend plugin {}: misaligned descriptor at {addr:#x}", path.display())]
    Misaligned {
        /// Library path.
        path: PathBuf,
        /// The descriptor address.
        addr: usize,
    },
    /// The plugin was built for another ABI major.
    #[error(
        "backend plugin {}: ABI version {major}.{minor}, this daemon needs {}.x",
        path.display(), abi::ABI_MAJOR
    )]
    AbiVersion {
        /// Library path.
        path: PathBuf,
        /// The plugin's ABI major.
        major: u16,
        /// The plugin's ABI minor.
        minor: u16,
    },
    /// The descriptor is smaller than its ABI version requires.
    #[error(
        "backend plugin {}: descriptor of {size} bytes, ABI {major}.{minor} needs at least {min}",
        path.display()
    )]
    DescriptorSize {
        /// Library path.
        path: PathBuf,
        /// The plugin's `struct_size`.
        size: u32,
        /// The minimum size.
        min: usize,
        /// The plugin's ABI major.
        major: u16,
        /// The plugin's ABI minor.
        minor: u16,
    },
    /// A mandatory descriptor pointer is NULL.
    #[error("backend plugin {}: descriptor field `{field}` is NULL", path.display())]
    NullPointer {
        /// Library path.
        path: PathBuf,
        /// The C field name.
        field: &'static str,
    },
    /// The plugin name is not UTF-8.
    #[error("backend plugin {}: the name is not UTF-8", path.display())]
    BadName {
        /// Library path.
        path: PathBuf,
    },
    /// The plugin does not announce the codec.
    #[error(
        "backend plugin {} ({name}) does not decode {codec:?} (it decodes: {supported})",
        path.display()
    )]
    UnsupportedCodec {
        /// Library path.
        path: PathBuf,
        /// Plugin name.
        name: &'static str,
        /// The codec asked for.
        codec: Codec,
        /// The codecs it announces.
        supported: String,
    },
    /// The plugin's `create` failed.
    #[error(
        "backend plugin {} ({name}): cannot create a {codec:?} session: errno {errno}",
        path.display()
    )]
    CreateSession {
        /// Library path.
        path: PathBuf,
        /// Plugin name.
        name: &'static str,
        /// The codec asked for.
        codec: Codec,
        /// The plugin's error (positive errno).
        errno: i32,
    },
}

impl From<PluginError> for DecodeError {
    fn from(e: PluginError) -> Self {
        match e {
            PluginError::UnsupportedCodec { .. } => DecodeError::Unsupported(e.to_string()),
            PluginError::CreateSession { errno, .. }
                if errno == errno::EOPNOTSUPP || errno == errno::EINVAL =>
            {
                DecodeError::Unsupported(e.to_string())
            }
            other => DecodeError::Internal(other.to_string()),
        }
    }
}

/// A loaded plugin library whose descriptor passed every check.
///
/// Sessions keep it (and so the library) alive through an [`Arc`].
pub struct PluginLibrary {
    path: PathBuf,
    name: &'static str,
    abi_major: u16,
    abi_minor: u16,
    codecs: u32,
    create: abi::CreateFn,
    decode: abi::DecodeFn,
    reset: abi::SessionFn,
    destroy: abi::SessionFn,
    // Last field, so dropped last: the function pointers above point into
    // it.
    _lib: libloading::Library,
}

impl std::fmt::Debug for PluginLibrary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginLibrary")
            .field("path", &self.path)
            .field("name", &self.name)
            .field("abi", &(self.abi_major, self.abi_minor))
            .field("codecs", &self.codecs())
            .finish_non_exhaustive()
    }
}

/// Plugin names live as long as the process (`Backend::name` is
/// `&'static str`); each distinct name is stored once.
fn intern(name: &str) -> &'static str {
    static NAMES: Mutex<BTreeSet<&'static str>> = Mutex::new(BTreeSet::new());
    let mut names = NAMES.lock();
    if let Some(n) = names.get(name) {
        return n;
    }
    let n: &'static str = Box::leak(name.to_owned().into_boxed_str());
    names.insert(n);
    n
}

impl PluginLibrary {
    /// Loads the plugin at `path` and checks its descriptor.
    ///
    /// `path` should contain a `/`: a bare file name is looked up in the
    /// dynamic loader's search path. Loading runs the library's
    /// initialisers: only configure libraries you trust.
    pub fn load(path: impl AsRef<Path>) -> Result<Arc<Self>, PluginError> {
        let path = path.as_ref().to_path_buf();
        // RTLD_NOW: a symbol the plugin needs but no library provides is a
        // load error now, not a crash at its first call.
        let flags = libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_LOCAL;
        // SAFETY: loading a library runs its initialisers; the daemon only
        // loads the plugin its operator configured, which the ABI requires
        // to have no initialisers with side effects on the host.
        let lib = match unsafe { libloading::os::unix::Library::open(Some(&path), flags) } {
            Ok(lib) => libloading::Library::from(lib),
            Err(source) => return Err(PluginError::Load { path, source }),
        };
        // SAFETY: the ABI defines the entry point with exactly the
        // signature of `EntryFn`; the copied function pointer is used only
        // while `lib` is loaded (both live in the returned value or die
        // here).
        let entry: abi::EntryFn =
            match unsafe { lib.get::<abi::EntryFn>(b"daedalus_backend_entry\0") } {
                Ok(sym) => *sym,
                Err(source) => {
                    return Err(PluginError::MissingSymbol {
                        path,
                        symbol: abi::ENTRY_SYMBOL,
                        source,
                    })
                }
            };
        // SAFETY: the entry point takes two integers and has no other
        // precondition; the library stays loaded during the call.
        let desc = unsafe { entry(abi::ABI_MAJOR.into(), abi::ABI_MINOR.into()) };
        if desc.is_null() {
            return Err(PluginError::Refused { path });
        }
        if !desc.is_aligned() {
            return Err(PluginError::Misaligned {
                path,
                addr: desc as usize,
            });
        }
        // The leading fields every version has: version and size.
        // SAFETY: `desc` is non-null and aligned, and the ABI requires it to
        // point to a descriptor that stays valid and immutable while the
        // library is loaded; every ABI version starts with these 8 bytes.
        let (major, minor, size) =
            unsafe { ((*desc).abi_major, (*desc).abi_minor, (*desc).struct_size) };
        if major != abi::ABI_MAJOR {
            return Err(PluginError::AbiVersion { path, major, minor });
        }
        if (size as usize) < abi::DESCRIPTOR_MIN_SIZE {
            return Err(PluginError::DescriptorSize {
                path,
                size,
                min: abi::DESCRIPTOR_MIN_SIZE,
                major,
                minor,
            });
        }
        // Read the fields both sides know: a newer minor may have appended
        // fields after ours (ignored), and once this host knows a newer
        // minor than the plugin, the fields it lacks stay zero (absent).
        let known = (size as usize).min(size_of::<abi::Descriptor>());
        let mut d = std::mem::MaybeUninit::<abi::Descriptor>::zeroed();
        // SAFETY: the plugin's descriptor has `size` >= `known` readable
        // bytes (ABI: `struct_size` is its real size), `d` has room for
        // `known` bytes, and the two do not overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(desc.cast::<u8>(), d.as_mut_ptr().cast::<u8>(), known)
        };
        // SAFETY: every field of `Descriptor` is valid for any bit pattern,
        // zero included (integers, raw pointers, nullable function
        // pointers), so the partly copied, partly zeroed value is valid.
        let d = unsafe { d.assume_init() };
        let null = |field: &'static str| PluginError::NullPointer {
            path: path.clone(),
            field,
        };
        if d.name.is_null() {
            return Err(null("name"));
        }
        let create = d.create.ok_or_else(|| null("create"))?;
        let decode = d.decode.ok_or_else(|| null("decode"))?;
        let reset = d.reset.ok_or_else(|| null("reset"))?;
        let destroy = d.destroy.ok_or_else(|| null("destroy"))?;
        // SAFETY: `name` is non-null and the ABI requires a NUL-terminated
        // string valid while the library is loaded; it is copied now.
        let name = unsafe { CStr::from_ptr(d.name) };
        let Ok(name) = name.to_str() else {
            return Err(PluginError::BadName { path });
        };
        let name = intern(name);
        tracing::info!(
            path = %path.display(),
            name,
            abi = %format_args!("{major}.{minor}"),
            codecs = ?codec_list(d.codecs),
            "loaded backend plugin"
        );
        Ok(Arc::new(PluginLibrary {
            path,
            name,
            abi_major: major,
            abi_minor: minor,
            codecs: d.codecs,
            create,
            decode,
            reset,
            destroy,
            _lib: lib,
        }))
    }

    /// The plugin's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The library path it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The plugin's ABI version (major, minor).
    pub fn abi_version(&self) -> (u16, u16) {
        (self.abi_major, self.abi_minor)
    }

    /// The codecs the plugin announces.
    pub fn codecs(&self) -> Vec<Codec> {
        codec_list(self.codecs)
    }

    /// Whether the plugin announces `codec`.
    pub fn supports(&self, codec: Codec) -> bool {
        codec_bit(codec).is_some_and(|b| self.codecs & b != 0)
    }

    /// A session for `codec`. The plugin session itself is created at the
    /// first job, when the CAPTURE format is known, and again whenever the
    /// CAPTURE format, size or strides change.
    pub fn backend(self: &Arc<Self>, codec: Codec) -> Result<PluginBackend, PluginError> {
        if !self.supports(codec) {
            return Err(PluginError::UnsupportedCodec {
                path: self.path.clone(),
                name: self.name,
                codec,
                supported: format!("{:?}", self.codecs()),
            });
        }
        Ok(PluginBackend {
            lib: self.clone(),
            codec,
            session: None,
            decoded: HashSet::new(),
            need_key: true,
            last_flags: 0,
        })
    }

    /// A session for `codec` whose plugin session is created now for the
    /// given CAPTURE layout (so that `create` errors show up here).
    pub fn open_session(
        self: &Arc<Self>,
        codec: Codec,
        layout: SessionLayout,
    ) -> Result<PluginBackend, PluginError> {
        let mut b = self.backend(codec)?;
        b.create(layout)?;
        Ok(b)
    }

    fn session_error(&self, codec: Codec, errno: i32) -> PluginError {
        PluginError::CreateSession {
            path: self.path.clone(),
            name: self.name,
            codec,
            errno,
        }
    }
}

/// Opens a backend session for a codec: the same type as
/// `server::BackendFactory`.
pub type Factory = Arc<dyn Fn(Codec) -> Result<Box<dyn Backend>, DecodeError> + Send + Sync>;

/// A backend factory that opens plugin sessions for the codecs `lib`
/// announces and asks `fallback` for the others.
pub fn factory(lib: Arc<PluginLibrary>, fallback: Factory) -> Factory {
    Arc::new(move |codec| {
        if lib.supports(codec) {
            Ok(Box::new(lib.backend(codec)?) as Box<dyn Backend>)
        } else {
            fallback(codec)
        }
    })
}

fn codec_bit(codec: Codec) -> Option<u32> {
    1u32.checked_shl(codec.to_wire())
}

fn codec_list(mask: u32) -> Vec<Codec> {
    Codec::ALL
        .into_iter()
        .filter(|&c| codec_bit(c).is_some_and(|b| mask & b != 0))
        .collect()
}

/// The CAPTURE layout a plugin session is created for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLayout {
    /// Pixel layout.
    pub format: CaptureFormat,
    /// Coded width in pixels.
    pub width: u32,
    /// Coded height in pixels.
    pub height: u32,
    /// Bytes per row of the luma plane.
    pub luma_stride: usize,
    /// Bytes per row of the chroma plane.
    pub chroma_stride: usize,
}

impl SessionLayout {
    /// The layout of a capture target.
    pub fn of(out: &CaptureTarget<'_>) -> Self {
        SessionLayout {
            format: out.format,
            width: out.width,
            height: out.height,
            luma_stride: out.luma.stride,
            chroma_stride: out.chroma.stride,
        }
    }
}

/// The ABI fourcc of a format; version 1 of the ABI has the two
/// semi-planar ones.
fn fourcc(format: CaptureFormat) -> Option<u32> {
    match format {
        CaptureFormat::Nv12 => Some(abi::FOURCC_NV12),
        CaptureFormat::P010 => Some(abi::FOURCC_P010),
        CaptureFormat::Yuv420 => None,
    }
}

/// Bytes from the plane start to one past the last byte of the picture.
fn plane_extent(p: &CapturePlane<'_>, rows: usize, row_bytes: usize) -> usize {
    if rows == 0 {
        0
    } else {
        (rows - 1) * p.stride + row_bytes
    }
}

/// A decoding session of a plugin; implements [`Backend`].
///
/// Besides forwarding jobs it enforces the [`Backend`] contract the plugin
/// cannot see: references must be pictures this session decoded since its
/// last reset, a decoded picture must cover the whole CAPTURE planes, a
/// held job must announce more slices.
pub struct PluginBackend {
    lib: Arc<PluginLibrary>,
    codec: Codec,
    session: Option<(NonNull<abi::Session>, SessionLayout)>,
    /// Pictures decoded since the last reset that may still be references.
    decoded: HashSet<u64>,
    /// Nothing decoded since the last reset or error: the next picture must
    /// be a key frame (the plugin decides, given the references' flags).
    need_key: bool,
    last_flags: u32,
}

// SAFETY: the ABI allows a session to be used from any thread as long as
// calls on it do not overlap (docs/backend-abi.md, "Threading"); `&mut self`
// on every call guarantees that. The other fields are Send.
unsafe impl Send for PluginBackend {}

impl std::fmt::Debug for PluginBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginBackend")
            .field("plugin", &self.lib.name)
            .field("codec", &self.codec)
            .field("layout", &self.session.map(|s| s.1))
            .field("need_key", &self.need_key)
            .finish_non_exhaustive()
    }
}

impl PluginBackend {
    /// The library this session belongs to.
    pub fn library(&self) -> &Arc<PluginLibrary> {
        &self.lib
    }

    /// The `DAEDALUS_RESULT_*` flags of the last decoded picture.
    pub fn last_result_flags(&self) -> u32 {
        self.last_flags
    }

    /// The layout the plugin session was created for, if it exists.
    pub fn layout(&self) -> Option<SessionLayout> {
        self.session.map(|s| s.1)
    }

    /// (Re)creates the plugin session for `layout`.
    fn create(&mut self, layout: SessionLayout) -> Result<(), PluginError> {
        self.destroy_session();
        let bad = |errno| self.lib.session_error(self.codec, errno);
        let luma = u32::try_from(layout.luma_stride).map_err(|_| bad(errno::EINVAL))?;
        let chroma = u32::try_from(layout.chroma_stride).map_err(|_| bad(errno::EINVAL))?;
        let params = abi::SessionParams {
            struct_size: size_of::<abi::SessionParams>() as u32,
            codec: self.codec.to_wire(),
            width: layout.width,
            height: layout.height,
            fourcc: fourcc(layout.format).ok_or_else(|| bad(errno::EINVAL))?,
            num_planes: 2,
            stride: [luma, chroma, 0, 0],
        };
        let mut handle: *mut abi::Session = std::ptr::null_mut();
        // SAFETY: `create` comes from a checked descriptor of the loaded
        // library (`self.lib` keeps it loaded); `params` and `handle` are
        // valid for the call, which is all the ABI asks.
        let ret = unsafe { (self.lib.create)(&params, &mut handle) };
        match (ret, NonNull::new(handle)) {
            (0, Some(h)) => {
                self.session = Some((h, layout));
                self.decoded.clear();
                self.need_key = true;
                tracing::debug!(plugin = self.lib.name, codec = ?self.codec, ?layout, "plugin session created");
                Ok(())
            }
            (0, None) => Err(bad(errno::ENOMEM)),
            (r, _) => Err(bad(if r < 0 { r.saturating_neg() } else { r })),
        }
    }

    fn destroy_session(&mut self) {
        if let Some((h, _)) = self.session.take() {
            // SAFETY: `h` was returned by this library's `create` and is
            // destroyed once (taken out of `self.session`).
            unsafe { (self.lib.destroy)(h.as_ptr()) };
        }
    }

    /// Asks the plugin to drop its references and held slices.
    fn reset_session(&mut self) {
        if let Some((h, _)) = self.session {
            // SAFETY: `h` is a live session of this library, not in use
            // (`&mut self`).
            unsafe { (self.lib.reset)(h.as_ptr()) };
        }
        self.decoded.clear();
        self.need_key = true;
    }

    fn fail(&mut self, e: DecodeError) -> Result<DecodeOutcome, DecodeError> {
        if matches!(
            e,
            DecodeError::Corrupt(_) | DecodeError::MissingReference(_)
        ) {
            self.reset_session();
        }
        Err(e)
    }
}

impl Drop for PluginBackend {
    fn drop(&mut self) {
        self.destroy_session();
    }
}

fn message(result: &abi::DecodeResult) -> String {
    let bytes: Vec<u8> = result
        .message
        .iter()
        .map(|&c| c.to_ne_bytes()[0])
        .take_while(|&b| b != 0)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

impl Backend for PluginBackend {
    fn name(&self) -> &'static str {
        self.lib.name
    }

    fn codec(&self) -> Codec {
        self.codec
    }

    fn decode(
        &mut self,
        job: &JobInput<'_>,
        out: &mut CaptureTarget<'_>,
    ) -> Result<DecodeOutcome, DecodeError> {
        job.expect_codec(self.codec)?;
        out.check()?;
        let fourcc = fourcc(out.format).ok_or_else(|| {
            DecodeError::Unsupported(format!("plugins write NV12 and P010, not {:?}", out.format))
        })?;
        let layout = SessionLayout::of(out);
        if self.session.map(|s| s.1) != Some(layout) {
            self.create(layout)?;
        }
        let Some((handle, _)) = self.session else {
            return Err(DecodeError::Internal("no plugin session".into()));
        };
        if !self.need_key {
            if let Some(&missing) = job.references.iter().find(|t| !self.decoded.contains(t)) {
                return self.fail(DecodeError::MissingReference(missing));
            }
        }

        let controls: Vec<abi::Control> = job
            .controls
            .iter()
            .map(|(id, data)| {
                Ok(abi::Control {
                    id,
                    size: u32::try_from(data.len()).map_err(|_| {
                        DecodeError::InvalidControls(format!("control {id:#x} too large"))
                    })?,
                    data: data.as_ptr().cast::<c_void>(),
                })
            })
            .collect::<Result<_, DecodeError>>()?;
        let references: Vec<abi::Reference> = job
            .references
            .iter()
            .map(|&timestamp| abi::Reference {
                timestamp,
                flags: if self.decoded.contains(&timestamp) {
                    abi::REF_DECODED
                } else {
                    0
                },
                reserved: 0,
            })
            .collect();
        let mut flags = 0;
        if job.flags.more_slices {
            flags |= abi::JOB_MORE_SLICES;
        }
        if job.flags.continues_picture {
            flags |= abi::JOB_CONTINUES_PICTURE;
        }
        let ajob = abi::Job {
            struct_size: size_of::<abi::Job>() as u32,
            codec: self.codec.to_wire(),
            timestamp: job.timestamp,
            flags,
            num_controls: controls.len() as u32,
            controls: controls.as_ptr(),
            bitstream: job.bitstream.as_ptr(),
            bitstream_len: job.bitstream.len() as u64,
            references: references.as_ptr(),
            num_references: references.len() as u32,
            reserved: 0,
        };
        let stride32 = |s: usize| {
            u32::try_from(s).map_err(|_| DecodeError::FormatMismatch(format!("stride {s}")))
        };
        let plane = |p: &mut CapturePlane<'_>| -> Result<abi::Plane, DecodeError> {
            Ok(abi::Plane {
                length: p.data.len() as u64,
                data: p.data.as_mut_ptr(),
                stride: stride32(p.stride)?,
                reserved: 0,
            })
        };
        let empty = abi::Plane {
            length: 0,
            data: std::ptr::null_mut(),
            stride: 0,
            reserved: 0,
        };
        let capture = abi::Capture {
            struct_size: size_of::<abi::Capture>() as u32,
            fourcc,
            width: out.width,
            height: out.height,
            num_planes: 2,
            reserved: 0,
            planes: [plane(&mut out.luma)?, plane(&mut out.chroma)?, empty, empty],
        };
        let mut result = abi::DecodeResult {
            struct_size: size_of::<abi::DecodeResult>() as u32,
            flags: 0,
            bytes_written: [0; abi::MAX_PLANES],
            message: [0; abi::MESSAGE_SIZE],
        };
        // SAFETY: `decode` comes from the checked descriptor of the loaded
        // library; `handle` is a live session of it not used elsewhere
        // (`&mut self`). Every pointer in `ajob` and `capture` points into
        // `controls`, `references`, the job's control payloads and
        // bitstream, and the two planes, all of which outlive the call; the
        // plane pointers come from `&mut` slices of `length` bytes, so the
        // plugin may write them. `result` is valid for writes. The plugin
        // keeps none of the pointers after returning (ABI contract).
        let status = unsafe { (self.lib.decode)(handle.as_ptr(), &ajob, &capture, &mut result) };
        // The control and reference arrays are no longer referenced.
        drop((controls, references));
        let name = self.lib.name;
        let why = |what: &str| {
            let msg = message(&result);
            let mut s = format!("{name}: {what}");
            if !msg.is_empty() {
                let _ = write!(s, ": {msg}");
            }
            s
        };
        match status {
            abi::DECODED => {
                let sb = out.format.sample_bytes();
                let w = out.width as usize;
                let h = out.height as usize;
                let need = [
                    plane_extent(&out.luma, h, w * sb),
                    plane_extent(&out.chroma, h.div_ceil(2), w.div_ceil(2) * 2 * sb),
                ];
                let len = [out.luma.data.len(), out.chroma.data.len()];
                for i in 0..2 {
                    let got = result.bytes_written[i];
                    if got > len[i] as u64 || got < need[i] as u64 {
                        return self.fail(DecodeError::Internal(why(&format!(
                            "plugin reported {got} bytes written to plane {i} \
                             (picture needs {}, plane holds {})",
                            need[i], len[i]
                        ))));
                    }
                }
                self.last_flags = result.flags;
                if result.flags & abi::RESULT_KEYFRAME != 0 {
                    self.decoded.clear();
                }
                // Pictures that are no longer references never become
                // references again: keep the current ones and this one.
                self.decoded.retain(|t| job.references.contains(t));
                self.decoded.extend(job.references.iter().copied());
                self.decoded.insert(job.timestamp);
                self.need_key = false;
                Ok(DecodeOutcome::Decoded)
            }
            abi::HELD if job.flags.more_slices => Ok(DecodeOutcome::Held),
            abi::HELD => self.fail(DecodeError::Internal(why(
                "plugin held the last slice of a picture",
            ))),
            abi::NEED_KEYFRAME => {
                self.decoded.clear();
                self.need_key = true;
                Err(DecodeError::WaitingForKeyframe)
            }
            s if s < 0 => {
                let e = s.saturating_neg();
                let e = match e {
                    errno::EINVAL => DecodeError::InvalidControls(why("invalid controls")),
                    errno::EOPNOTSUPP => DecodeError::Unsupported(why("unsupported stream")),
                    errno::EBADMSG => DecodeError::Corrupt(why("corrupt bitstream")),
                    errno::ENOSPC => DecodeError::CaptureTooSmall,
                    e => DecodeError::Internal(why(&format!("error {e}"))),
                };
                self.fail(e)
            }
            s => self.fail(DecodeError::Internal(why(&format!("unknown status {s}")))),
        }
    }

    fn reset(&mut self) {
        self.reset_session();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codec_numbers_match_the_protocol() {
        assert_eq!(abi::CODEC_H264, Codec::H264.to_wire());
        assert_eq!(abi::CODEC_HEVC, Codec::Hevc.to_wire());
        assert_eq!(abi::CODEC_VP8, Codec::Vp8.to_wire());
        assert_eq!(abi::CODEC_VP9, Codec::Vp9.to_wire());
        assert_eq!(abi::CODEC_AV1, Codec::Av1.to_wire());
        assert_eq!(
            codec_list(0b101010),
            vec![Codec::H264, Codec::Vp8, Codec::Av1]
        );
        assert_eq!(codec_list(u32::MAX).len(), Codec::ALL.len());
    }

    #[test]
    fn fourccs_match_decoder_core() {
        use decoder_core::fmt::{PIX_FMT_NV12, PIX_FMT_P010};
        assert_eq!(abi::FOURCC_NV12, PIX_FMT_NV12);
        assert_eq!(abi::FOURCC_P010, PIX_FMT_P010);
    }

    #[test]
    fn names_are_interned_once() {
        let a = intern("plugin-x");
        let b = intern(&String::from("plugin-x"));
        assert!(std::ptr::eq(a, b));
        assert_ne!(intern("plugin-y"), a);
    }

    #[test]
    fn plugin_errors_map_to_decode_errors() {
        let e = PluginError::CreateSession {
            path: "/p.so".into(),
            name: "x",
            codec: Codec::Vp9,
            errno: errno::EOPNOTSUPP,
        };
        assert!(e.to_string().contains("/p.so"));
        assert!(matches!(DecodeError::from(e), DecodeError::Unsupported(_)));
        let e = PluginError::CreateSession {
            path: "/p.so".into(),
            name: "x",
            codec: Codec::Vp9,
            errno: errno::ENOMEM,
        };
        assert!(matches!(DecodeError::from(e), DecodeError::Internal(_)));
    }
}
