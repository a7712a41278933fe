//! `daedalus-cuse run -- CMD`: runs CMD with a seccomp user-notification
//! filter that traps `ioctl(fd, MEDIA_IOC_REQUEST_ALLOC, int *)`, the one
//! ioctl a CUSE server cannot answer (it must create an fd in the caller).
//!
//! For each trapped call the supervisor (this process):
//! 1. takes a duplicate of the caller's `fd` (`pidfd_getfd`) and finds which
//!    char device it is (`/sys/dev/char/MAJ:MIN`); if it is not a
//!    daedalus media node (no `/dev/<name>-request` next to it) the call
//!    continues to the kernel untouched (`SECCOMP_USER_NOTIF_FLAG_CONTINUE`);
//! 2. opens `/dev/<name>-request` (the server allocates a request);
//! 3. checks the notification is still valid (`SECCOMP_IOCTL_NOTIF_ID_VALID`:
//!    the caller was not killed and its id not reused in between);
//! 4. installs the fd in the caller (`SECCOMP_IOCTL_NOTIF_ADDFD`, `O_CLOEXEC`),
//!    writes the new fd number to the caller's `int *` (`process_vm_writev`),
//!    and answers the syscall with 0.
//!
//! The filter is inherited by CMD's children and threads.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use anyhow::{bail, Context as _, Result};

use crate::media::steal_fd;
use crate::mem::write_remote;
use crate::uapi::MEDIA_IOC_REQUEST_ALLOC;

const SECCOMP_SET_MODE_FILTER: libc::c_uint = 1;
const SECCOMP_FILTER_FLAG_NEW_LISTENER: libc::c_uint = 8;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_RET_USER_NOTIF: u32 = 0x7fc0_0000;
const SECCOMP_USER_NOTIF_FLAG_CONTINUE: u32 = 1;
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const SECCOMP_IOCTL_NOTIF_RECV: libc::c_ulong = 0xc050_2100;
const SECCOMP_IOCTL_NOTIF_SEND: libc::c_ulong = 0xc018_2101;
const SECCOMP_IOCTL_NOTIF_ID_VALID: libc::c_ulong = 0x4008_2102;
const SECCOMP_IOCTL_NOTIF_ADDFD: libc::c_ulong = 0x4018_2103;

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct SeccompData {
    nr: i32,
    arch: u32,
    ip: u64,
    args: [u64; 6],
}

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct Notif {
    id: u64,
    pid: u32,
    flags: u32,
    data: SeccompData,
}

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct NotifResp {
    id: u64,
    val: i64,
    error: i32,
    flags: u32,
}

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct NotifAddfd {
    id: u64,
    flags: u32,
    srcfd: u32,
    newfd: u32,
    newfd_flags: u32,
}

const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JEQ_K: u16 = 0x15;
const BPF_RET_K: u16 = 0x06;

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// The filter: x86-64 `ioctl` with cmd `MEDIA_IOC_REQUEST_ALLOC` goes to
/// the supervisor, everything else is allowed.
pub fn filter() -> Vec<libc::sock_filter> {
    vec![
        stmt(BPF_LD_W_ABS, 4), // arch
        jump(BPF_JEQ_K, AUDIT_ARCH_X86_64, 0, 4),
        stmt(BPF_LD_W_ABS, 0), // nr
        jump(BPF_JEQ_K, libc::SYS_ioctl as u32, 0, 2),
        stmt(BPF_LD_W_ABS, 24), // args[1], low 32 bits (the cmd is an unsigned int)
        jump(BPF_JEQ_K, MEDIA_IOC_REQUEST_ALLOC, 1, 0),
        stmt(BPF_RET_K, SECCOMP_RET_ALLOW),
        stmt(BPF_RET_K, SECCOMP_RET_USER_NOTIF),
    ]
}

fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// What the supervisor did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Request fds installed in the client.
    pub installed: u64,
    /// Trapped calls on other files, continued to the kernel.
    pub continued: u64,
    /// Trapped calls answered with an error.
    pub failed: u64,
}

/// Runs `argv` under the filter and serves its notifications until it
/// exits; returns its exit status (128 + signal when killed).
pub fn run(argv: &[String]) -> Result<i32> {
    run_with_stats(argv).map(|(code, _)| code)
}

