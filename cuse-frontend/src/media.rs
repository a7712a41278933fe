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

/// `MEDIA_ENT_ID_FLAG_NEXT`
const MEDIA_ENT_ID_FLAG_NEXT: u32 = 1 << 31;
/// `MEDIA_ENT_F_IO_V4L`
const ENT_F_IO_V4L: u32 = 0x0001_0001;
/// `MEDIA_PAD_FL_SINK`
const PAD_FL_SINK: u32 = 1;
/// `MEDIA_PAD_FL_SOURCE`
const PAD_FL_SOURCE: u32 = 2;
/// `MEDIA_LNK_FL_ENABLED | MEDIA_LNK_FL_IMMUTABLE` (a data link)
const LNK_DATA_FIXED: u32 = 1 | 2;

/// The graph of a memory-to-memory decoder, as v4l2-mem2mem registers it:
/// source (IO) → proc (decoder) → sink (IO), the video interface linked to
/// both IO entities. Ids: entities 1–3, interface 4, pads 5–8, links 9–12.
#[derive(Debug)]
struct Graph {
    entities: Vec<MediaEntity>,
    interfaces: Vec<MediaInterface>,
    pads: Vec<MediaPad>,
    links: Vec<MediaLink>,
}

/// `struct media_pad_desc` as raw words: entity, index, flags.
fn pad_desc(entity: u32, index: u16, flags: u32) -> [u8; 20] {
    let mut b = [0u8; 20];
    b[..4].copy_from_slice(&entity.to_ne_bytes());
    b[4..6].copy_from_slice(&index.to_ne_bytes());
    b[8..12].copy_from_slice(&flags.to_ne_bytes());
    b
}

/// The forward data links of `entity`: (source entity, pad index, sink
/// entity, pad index).
fn data_links(entity: u32) -> &'static [(u32, u16, u32, u16)] {
    match entity {
        1 => &[(1, 0, 2, 0)],
        2 => &[(2, 1, 3, 0)],
        _ => &[],
    }
}

/// Pads of an entity: (index, flags).
fn entity_pads(entity: u32) -> &'static [(u16, u32)] {
    match entity {
        1 => &[(0, PAD_FL_SOURCE)],
        2 => &[(0, PAD_FL_SINK), (1, PAD_FL_SOURCE)],
        3 => &[(0, PAD_FL_SINK)],
        _ => &[],
    }
}

impl MediaNode {
    fn entity_name(&self, id: u32) -> String {
        let n = &self.shared.name;
        match id {
            1 => format!("{n}-source"),
            2 => format!("{n}-proc"),
            _ => format!("{n}-sink"),
        }
    }

    fn entity_function(id: u32) -> u32 {
        if id == 2 {
            ENT_F_PROC_VIDEO_DECODER
        } else {
            ENT_F_IO_V4L
        }
    }

    fn graph(&self) -> Graph {
        let (maj, min) = self.video_rdev.get().copied().unwrap_or((0, 0));
        let entities = (1..=3)
            .map(|id| {
                let mut e = MediaEntity::new_zeroed();
                e.id = id;
                e.name = cstr(&self.entity_name(id));
                e.function = Self::entity_function(id);
                e
            })
            .collect();
        let mut intf = MediaInterface::new_zeroed();
        intf.id = 4;
        intf.intf_type = INTF_T_V4L_VIDEO;
        intf.major = maj;
        intf.minor = min;
        let mut pads = Vec::new();
        let pad_id = |ent: u32, index: u16| 5 + pads_before(ent) + u32::from(index);
        fn pads_before(ent: u32) -> u32 {
            (1..ent).map(|e| entity_pads(e).len() as u32).sum()
        }
        for ent in 1..=3 {
            for &(index, flags) in entity_pads(ent) {
                let mut p = MediaPad::new_zeroed();
                p.id = pad_id(ent, index);
                p.entity_id = ent;
                p.flags = flags;
                p.index = u32::from(index);
                pads.push(p);
            }
        }
        let mut links = Vec::new();
        let mut next = 9;
        for ent in 1..=3 {
            for &(se, si, de, di) in data_links(ent) {
                let mut l = MediaLink::new_zeroed();
                l.id = next;
                next += 1;
                l.source_id = pad_id(se, si);
                l.sink_id = pad_id(de, di);
                l.flags = LNK_DATA_FIXED;
                links.push(l);
            }
        }
        for ent in [1, 3] {
            let mut l = MediaLink::new_zeroed();
            l.id = next;
            next += 1;
            l.source_id = 4;
            l.sink_id = ent;
            l.flags = LNK_INTERFACE;
            links.push(l);
        }
        Graph {
            entities,
            interfaces: vec![intf],
            pads,
            links,
        }
    }

