//! The media-controller node and the request node.
//!
//! `/dev/<media>` answers `MEDIA_IOC_DEVICE_INFO` and `MEDIA_IOC_G_TOPOLOGY`
//! (one decoder entity, the video interface, their link) so clients find
//! it next to the video node by `bus_info`. `MEDIA_IOC_REQUEST_ALLOC` needs
//! a new fd in the caller, which a CUSE server cannot create: the launcher
//! (`daedalus-cuse run`, [`crate::launcher`]) traps that ioctl with seccomp
//! and opens `/dev/<media>-request` instead, which allocates a request per
//! open; the fd is then installed in the client. Without the launcher the
//! ioctl fails with `ENOTTY`.
//!
//! `/dev/<media>-request`: one open = one media request (`fh` = request
//! id). It answers `MEDIA_REQUEST_IOC_QUEUE` / `REINIT`, poll (`POLLPRI`
//! once complete), and [`DAEDALUS_REQ_IOC_ID`], which tells our own
//! resolver which request an fd is (see [`Resolver`]).

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex, OnceLock};

use decoder_core::state::{ReqId, ReqState};
use zerocopy::{FromBytes, FromZeros, IntoBytes};

use crate::cuse::{self, Caller, Channel, CuseDevice, IoctlIn, ReplyIoctl};
use crate::fetch::Need;
use crate::uapi::*;
use crate::video::{RequestResolver, Shared};

/// Private ioctl of the request node: the request id of this open file.
/// Only the server itself issues it (on a dup taken with `pidfd_getfd`).
pub const DAEDALUS_REQ_IOC_ID: u32 = ioc(2, b'D', 0x01, 8);

/// `MEDIA_ENT_F_PROC_VIDEO_DECODER`
const ENT_F_PROC_VIDEO_DECODER: u32 = 0x4008;
/// `MEDIA_INTF_T_V4L_VIDEO`
const INTF_T_V4L_VIDEO: u32 = 0x200;
/// `MEDIA_LNK_FL_INTERFACE_LINK | ENABLED | IMMUTABLE`
const LNK_INTERFACE: u32 = 0x1000_0000 | 1 | 2;

/// The media node.
#[derive(Debug)]
pub struct MediaNode {
    shared: Arc<Shared>,
    video_rdev: OnceLock<(u32, u32)>,
}

/// The request node.
#[derive(Debug)]
pub struct RequestNode {
    shared: Arc<Shared>,
    chan: OnceLock<Arc<Channel>>,
    pollers: Mutex<HashMap<u32, u64>>,
}

/// Maps a client's request fd to a request: takes a duplicate of the fd
/// with `pidfd_getfd`, checks it is our request node (its device number),
/// and asks the node which open file it is ([`DAEDALUS_REQ_IOC_ID`]). The
/// identity is the kernel's own file object, so fd reuse or a forged
/// number cannot name someone else's request.
#[derive(Debug)]
pub struct Resolver {
    node: Arc<RequestNode>,
    rdev: OnceLock<u64>,
}

fn sys_ret(r: libc::c_long) -> Result<i32, i32> {
    if r < 0 {
        Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO))
    } else {
        Ok(r as i32)
    }
}

/// `pidfd_open(tid, PIDFD_THREAD)` then `pidfd_getfd(fd)`.
pub fn steal_fd(tid: u32, fd: i32) -> Result<OwnedFd, i32> {
    // SAFETY: plain syscalls with integer arguments.
    let pidfd = sys_ret(unsafe {
        libc::syscall(
            libc::SYS_pidfd_open,
            tid as libc::c_long,
            libc::O_EXCL as libc::c_long,
        )
    })?;
    // SAFETY: pidfd_open returned a new fd we now own.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    // SAFETY: plain syscall; a returned fd is new and ours.
    let dup = sys_ret(unsafe {
        libc::syscall(
            libc::SYS_pidfd_getfd,
            pidfd.as_raw_fd() as libc::c_long,
            fd as libc::c_long,
            0 as libc::c_long,
        )
    })
    .map_err(|e| if e == libc::EBADF { libc::EBADF } else { e })?;
    // SAFETY: pidfd_getfd returned a new fd we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(dup) })
}