/// [`run`], also returning what the supervisor did.
pub fn run_with_stats(argv: &[String]) -> Result<(i32, Stats)> {
    let mut stats = Stats::default();
    let prog = filter();
    let (mut parent_sock, child_sock) =
        std::os::unix::net::UnixStream::pair().context("socketpair")?;
    let cargs: Vec<CString> = argv
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
        .context("argument with a NUL byte")?;
    let mut cptrs: Vec<*const libc::c_char> = cargs.iter().map(|c| c.as_ptr()).collect();
    cptrs.push(std::ptr::null());
    let child_fd = child_sock.as_raw_fd();
    // SAFETY: fork in a single-threaded process (the launcher has started
    // no thread yet); the child only makes async-signal-safe syscalls on
    // memory prepared before the fork, then execs or exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        bail!("fork: {}", std::io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: child side, see above: raw syscalls only.
        unsafe { child(&prog, child_fd, &cptrs) }
    }
    drop(child_sock);
    let listener = recv_fd(&mut parent_sock).context("receiving the seccomp listener")?;
    // SAFETY: plain syscall; the returned fd is new and ours.
    let child_pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if child_pidfd < 0 {
        bail!("pidfd_open: {}", std::io::Error::last_os_error());
    }
    // SAFETY: as above.
    let child_pidfd = unsafe { OwnedFd::from_raw_fd(child_pidfd as i32) };
    loop {
        let mut fds = [
            libc::pollfd {
                fd: listener.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: child_pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfds.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 && errno() != libc::EINTR {
            bail!("poll: {}", std::io::Error::last_os_error());
        }
        if fds[0].revents & libc::POLLIN != 0 {
            match serve_one(&listener) {
                Ok(Some(Outcome::Installed)) => stats.installed += 1,
                Ok(Some(Outcome::Continued)) => stats.continued += 1,
                Ok(Some(Outcome::Failed)) => stats.failed += 1,
                Ok(None) => {}
                Err(e) => tracing::warn!("seccomp notification: {e:#}"),
            }
        }
        if fds[1].revents & libc::POLLIN != 0 {
            let mut status = 0;
            // SAFETY: waits for our own child.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            let code = if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                128 + libc::WTERMSIG(status)
            };
            return Ok((code, stats));
        }
    }
}

/// Child side of the fork: no_new_privs, the filter with a listener,
/// the listener sent to the parent, exec.
///
/// # Safety
/// Only to be called in the child of a fork of a single-threaded process.
unsafe fn child(prog: &[libc::sock_filter], sock: i32, argv: &[*const libc::c_char]) -> ! {
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        // SAFETY: _exit is always safe.
        unsafe { libc::_exit(126) };
    }
    // SAFETY: `fprog` points to the filter, alive across the call.
    let listener = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            SECCOMP_SET_MODE_FILTER,
            SECCOMP_FILTER_FLAG_NEW_LISTENER,
            &fprog as *const libc::sock_fprog,
        )
    };
    if listener < 0 {
        // SAFETY: _exit is always safe.
        unsafe { libc::_exit(126) };
    }
    let listener = listener as i32;
    // SCM_RIGHTS with stack buffers only.
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut cbuf = [0u64; 4];
    // SAFETY: a zeroed msghdr is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE is a pure computation.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(4) } as usize;
    // SAFETY: the control buffer is large enough for one int (32 bytes).
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(4) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<i32>(), listener);
    }
    // SAFETY: `msg` describes valid buffers.
    if unsafe { libc::sendmsg(sock, &msg, 0) } != 1 {
        // SAFETY: _exit is always safe.
        unsafe { libc::_exit(126) };
    }
    // SAFETY: closing fds we own in the child.
    unsafe {
        libc::close(listener);
        libc::close(sock);
    }
    // SAFETY: argv is a NULL-terminated array of C strings built before
    // the fork.
    unsafe { libc::execvp(argv[0], argv.as_ptr()) };
    // SAFETY: _exit is always safe.
    unsafe { libc::_exit(127) }
}

fn recv_fd(sock: &mut std::os::unix::net::UnixStream) -> Result<OwnedFd> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut cbuf = [0u64; 4];
    // SAFETY: a zeroed msghdr is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cbuf);
    // SAFETY: `msg` describes valid buffers.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n != 1 {
        bail!("the child could not install the filter (seccomp user notification unavailable?)");
    }
    // SAFETY: the kernel filled the control buffer; CMSG_* walk it.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        if c.is_null() || (*c).cmsg_type != libc::SCM_RIGHTS {
            bail!("no fd received");
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<i32>());
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

fn respond(listener: &OwnedFd, id: u64, val: i64, error: i32, flags: u32) {
    let mut r = NotifResp {
        id,
        val,
        error,
        flags,
    };
    // SAFETY: SEND reads one seccomp_notif_resp.
    unsafe { libc::ioctl(listener.as_raw_fd(), SECCOMP_IOCTL_NOTIF_SEND, &mut r) };
}

fn id_valid(listener: &OwnedFd, id: u64) -> bool {
    let mut id = id;
    // SAFETY: ID_VALID reads one u64.
    unsafe { libc::ioctl(listener.as_raw_fd(), SECCOMP_IOCTL_NOTIF_ID_VALID, &mut id) == 0 }
}

/// The request node belonging to the char device `fd` is, if any.
fn request_node_of(fd: &OwnedFd) -> Option<String> {
    let st = rustix::fs::fstat(fd).ok()?;
    if st.st_mode & libc::S_IFMT != libc::S_IFCHR {
        return None;
    }
    let link = std::fs::read_link(format!(
        "/sys/dev/char/{}:{}",
        rustix::fs::major(st.st_rdev),
        rustix::fs::minor(st.st_rdev)
    ))
    .ok()?;
    let link = link.to_string_lossy().into_owned();
    if !link.contains("/cuse/") {
        return None;
    }
    let name = link.rsplit('/').next()?;
    let path = format!("/dev/{name}-request");
    std::path::Path::new(&path).exists().then_some(path)
}

