//! Decoding through the Rust test plugin (`crates/test-plugin`): the bytes
//! it writes are recomputed here from the job, so every field the daemon
//! passes through the ABI (controls, bitstream, slices, timestamps,
//! references, planes, strides) is checked; so are the status mappings and
//! the session lifecycle.

mod plugins;

use std::sync::{Arc, Mutex, MutexGuard};

use daedalus_daemon::backend::plugin::{self, abi, PluginError, PluginLibrary, SessionLayout};
use daedalus_daemon::backend::{
    Backend, CaptureFormat, DecodeError, DecodeOutcome, JobFlags, JobInput,
};
use decoder_core::ctrl::{Codec, ControlValues};
use plugins::{assert_planes_eq, expected, seed, test_plugin, Planes};

/// The plugin counts live sessions globally: tests run one at a time.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn lib() -> Arc<PluginLibrary> {
    PluginLibrary::load(test_plugin()).expect("the test plugin loads")
}

fn live_sessions(lib: &PluginLibrary) -> i64 {
    // SAFETY: the test plugin exports this function with this signature.
    unsafe {
        let l = libloading::Library::new(lib.path()).unwrap();
        let f = l
            .get::<unsafe extern "C" fn() -> i64>(b"daedalus_test_plugin_live_sessions\0")
            .unwrap();
        f()
    }
}

fn controls() -> ControlValues {
    let mut c = ControlValues::new();
    // Arbitrary payloads: the plugin hashes them, the loader passes them
    // through unchanged.
    c.set_raw(0x00a4_0a00, vec![1, 2, 3, 4]);
    c.set_raw(0x00a4_0a01, (0..=255u8).collect());
    c.set_raw(0x00a4_0a07, 7i32.to_le_bytes().to_vec());
    c
}

struct Pic<'a> {
    bits: &'a [u8],
    ts: u64,
    refs: &'a [u64],
    flags: JobFlags,
}

impl<'a> Pic<'a> {
    fn new(bits: &'a [u8], ts: u64, refs: &'a [u64]) -> Self {
        Pic {
            bits,
            ts,
            refs,
            flags: JobFlags::default(),
        }
    }
}

fn run(
    b: &mut dyn Backend,
    c: &ControlValues,
    pic: &Pic<'_>,
    planes: &mut Planes,
) -> Result<DecodeOutcome, DecodeError> {
    let job = JobInput {
        codec: b.codec(),
        controls: c,
        bitstream: pic.bits,
        timestamp: pic.ts,
        flags: pic.flags,
        references: pic.refs,
    };
    b.decode(&job, &mut planes.target())
}

/// Row padding of the planes: the same for every job of a session, as
/// the CAPTURE format fixes it (a change recreates the plugin session).
const PAD: usize = 5;

/// Decodes `pic` into fresh planes and checks every byte.
fn decode_checked(
    b: &mut dyn Backend,
    c: &ControlValues,
    pic: &Pic<'_>,
    format: CaptureFormat,
    (w, h): (u32, u32),
) {
    let mut planes = Planes::new(format, w, h, PAD);
    assert_eq!(run(b, c, pic, &mut planes), Ok(DecodeOutcome::Decoded));
    let want = expected(
        format,
        w,
        h,
        planes.stride,
        seed(c, pic.bits, pic.ts, pic.refs),
    );
    assert_planes_eq(&planes, &want);
}

#[test]
fn loads_and_describes_itself() {
    let _s = serial();
    let lib = lib();
    assert_eq!(lib.name(), "daedalus-test");
    assert_eq!(lib.abi_version(), (abi::ABI_MAJOR, abi::ABI_MINOR));
    assert_eq!(lib.codecs(), vec![Codec::H264, Codec::Vp8, Codec::Vp9]);
    assert!(lib.supports(Codec::Vp8) && !lib.supports(Codec::Av1));
    // Loading twice shares the library; both work.
    let again = lib.clone();
    drop(lib);
    assert!(again.supports(Codec::H264));
}

#[test]
fn plugin_refuses_other_abi_majors() {
    let _s = serial();
    let path = test_plugin();
    // SAFETY: the test plugin exports the entry point with the ABI's
    // signature; the library stays loaded while `entry` is used.
    unsafe {
        let l = libloading::Library::new(&path).unwrap();
        let entry = l.get::<abi::EntryFn>(b"daedalus_backend_entry\0").unwrap();
        assert!(entry(u32::from(abi::ABI_MAJOR) + 1, 0).is_null());
        assert!(entry(0, 0).is_null());
        let d = entry(u32::from(abi::ABI_MAJOR), u32::from(abi::ABI_MINOR) + 9);
        assert!(!d.is_null());
        assert_eq!(
            (*d).struct_size as usize,
            std::mem::size_of::<abi::Descriptor>()
        );
    }
}