    fn enum_links(&self, io: IoctlIn, data: &[u8], reply: ReplyIoctl) {
        let hs = std::mem::size_of::<MediaLinksEnum>();
        let mut need = Need::default();
        need.add(io.arg, hs, true, true);
        if data.len() < hs {
            return reply.retry(&need.input, &need.output);
        }
        let mut l = MediaLinksEnum::read_from_prefix(data).expect("sized").0;
        if !(1..=3).contains(&l.entity) {
            return reply.error(libc::EINVAL);
        }
        let ent = l.entity;
        let pads: Vec<u8> = entity_pads(ent)
            .iter()
            .flat_map(|&(i, f)| pad_desc(ent, i, f))
            .collect();
        let links: Vec<u8> = data_links(ent)
            .iter()
            .flat_map(|&(se, si, de, di)| {
                let mut b = Vec::with_capacity(52);
                b.extend_from_slice(&pad_desc(se, si, PAD_FL_SOURCE));
                b.extend_from_slice(&pad_desc(de, di, PAD_FL_SINK));
                b.extend_from_slice(&LNK_DATA_FIXED.to_ne_bytes());
                b.extend_from_slice(&[0u8; 8]);
                b
            })
            .collect();
        let mut parts: Vec<&[u8]> = Vec::new();
        if l.pads != 0 && !pads.is_empty() {
            need.add(l.pads, pads.len(), false, true);
            parts.push(&pads);
        }
        if l.links != 0 && !links.is_empty() {
            need.add(l.links, links.len(), false, true);
            parts.push(&links);
        }
        if !need.satisfied(io.in_size, io.out_size) {
            return reply.retry(&need.input, &need.output);
        }
        l.reserved = [0; 4];
        let head = l.as_bytes().to_vec();
        parts.insert(0, &head);
        reply.ok(0, &parts);
    }

    fn topology(&self, io: IoctlIn, data: &[u8], reply: ReplyIoctl) {
        let hs = std::mem::size_of::<MediaTopology>();
        let mut need = Need::default();
        need.add(io.arg, hs, true, true);
        if data.len() < hs {
            return reply.retry(&need.input, &need.output);
        }
        let mut t = MediaTopology::read_from_prefix(data).expect("sized").0;
        let topo = self.graph();
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
            topo.entities.as_bytes().to_vec(),
            topo.entities.len() as u32,
        );
        want(
            t.ptr_interfaces,
            &mut t.num_interfaces,
            topo.interfaces.as_bytes().to_vec(),
            topo.interfaces.len() as u32,
        );
        want(
            t.ptr_pads,
            &mut t.num_pads,
            topo.pads.as_bytes().to_vec(),
            topo.pads.len() as u32,
        );
        want(
            t.ptr_links,
            &mut t.num_links,
            topo.links.as_bytes().to_vec(),
            topo.links.len() as u32,
        );
        t.topology_version = 1;
        t.reserved1 = 0;
        t.reserved2 = 0;
        t.reserved3 = 0;
        t.reserved4 = 0;
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
            // The one entity (id 1): the decoder, no pads, no data links.
            MEDIA_IOC_ENUM_ENTITIES => simple(io, data, reply, |b| {
                let want = u32::from_ne_bytes(b[..4].try_into().expect("4"));
                let id = if want & MEDIA_ENT_ID_FLAG_NEXT != 0 {
                    (want & !MEDIA_ENT_ID_FLAG_NEXT) + 1
                } else {
                    want
                };
                if !(1..=3).contains(&id) {
                    return Err(libc::EINVAL);
                }
                let mut e = MediaEntityDesc::new_zeroed();
                e.id = id;
                e.name = cstr(&self.entity_name(id));
                e.type_ = Self::entity_function(id);
                e.pads = entity_pads(id).len() as u16;
                e.links = data_links(id).len() as u16;
                b.copy_from_slice(e.as_bytes());
                Ok(())
            }),
            MEDIA_IOC_ENUM_LINKS => self.enum_links(io, data, reply),
            // Every data link is immutable: only its own flags are accepted.
            MEDIA_IOC_SETUP_LINK => simple(io, data, reply, |b| {
                let word = |o: usize| u32::from_ne_bytes(b[o..o + 4].try_into().expect("4"));
                let half = |o: usize| u16::from_ne_bytes(b[o..o + 2].try_into().expect("2"));
                let (se, si, de, di, flags) = (word(0), half(4), word(20), half(24), word(40));
                let known = (1..=3).flat_map(data_links).any(|l| *l == (se, si, de, di));
                if !known || flags != LNK_DATA_FIXED {
                    return Err(libc::EINVAL);
                }
                b[44..52].fill(0);
                Ok(())
            }),
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