impl RequestResolver for Resolver {
    fn resolve(&self, pid: u32, fd: i32) -> Result<ReqId, i32> {
        if fd < 0 {
            return Err(libc::EINVAL);
        }
        let dup = steal_fd(pid, fd).map_err(|_| libc::EINVAL)?;
        let st = rustix::fs::fstat(&dup).map_err(|_| libc::EINVAL)?;
        match self.rdev.get() {
            Some(r) if *r == st.st_rdev => {}
            _ => return Err(libc::EINVAL),
        }
        let mut id = 0u64;
        // SAFETY: the request node's private ioctl writes one u64 to `id`.
        let r = unsafe {
            libc::ioctl(
                dup.as_raw_fd(),
                DAEDALUS_REQ_IOC_ID as libc::c_ulong,
                &mut id as *mut u64,
            )
        };
        if r < 0 || id == 0 || id > u32::MAX as u64 {
            return Err(libc::EINVAL);
        }
        Ok(ReqId(id as u32))
    }

    fn request_done(&self, r: ReqId) {
        let kh = self
            .node
            .pollers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&r.0)
            .copied();
        if let (Some(kh), Some(chan)) = (kh, self.node.chan.get()) {
            chan.notify_poll(kh);
        }
    }
}

/// Registers `/dev/<name>` and `/dev/<name>-request` and serves them.
pub fn start(
    shared: &Arc<Shared>,
    name: &str,
    threads: usize,
) -> anyhow::Result<Vec<std::thread::JoinHandle<()>>> {
    let media = Arc::new(MediaNode {
        shared: shared.clone(),
        video_rdev: OnceLock::new(),
    });
    if let Ok(st) = rustix::fs::stat(format!("/dev/{}", shared.name).as_str()) {
        let _ = media
            .video_rdev
            .set((rustix::fs::major(st.st_rdev), rustix::fs::minor(st.st_rdev)));
    }
    let req = Arc::new(RequestNode {
        shared: shared.clone(),
        chan: OnceLock::new(),
        pollers: Mutex::new(HashMap::new()),
    });
    let resolver = Arc::new(Resolver {
        node: req.clone(),
        rdev: OnceLock::new(),
    });
    shared.set_resolver(resolver.clone());
    let mchan = Channel::open("/dev/cuse".as_ref())?;
    let mut t = cuse::serve(mchan, name, media, threads.clamp(1, 2))?;
    let rchan = Channel::open("/dev/cuse".as_ref())?;
    let _ = req.chan.set(rchan.clone());
    let rname = format!("{name}-request");
    t.extend(cuse::serve(rchan, &rname, req, threads.max(2))?);
    // The node appears once the kernel processed our CUSE_INIT reply.
    let path = format!("/dev/{rname}");
    for _ in 0..200 {
        if let Ok(st) = rustix::fs::stat(path.as_str()) {
            let _ = resolver.rdev.set(st.st_rdev);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    if resolver.rdev.get().is_none() {
        anyhow::bail!("{path} did not appear");
    }
    Ok(t)
}

fn simple<F: FnOnce(&mut [u8]) -> Result<(), i32>>(
    io: IoctlIn,
    data: &[u8],
    reply: ReplyIoctl,
    f: F,
) {
    let size = ioc_size(io.cmd);
    let (din, dout) = ioc_dir(io.cmd);
    let mut need = Need::default();
    if size > 0 {
        need.add(io.arg, size, din, dout);
    }
    if !need.satisfied(io.in_size, io.out_size) {
        return reply.retry(&need.input, &need.output);
    }
    let mut buf = vec![0u8; size];
    if din {
        buf.copy_from_slice(data);
    }
    match f(&mut buf) {
        Ok(()) if dout => reply.ok(0, &[&buf]),
        Ok(()) => reply.ok(0, &[]),
        Err(e) => reply.error(e),
    }
}

impl MediaNode {
    fn topology(&self, io: IoctlIn, data: &[u8], reply: ReplyIoctl) {
        let hs = std::mem::size_of::<MediaTopology>();
        let mut need = Need::default();
        need.add(io.arg, hs, true, true);
        if data.len() < hs {
            return reply.retry(&need.input, &need.output);
        }
        let mut t = MediaTopology::read_from_prefix(data).expect("sized").0;
        let (maj, min) = self.video_rdev.get().copied().unwrap_or((0, 0));
        let mut ent = MediaEntity::new_zeroed();
        ent.id = 1;
        ent.name = cstr(&format!("{}-decoder", self.shared.name));
        ent.function = ENT_F_PROC_VIDEO_DECODER;
        let mut intf = MediaInterface::new_zeroed();
        intf.id = 2;
        intf.intf_type = INTF_T_V4L_VIDEO;
        intf.major = maj;
        intf.minor = min;
        let mut link = MediaLink::new_zeroed();
        link.id = 3;
        link.source_id = 2;
        link.sink_id = 1;
        link.flags = LNK_INTERFACE;
        let mut outs: Vec<Vec<u8>> = Vec::new();
        let mut err = 0;
        let mut want = |ptr: u64, num: &mut u32, bytes: Vec<u8>, n: u32| {
            if ptr != 0 {
                if *num < n {
                    err = libc::ENOSPC;
                } else if n > 0 {
                    need.add(ptr, bytes.len(), false, true);
                    outs.push(bytes);
                }
            }
            *num = n;
        };
        want(
            t.ptr_entities,
            &mut t.num_entities,
            ent.as_bytes().to_vec(),
            1,
        );
        want(
            t.ptr_interfaces,
            &mut t.num_interfaces,
            intf.as_bytes().to_vec(),
            1,
        );
        want(t.ptr_pads, &mut t.num_pads, Vec::new(), 0);
        want(t.ptr_links, &mut t.num_links, link.as_bytes().to_vec(), 1);
        t.topology_version = 1;
        if err != 0 {
            return reply.error(err);
        }
        if !need.satisfied(io.in_size, io.out_size) {
            return reply.retry(&need.input, &need.output);
        }
        let mut parts: Vec<&[u8]> = vec![t.as_bytes()];
        parts.extend(outs.iter().map(|v| v.as_slice()));
        reply.ok(0, &parts);
    }
}

impl CuseDevice for MediaNode {
    fn open(&self, _c: Caller, _flags: u32) -> Result<u64, i32> {
        Ok(1)
    }
    fn release(&self, _fh: u64) {}
    fn ioctl(&self, _c: Caller, io: IoctlIn, data: &[u8], reply: ReplyIoctl) {
        match io.cmd {
            MEDIA_IOC_DEVICE_INFO => simple(io, data, reply, |b| {
                let mut i = MediaDeviceInfo::new_zeroed();
                i.driver = cstr("daedalus-cuse");
                i.model = cstr("daedalus stateless decoder (CUSE)");
                i.bus_info = cstr(&self.shared.bus_info);
                i.media_version = 0x0006_0c00;
                i.driver_version = 0x0006_0c00;
                b.copy_from_slice(i.as_bytes());
                Ok(())
            }),
            MEDIA_IOC_G_TOPOLOGY => self.topology(io, data, reply),
            // Only the launcher can give the caller a request fd.
            _ => reply.error(libc::ENOTTY),
        }
    }
    fn poll(&self, _fh: u64, _kh: u64, _events: u32) -> u32 {
        0
    }
}

impl CuseDevice for RequestNode {
    fn open(&self, _c: Caller, _flags: u32) -> Result<u64, i32> {
        let mut g = self.shared.lock();
        let r = g.dev.request_alloc().map_err(|e| e.errno())?;
        Ok(u64::from(r.0))
    }

    fn release(&self, fh: u64) {
        let r = ReqId(fh as u32);
        self.pollers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&r.0);
        let mut g = self.shared.lock();
        let _ = g.dev.request_close(r);
    }

    fn ioctl(&self, _c: Caller, io: IoctlIn, data: &[u8], reply: ReplyIoctl) {
        let r = ReqId(io.fh as u32);
        match io.cmd {
            MEDIA_REQUEST_IOC_QUEUE => {
                let mut g = self.shared.lock();
                let now = g.now();
                match g.dev.request_queue(r, now) {
                    Ok(()) => reply.ok(0, &[]),
                    Err(e) => reply.error(e.errno()),
                }
            }
            MEDIA_REQUEST_IOC_REINIT => {
                let mut g = self.shared.lock();
                match g.dev.request_reinit(r) {
                    Ok(()) => reply.ok(0, &[]),
                    Err(e) => reply.error(e.errno()),
                }
            }
            DAEDALUS_REQ_IOC_ID => simple(io, data, reply, |b| {
                b.copy_from_slice(&io.fh.to_ne_bytes());
                Ok(())
            }),
            _ => reply.error(libc::ENOTTY),
        }
    }

    fn poll(&self, fh: u64, kh: u64, _events: u32) -> u32 {
        let r = ReqId(fh as u32);
        self.pollers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(r.0, kh);
        let g = self.shared.lock();
        match g.dev.request_state(r) {
            Some(ReqState::Complete) => libc::POLLPRI as u32,
            Some(ReqState::Idle) => libc::POLLERR as u32,
            Some(ReqState::Queued) => 0,
            None => libc::POLLERR as u32,
        }
    }
}