#[test]
fn keyframe_nv12_and_p010_bytes() {
    let _s = serial();
    let lib = lib();
    let c = controls();
    for format in [CaptureFormat::Nv12, CaptureFormat::P010] {
        for size in [(64, 32), (35, 17), (1, 1)] {
            let mut b = lib.backend(Codec::H264).unwrap();
            decode_checked(&mut b, &c, &Pic::new(b"K frame", 1000, &[]), format, size);
            assert_eq!(
                b.last_result_flags() & abi::RESULT_KEYFRAME,
                abi::RESULT_KEYFRAME
            );
        }
    }
}

#[test]
fn every_input_changes_the_picture() {
    let _s = serial();
    let lib = lib();
    let c = controls();
    let mut b = lib.backend(Codec::Vp9).unwrap();
    let base = seed(&c, b"K1", 10, &[]);
    let mut c2 = c.clone();
    c2.set_raw(0x00a4_0a07, 8i32.to_le_bytes().to_vec());
    assert_ne!(base, seed(&c2, b"K1", 10, &[]));
    assert_ne!(base, seed(&c, b"K2", 10, &[]));
    assert_ne!(base, seed(&c, b"K1", 11, &[]));
    // The plugin agrees with each of them.
    decode_checked(
        &mut b,
        &c2,
        &Pic::new(b"K1", 10, &[]),
        CaptureFormat::Nv12,
        (16, 16),
    );
    decode_checked(
        &mut b,
        &c,
        &Pic::new(b"K2", 10, &[]),
        CaptureFormat::Nv12,
        (16, 16),
    );
    decode_checked(
        &mut b,
        &c,
        &Pic::new(b"K1", 11, &[]),
        CaptureFormat::Nv12,
        (16, 16),
    );
}

#[test]
fn references_must_be_decoded_pictures() {
    let _s = serial();
    let lib = lib();
    let c = controls();
    let f = CaptureFormat::Nv12;
    let mut b = lib.backend(Codec::H264).unwrap();
    // A new session waits for a key frame: the plugin sees the reference
    // flagged as not decoded and skips the picture.
    let mut planes = Planes::new(f, 32, 32, PAD);
    assert_eq!(
        run(&mut b, &c, &Pic::new(b"P", 500, &[400]), &mut planes),
        Err(DecodeError::WaitingForKeyframe)
    );
    assert!(planes.untouched());
    decode_checked(&mut b, &c, &Pic::new(b"K", 1000, &[]), f, (32, 32));
    decode_checked(&mut b, &c, &Pic::new(b"P", 2000, &[1000]), f, (32, 32));
    decode_checked(
        &mut b,
        &c,
        &Pic::new(b"P", 3000, &[1000, 2000]),
        f,
        (32, 32),
    );
    // 1500 was never decoded: the session resets and says which.
    assert_eq!(
        run(&mut b, &c, &Pic::new(b"P", 4000, &[1500]), &mut planes),
        Err(DecodeError::MissingReference(1500))
    );
    // After that reset even the pictures decoded before are gone.
    assert_eq!(
        run(&mut b, &c, &Pic::new(b"P", 4000, &[3000]), &mut planes),
        Err(DecodeError::WaitingForKeyframe)
    );
    assert!(planes.untouched());
    decode_checked(&mut b, &c, &Pic::new(b"K", 5000, &[]), f, (32, 32));
    decode_checked(&mut b, &c, &Pic::new(b"P", 6000, &[5000]), f, (32, 32));
    // Backend::reset forgets everything too.
    b.reset();
    assert_eq!(
        run(&mut b, &c, &Pic::new(b"P", 7000, &[6000]), &mut planes),
        Err(DecodeError::WaitingForKeyframe)
    );
    // A key frame drops the pictures before it from the reference set.
    decode_checked(&mut b, &c, &Pic::new(b"K", 8000, &[]), f, (32, 32));
    assert_eq!(
        run(&mut b, &c, &Pic::new(b"P", 9000, &[6000]), &mut planes),
        Err(DecodeError::MissingReference(6000))
    );
}