/// How one notification was answered.
enum Outcome {
    Installed,
    Continued,
    Failed,
}

fn serve_one(listener: &OwnedFd) -> Result<Option<Outcome>> {
    let mut n = Notif::default();
    // SAFETY: RECV fills one zeroed seccomp_notif.
    if unsafe { libc::ioctl(listener.as_raw_fd(), SECCOMP_IOCTL_NOTIF_RECV, &mut n) } < 0 {
        let e = errno();
        if e == libc::ENOENT || e == libc::EINTR {
            return Ok(None); // the caller went away
        }
        bail!("NOTIF_RECV: errno {e}");
    }
    let fd = n.data.args[0] as i32;
    let out = n.data.args[2];
    let stolen = match steal_fd(n.pid, fd) {
        Ok(f) => f,
        Err(e) => {
            respond(listener, n.id, -1, -e, 0);
            return Ok(Some(Outcome::Failed));
        }
    };
    let Some(path) = request_node_of(&stolen) else {
        // Not ours: the kernel runs the ioctl as if nothing happened.
        respond(listener, n.id, 0, 0, SECCOMP_USER_NOTIF_FLAG_CONTINUE);
        return Ok(Some(Outcome::Continued));
    };
    drop(stolen);
    let req = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
    {
        Ok(f) => OwnedFd::from(f),
        Err(e) => {
            respond(
                listener,
                n.id,
                -1,
                -e.raw_os_error().unwrap_or(libc::ENOMEM),
                0,
            );
            return Ok(Some(Outcome::Failed));
        }
    };
    if !id_valid(listener, n.id) {
        return Ok(None); // the caller died; `req` closes, the request is freed
    }
    let mut add = NotifAddfd {
        id: n.id,
        flags: 0,
        srcfd: req.as_raw_fd() as u32,
        newfd: 0,
        newfd_flags: libc::O_CLOEXEC as u32,
    };
    // SAFETY: ADDFD reads one seccomp_notif_addfd.
    let newfd = unsafe { libc::ioctl(listener.as_raw_fd(), SECCOMP_IOCTL_NOTIF_ADDFD, &mut add) };
    if newfd < 0 {
        let e = errno();
        if e != libc::ENOENT {
            respond(listener, n.id, -1, -e, 0);
        }
        return Ok(Some(Outcome::Failed));
    }
    if let Err(e) = write_remote(n.pid, out, &newfd.to_ne_bytes()) {
        // The fd stays installed in the caller (it cannot be removed from
        // here); the caller sees EFAULT as with a bad pointer.
        respond(listener, n.id, -1, -e, 0);
        return Ok(Some(Outcome::Failed));
    }
    respond(listener, n.id, 0, 0, 0);
    Ok(Some(Outcome::Installed))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the filter through the kernel: a traced `true` exits 0, and an
    /// ioctl of another number is untouched (no notification, no hang).
    #[test]
    fn launcher_runs_a_command() {
        match run(&["true".to_string()]) {
            Ok(code) => assert_eq!(code, 0),
            Err(e) => eprintln!("seccomp user notification unavailable here: {e:#}"),
        }
        if let Ok(code) = run(&["sh".into(), "-c".into(), "exit 3".into()]) {
            assert_eq!(code, 3);
        }
    }

    /// The trap and the pass-through: MEDIA_IOC_REQUEST_ALLOC on a file
    /// that is not a daedalus media node reaches the kernel unchanged
    /// (`/dev/null` answers ENOTTY), other ioctls are not trapped at all.
    #[test]
    fn foreign_request_alloc_continues_to_the_kernel() {
        if std::process::Command::new("python3")
            .arg("-V")
            .output()
            .is_err()
        {
            eprintln!("no python3: skipped");
            return;
        }
        let script = format!(
            "import fcntl, errno, sys\n\
             f = open('/dev/null', 'rb')\n\
             try:\n    fcntl.ioctl(f, {MEDIA_IOC_REQUEST_ALLOC:#x}, b'0000')\n\
             except OSError as e:\n    sys.exit(0 if e.errno == errno.ENOTTY else 1)\n\
             sys.exit(2)\n"
        );
        match run_with_stats(&["python3".into(), "-c".into(), script]) {
            Ok((code, st)) => {
                assert_eq!(code, 0, "ENOTTY expected from /dev/null");
                assert_eq!(
                    st,
                    Stats {
                        continued: 1,
                        ..Stats::default()
                    },
                    "exactly the one REQUEST_ALLOC was trapped"
                );
            }
            Err(e) => eprintln!("seccomp user notification unavailable here: {e:#}"),
        }
    }

    #[test]
    fn filter_shape() {
        let f = filter();
        assert_eq!(f.len(), 8);
        assert_eq!(f[5].k, MEDIA_IOC_REQUEST_ALLOC);
        assert_eq!(f[7].k, SECCOMP_RET_USER_NOTIF);
    }
}
