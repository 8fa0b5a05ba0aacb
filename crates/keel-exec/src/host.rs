//! The attempt host: one long-lived, single-threaded helper process per Keel that forks an
//! attempt supervisor for each attempt.
//!
//! Starting every supervisor as a fresh `keel` process costs an exec, a dynamic link and a
//! runtime start-up per attempt, several times a bare spawn of the task itself. The host pays
//! that once; after it a supervisor is a `fork` of a small single-threaded process, which is safe
//! (there are no other threads whose locks a child could inherit) and cheap.
//!
//! Crash safety is unchanged. Keel takes an attempt's lock before asking the host for it and
//! hands the locked descriptor over the socket (`SCM_RIGHTS`); a descriptor in flight stays
//! open, so the lock is held without a gap from Keel to the forked supervisor. If Keel dies, the
//! host still reads what was sent, keeps its supervisors company until they finish, and exits.
//! If the host dies, its supervisors live on and Keel waits on their locks instead.
//!
//! It must not touch the state store.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::supervisor::{self, SupervisorArgs};

/// Messages from Keel to the host.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ToHost {
    /// Fork a supervisor with these arguments; the lock descriptor travels with the message.
    Launch {
        id: u64,
        args: Vec<String>,
        env: Vec<(String, String)>,
    },
    Stop {
        id: u64,
    },
}

/// Messages from the host to Keel.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum FromHost {
    /// The supervisor was forked: Keel records its pid, to find and stop it after a restart.
    Started {
        id: u64,
        pid: u32,
    },
    Exited {
        id: u64,
    },
}

/// How long a launch waits for the host to say which pid it forked. The fork takes well under a
/// millisecond; past this the attempt runs on with its pid unknown, which costs nothing but the
/// pid in the store (the supervisor also writes it into its record file).
const STARTED_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

const MAX_MESSAGE: usize = 1 << 20;

fn send_message(socket: RawFd, bytes: &[u8], pass: Option<RawFd>) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: msghdr is plain data; every pointer set below outlives the sendmsg call.
    let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
    header.msg_iov = &mut iov;
    header.msg_iovlen = 1;
    if let Some(fd) = pass {
        header.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        header.msg_controllen = space as _;
        // SAFETY: the control buffer is CMSG_SPACE bytes for one descriptor, as the macros expect.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&header);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut RawFd, fd);
        }
    }
    loop {
        // SAFETY: a valid msghdr, as built above.
        let sent = unsafe { libc::sendmsg(socket, &header, libc::MSG_NOSIGNAL) };
        if sent >= 0 {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// Receives one message and the descriptor it carries, if any. `Ok(None)` at end of stream.
fn receive_message(
    socket: RawFd,
    buffer: &mut [u8],
) -> io::Result<Option<(usize, Option<OwnedFd>)>> {
    let mut iov = libc::iovec {
        iov_base: buffer.as_mut_ptr() as *mut libc::c_void,
        iov_len: buffer.len(),
    };
    // SAFETY: a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: plain data, filled below with pointers that outlive the call.
    let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
    header.msg_iov = &mut iov;
    header.msg_iovlen = 1;
    header.msg_control = control.as_mut_ptr() as *mut libc::c_void;
    header.msg_controllen = space as _;
    let received = loop {
        // SAFETY: a valid msghdr over our buffers.
        let received = unsafe { libc::recvmsg(socket, &mut header, libc::MSG_CMSG_CLOEXEC) };
        if received >= 0 {
            break received as usize;
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    };
    if received == 0 {
        return Ok(None);
    }
    let mut passed = None;
    // SAFETY: walking the control messages the kernel wrote into our buffer.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&header);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const RawFd);
                passed = Some(OwnedFd::from_raw_fd(fd));
            }
            cmsg = libc::CMSG_NXTHDR(&header, cmsg);
        }
    }
    Ok(Some((received, passed)))
}

fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: a plain syscall returning a new descriptor we then own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptor is new and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// The host's entry point, `keel __host --socket-fd N`. Returns the exit code.
pub fn host_main(arguments: &[String]) -> i32 {
    let socket_fd: RawFd = match arguments {
        [flag, fd] if flag == "--socket-fd" => match fd.parse() {
            Ok(fd) => fd,
            Err(_) => return 2,
        },
        _ => {
            eprintln!("keel attempt host: usage: __host --socket-fd N");
            return 2;
        }
    };
    // SAFETY: Keel handed us this descriptor and nothing else in this process uses it.
    let socket = unsafe { OwnedFd::from_raw_fd(socket_fd) };
    // SAFETY: fcntl on our own descriptor.
    unsafe { libc::fcntl(socket.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    let mut socket_open = true;
    let mut children: HashMap<u64, (libc::pid_t, OwnedFd)> = HashMap::new();
    let mut buffer = vec![0u8; MAX_MESSAGE];
    loop {
        if !socket_open && children.is_empty() {
            return 0;
        }
        let mut poll_fds: Vec<libc::pollfd> = Vec::with_capacity(children.len() + 1);
        if socket_open {
            poll_fds.push(libc::pollfd {
                fd: socket.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        let ids: Vec<u64> = children.keys().copied().collect();
        for id in &ids {
            poll_fds.push(libc::pollfd {
                fd: children[id].1.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        // SAFETY: poll over descriptors we own.
        let ready =
            unsafe { libc::poll(poll_fds.as_mut_ptr(), poll_fds.len() as libc::nfds_t, -1) };
        if ready < 0 {
            continue;
        }
        let offset = usize::from(socket_open);
        for (index, id) in ids.iter().enumerate() {
            if poll_fds[offset + index].revents == 0 {
                continue;
            }
            if let Some((pid, _pidfd)) = children.remove(id) {
                let mut status = 0;
                // SAFETY: reaping our own child.
                unsafe { libc::waitpid(pid, &mut status, 0) };
                if socket_open {
                    let message =
                        serde_json::to_vec(&FromHost::Exited { id: *id }).unwrap_or_default();
                    let _ = send_message(socket.as_raw_fd(), &message, None);
                }
            }
        }
        if socket_open && poll_fds[0].revents != 0 {
            match receive_message(socket.as_raw_fd(), &mut buffer) {
                Ok(Some((length, passed))) => {
                    match serde_json::from_slice::<ToHost>(&buffer[..length]) {
                        Ok(ToHost::Launch { id, args, env }) => {
                            if let Some(child) =
                                fork_supervisor(&socket, &children, args, env, passed)
                            {
                                let message = serde_json::to_vec(&FromHost::Started {
                                    id,
                                    pid: child.0 as u32,
                                })
                                .unwrap_or_default();
                                let _ = send_message(socket.as_raw_fd(), &message, None);
                                children.insert(id, child);
                            } else if socket_open {
                                let message = serde_json::to_vec(&FromHost::Exited { id })
                                    .unwrap_or_default();
                                let _ = send_message(socket.as_raw_fd(), &message, None);
                            }
                        }
                        Ok(ToHost::Stop { id }) => {
                            if let Some((pid, _)) = children.get(&id) {
                                // SAFETY: signalling our own, not yet reaped, child.
                                unsafe { libc::kill(*pid, libc::SIGTERM) };
                            }
                        }
                        Err(error) => eprintln!("keel attempt host: bad message: {error}"),
                    }
                }
                // Keel is gone: finish what was started, then leave.
                Ok(None) | Err(_) => socket_open = false,
            }
        }
    }
}

/// Forks a supervisor for one attempt. Returns its pid and pidfd, or `None` if it could not.
fn fork_supervisor(
    socket: &OwnedFd,
    children: &HashMap<u64, (libc::pid_t, OwnedFd)>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    lock: Option<OwnedFd>,
) -> Option<(libc::pid_t, OwnedFd)> {
    let lock = lock?;
    let mut args = SupervisorArgs::parse(&args).ok()?;
    args.lock_fd = Some(lock.as_raw_fd());
    // SAFETY: this process is single-threaded, so the child may run any code after the fork.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // The child: it must not hold Keel's socket (Keel watches for the host going away) nor
        // its siblings' pidfds.
        // SAFETY: closing descriptors this child inherited and will not use.
        unsafe {
            libc::close(socket.as_raw_fd());
            for (_, pidfd) in children.values() {
                libc::close(pidfd.as_raw_fd());
            }
            libc::setpgid(0, 0);
        }
        let code = supervisor::run(&args, &env);
        // SAFETY: leave without running the host's destructors, which belong to the parent.
        unsafe { libc::_exit(code) };
    }
    drop(lock);
    if pid < 0 {
        return None;
    }
    match pidfd_open(pid) {
        Ok(pidfd) => Some((pid, pidfd)),
        Err(_) => {
            // Without a pidfd the host cannot watch it; the supervisor still runs and records
            // its result, and Keel finds the end through the attempt's lock.
            None
        }
    }
}

/// Keel's side of the host: a socket, and a thread that hands each `started` message to the
/// launch waiting for it and turns `exited` messages into wake-ups.
pub struct HostClient {
    socket: Arc<OwnedFd>,
    waiters: Arc<Mutex<HashMap<u64, Waiter>>>,
    next_id: AtomicU64,
    _child: std::process::Child,
}

/// What one launch waits to hear from the host: the supervisor's pid, then its end.
struct Waiter {
    started: Option<std::sync::mpsc::SyncSender<u32>>,
    exited: tokio::sync::oneshot::Sender<()>,
}

/// An attempt the host forked a supervisor for.
/// A pid that may not be known yet: calling it waits (boundedly) for it.
pub type PendingPid = Box<dyn FnOnce() -> Option<u32> + Send>;

pub struct HostedAttempt {
    /// Names the attempt to [`HostClient::stop`].
    pub id: u64,
    /// The forked supervisor's pid, once the host says: call it when the pid is needed, so that
    /// a caller launching several attempts sends them all before waiting for any fork.
    pub pid: PendingPid,
    /// Resolves when the supervisor has exited; fails if the host went away first.
    pub exited: tokio::sync::oneshot::Receiver<()>,
}

impl HostClient {
    /// Starts `program prefix… __host` with one end of a socket pair.
    pub fn start(program: &PathBuf, prefix: &[String]) -> io::Result<HostClient> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: socketpair fills the two descriptors on success.
        if unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        } != 0
        {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors are new and ours.
        let (ours, theirs) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let mut command = std::process::Command::new(program);
        command
            .args(prefix)
            .args(["__host", "--socket-fd", &theirs.as_raw_fd().to_string()])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let inherited = theirs.as_raw_fd();
        // The host inherits its end of the socket, and no other child may: close-on-exec is
        // cleared only in the forked child, between fork and exec.
        // SAFETY: fcntl is async-signal-safe and touches only the child's descriptor table.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
                if libc::fcntl(inherited, libc::F_SETFD, 0) == -1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn()?;
        drop(theirs);
        let socket = Arc::new(ours);
        let waiters: Arc<Mutex<HashMap<u64, Waiter>>> = Arc::default();
        let (reader_socket, reader_waiters) = (socket.clone(), waiters.clone());
        std::thread::Builder::new()
            .name("keel-host-reader".into())
            .spawn(move || {
                let mut buffer = vec![0u8; 4096];
                while let Ok(Some((length, _))) =
                    receive_message(reader_socket.as_raw_fd(), &mut buffer)
                {
                    let mut waiters = reader_waiters.lock().unwrap_or_else(|p| p.into_inner());
                    match serde_json::from_slice(&buffer[..length]) {
                        Ok(FromHost::Started { id, pid }) => {
                            if let Some(started) = waiters
                                .get_mut(&id)
                                .and_then(|waiter| waiter.started.take())
                            {
                                let _ = started.send(pid);
                            }
                        }
                        Ok(FromHost::Exited { id }) => {
                            // A launch still waiting for the pid learns that there is none.
                            if let Some(waiter) = waiters.remove(&id) {
                                let _ = waiter.exited.send(());
                            }
                        }
                        Err(_) => {}
                    }
                }
                // The host is gone: dropping the senders tells every waiter to watch the lock instead.
                reader_waiters
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clear();
            })?;
        Ok(HostClient {
            socket,
            waiters,
            next_id: AtomicU64::new(1),
            _child: child,
        })
    }

    /// The host process's pid.
    pub fn pid(&self) -> u32 {
        self._child.id()
    }

    /// Asks the host to supervise an attempt, and waits until it says which pid it forked.
    /// `lock` is the attempt's locked record file.
    pub fn launch(
        &self,
        lock: &File,
        args: &SupervisorArgs,
        env: &[(String, String)],
    ) -> io::Result<HostedAttempt> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (exited_sender, exited) = tokio::sync::oneshot::channel();
        let (started_sender, started) = std::sync::mpsc::sync_channel(1);
        self.waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                id,
                Waiter {
                    started: Some(started_sender),
                    exited: exited_sender,
                },
            );
        let message = serde_json::to_vec(&ToHost::Launch {
            id,
            args: args.to_args(),
            env: env.to_vec(),
        })
        .map_err(io::Error::other)?;
        if message.len() > MAX_MESSAGE {
            self.waiters
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            return Err(io::Error::other(
                "the attempt's command and environment are too large for the host",
            ));
        }
        if let Err(error) = send_message(self.socket.as_raw_fd(), &message, Some(lock.as_raw_fd()))
        {
            self.waiters
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            return Err(error);
        }
        // The lock is on its way whatever the answer: without one (the fork failed, the host
        // died) the attempt still ends through `exited` or its lock, only its pid is unknown.
        let pid: PendingPid = Box::new(move || started.recv_timeout(STARTED_TIMEOUT).ok());
        Ok(HostedAttempt { id, pid, exited })
    }

    /// Asks the host to stop an attempt. Returns false if the host could not be told.
    pub fn stop(&self, id: u64) -> bool {
        let message = serde_json::to_vec(&ToHost::Stop { id }).unwrap_or_default();
        send_message(self.socket.as_raw_fd(), &message, None).is_ok()
    }
}