#[test]
fn slices_are_held_then_decoded_together() {
    let _s = serial();
    let lib = lib();
    let c = controls();
    let f = CaptureFormat::Nv12;
    let mut b = lib.backend(Codec::H264).unwrap();
    let mut planes = Planes::new(f, 48, 20, PAD);
    let first = Pic {
        bits: b"K slice one|",
        ts: 42,
        refs: &[],
        flags: JobFlags {
            more_slices: true,
            continues_picture: false,
        },
    };
    let middle = Pic {
        bits: b"slice two|",
        ts: 42,
        refs: &[],
        flags: JobFlags {
            more_slices: true,
            continues_picture: true,
        },
    };
    let last = Pic {
        bits: b"slice three",
        ts: 42,
        refs: &[],
        flags: JobFlags {
            more_slices: false,
            continues_picture: true,
        },
    };
    assert_eq!(
        run(&mut b, &c, &first, &mut planes),
        Ok(DecodeOutcome::Held)
    );
    assert_eq!(
        run(&mut b, &c, &middle, &mut planes),
        Ok(DecodeOutcome::Held)
    );
    assert!(planes.untouched(), "a held job wrote the CAPTURE planes");
    assert_eq!(
        run(&mut b, &c, &last, &mut planes),
        Ok(DecodeOutcome::Decoded)
    );
    let whole = b"K slice one|slice two|slice three";
    assert_planes_eq(
        &planes,
        &expected(f, 48, 20, planes.stride, seed(&c, whole, 42, &[])),
    );

    // A new picture (no CONTINUES flag) drops stale held slices.
    let stale = Pic {
        bits: b"Xgarbage",
        ts: 50,
        refs: &[],
        flags: JobFlags {
            more_slices: true,
            continues_picture: false,
        },
    };
    assert_eq!(
        run(&mut b, &c, &stale, &mut planes),
        Ok(DecodeOutcome::Held)
    );
    decode_checked(&mut b, &c, &Pic::new(b"K fresh", 60, &[]), f, (48, 20));
}

#[test]
fn plugin_errors_map_to_decode_errors() {
    let _s = serial();
    let lib = lib();
    let c = controls();
    let f = CaptureFormat::Nv12;
    let mut b = lib.backend(Codec::Vp8).unwrap();
    let mut planes = Planes::new(f, 16, 16, PAD);
    decode_checked(&mut b, &c, &Pic::new(b"K", 1, &[]), f, (16, 16));
    let mut err = |bits: &[u8], ts| run(&mut b, &c, &Pic::new(bits, ts, &[1]), &mut planes);
    match err(b"E\x16", 2) {
        Err(DecodeError::InvalidControls(m)) => assert!(m.contains("injected error 22"), "{m}"),
        e => panic!("{e:?}"),
    }
    assert!(matches!(err(b"E\x5f", 3), Err(DecodeError::Unsupported(_))));
    assert_eq!(err(b"E\x1c", 4), Err(DecodeError::CaptureTooSmall));
    match err(b"E\x0c", 5) {
        Err(DecodeError::Internal(m)) => assert!(m.contains("error 12"), "{m}"),
        e => panic!("{e:?}"),
    }
    match err(b"W", 6) {
        Err(DecodeError::Internal(m)) => assert!(m.contains("bytes written"), "{m}"),
        e => panic!("{e:?}"),
    }
    match err(b"S", 7) {
        Err(DecodeError::Internal(m)) => assert!(m.contains("bytes written"), "{m}"),
        e => panic!("{e:?}"),
    }
    match err(b"H", 8) {
        Err(DecodeError::Internal(m)) => assert!(m.contains("held"), "{m}"),
        e => panic!("{e:?}"),
    }
    // None of those lost the session's references...
    assert!(err(b"P", 9).is_ok());
    // ...a corrupt bitstream does: the session waits for a key frame.
    match err(b"Zzz", 10) {
        Err(DecodeError::Corrupt(m)) => assert!(m.contains("unknown picture type"), "{m}"),
        e => panic!("{e:?}"),
    }
    assert_eq!(err(b"P", 11), Err(DecodeError::WaitingForKeyframe));
    assert!(matches!(err(b"E\x4a", 12), Err(DecodeError::Corrupt(_))));
}

#[test]
fn job_of_another_codec_and_small_planes_are_refused() {
    let _s = serial();
    let lib = lib();
    let c = controls();
    let mut b = lib.backend(Codec::H264).unwrap();
    let mut planes = Planes::new(CaptureFormat::Nv12, 16, 16, 0);
    let job = JobInput {
        codec: Codec::Vp8,
        controls: &c,
        bitstream: b"K",
        timestamp: 1,
        flags: JobFlags::default(),
        references: &[],
    };
    assert!(matches!(
        b.decode(&job, &mut planes.target()),
        Err(DecodeError::InvalidControls(_))
    ));
    planes.chroma.truncate(16 * 7);
    assert_eq!(
        run(&mut b, &c, &Pic::new(b"K", 1, &[]), &mut planes),
        Err(DecodeError::CaptureTooSmall)
    );
    assert!(planes.untouched());
}

#[test]
fn unsupported_codec_and_failed_create() {
    let _s = serial();
    let lib = lib();
    let err = lib.backend(Codec::Hevc).unwrap_err();
    let shown = err.to_string();
    assert!(
        matches!(
            err,
            PluginError::UnsupportedCodec {
                codec: Codec::Hevc,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(shown.contains(&*lib.path().to_string_lossy()), "{shown}");
    assert!(
        shown.contains("daedalus-test") && shown.contains("Hevc"),
        "{shown}"
    );

    let layout = SessionLayout {
        format: CaptureFormat::Nv12,
        width: 0,
        height: 16,
        luma_stride: 16,
        chroma_stride: 16,
    };
    match lib.open_session(Codec::H264, layout) {
        Err(PluginError::CreateSession {
            errno: 22,
            codec: Codec::H264,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    let good = SessionLayout {
        width: 16,
        ..layout
    };
    let b = lib.open_session(Codec::H264, good).unwrap();
    assert_eq!(b.layout(), Some(good));
}

#[test]
fn factory_uses_the_plugin_for_its_codecs_only() {
    let _s = serial();
    let lib = lib();
    let fallback: plugin::Factory =
        Arc::new(|codec| Err(DecodeError::Unsupported(format!("fallback {codec:?}"))));
    let f = plugin::factory(lib, fallback);
    let b = f(Codec::Vp9).unwrap();
    assert_eq!((b.name(), b.codec()), ("daedalus-test", Codec::Vp9));
    match f(Codec::Av1) {
        Err(DecodeError::Unsupported(m)) => assert_eq!(m, "fallback Av1"),
        Err(e) => panic!("{e:?}"),
        Ok(_) => panic!("AV1 is not the plugin's"),
    }
}

#[test]
fn sessions_are_created_lazily_recreated_on_format_change_and_destroyed() {
    let _s = serial();
    let lib = lib();
    let c = controls();
    let base = live_sessions(&lib);
    let mut b = lib.backend(Codec::H264).unwrap();
    assert_eq!(live_sessions(&lib), base, "no session before the first job");
    decode_checked(
        &mut b,
        &c,
        &Pic::new(b"K", 1, &[]),
        CaptureFormat::Nv12,
        (32, 16),
    );
    assert_eq!(live_sessions(&lib), base + 1);
    let first = b.layout().unwrap();
    // Resolution and format change: a new session, which needs a key frame.
    let mut planes = Planes::new(CaptureFormat::P010, 64, 32, PAD);
    assert_eq!(
        run(&mut b, &c, &Pic::new(b"P", 2, &[1]), &mut planes),
        Err(DecodeError::WaitingForKeyframe)
    );
    assert_eq!(live_sessions(&lib), base + 1);
    assert_ne!(b.layout(), Some(first));
    decode_checked(
        &mut b,
        &c,
        &Pic::new(b"K", 3, &[]),
        CaptureFormat::P010,
        (64, 32),
    );
    decode_checked(
        &mut b,
        &c,
        &Pic::new(b"P", 4, &[3]),
        CaptureFormat::P010,
        (64, 32),
    );
    assert_eq!(live_sessions(&lib), base + 1);
    drop(b);
    assert_eq!(live_sessions(&lib), base);
}

#[test]
fn sessions_decode_concurrently_on_other_threads() {
    let _s = serial();
    let lib = lib();
    let base = live_sessions(&lib);
    let threads: Vec<_> = (0..4u64)
        .map(|i| {
            let lib = lib.clone();
            std::thread::spawn(move || {
                let c = controls();
                let mut b: Box<dyn Backend> = Box::new(lib.backend(Codec::H264).unwrap());
                let key = format!("K thread {i}");
                decode_checked(
                    &mut *b,
                    &c,
                    &Pic::new(key.as_bytes(), 100 * i, &[]),
                    CaptureFormat::Nv12,
                    (40, 24),
                );
                for n in 1..20 {
                    let refs = [100 * i + n - 1];
                    decode_checked(
                        &mut *b,
                        &c,
                        &Pic::new(b"P", 100 * i + n, &refs),
                        CaptureFormat::Nv12,
                        (40, 24),
                    );
                }
                b
            })
        })
        .collect();
    // Sessions also move between threads: drop them here.
    let sessions: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    drop(sessions);
    assert_eq!(live_sessions(&lib), base);
}
