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
//! The host is a child subreaper. A supervisor that dies (SIGKILL, the OOM killer) hands the
//! processes it leaves (its task, and daemons that left the task's process group) to the host
//! as their parents end; the host kills every child of its own that is not a supervisor, and
//! the task's process group as the supervisor recorded it, and reports the supervisor's end
//! only once neither has anything left, so the attempt's retry never runs beside them.
//!
//! It must not touch the state store.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io;
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::io::{Errno, FdFlags, fcntl_setfd};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType, recvmsg, sendmsg, socketpair,
};
use rustix::process::{
    Pid, PidfdFlags, Signal, WaitOptions, getpid, kill_process, pidfd_open, set_child_subreaper,
    setpgid, waitpid,
};

use crate::group::{ProcessStat, TaskGroup, all_processes, children_of};
use crate::supervisor::{self, AttemptRecordFile, SupervisorArgs};

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
    Started { id: u64, pid: u32 },
    /// The supervisor has exited, and nothing it left behind runs any more: `orphans` is how
    /// many processes it left (its task's, and daemons that had left the task's group) that the
    /// host killed.
    Exited {
        id: u64,
        #[serde(default)]
        orphans: u32,
    },
}

/// How long a launch waits for the host to say which pid it forked. The fork takes well under a
/// millisecond; past this the attempt runs on with its pid unknown, which costs nothing but the
/// pid in the store (the supervisor also writes it into its record file).
const STARTED_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

const MAX_MESSAGE: usize = 1 << 20;

/// Sends one message, with `pass` travelling along as `SCM_RIGHTS` when given.
fn send_message(
    socket: BorrowedFd<'_>,
    bytes: &[u8],
    pass: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    let passed = pass.map(|fd| [fd]);
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if let Some(fds) = &passed {
        control.push(SendAncillaryMessage::ScmRights(fds));
    }
    loop {
        match sendmsg(
            socket,
            &[IoSlice::new(bytes)],
            &mut control,
            SendFlags::NOSIGNAL,
        ) {
            Ok(_) => return Ok(()),
            Err(Errno::INTR) => continue,
            Err(error) => return Err(error.into()),
        }
    }
}

/// Receives one message and the descriptor it carries, if any. `Ok(None)` at end of stream.
fn receive_message(
    socket: BorrowedFd<'_>,
    buffer: &mut [u8],
) -> io::Result<Option<(usize, Option<OwnedFd>)>> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let received = loop {
        match recvmsg(
            socket,
            &mut [IoSliceMut::new(buffer)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(message) => break message.bytes,
            Err(Errno::INTR) => continue,
            Err(error) => return Err(error.into()),
        }
    };
    if received == 0 {
        return Ok(None);
    }
    // One descriptor at most is ever sent; any other is closed as it is dropped.
    let mut passed = None;
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(descriptors) = message {
            for descriptor in descriptors {
                passed = Some(descriptor);
            }
        }
    }
    Ok(Some((received, passed)))
}

/// A supervisor the host forked and has not collected yet.
struct Supervised {
    pid: Pid,
    /// Readable once the supervisor has exited. Without one (an old kernel), the host checks on
    /// the supervisor every [`UNWATCHED_CHECK`] instead.
    pidfd: Option<OwnedFd>,
    /// The attempt directory: if the supervisor dies, its record there names the task's
    /// process group.
    dir: PathBuf,
}

/// How often the host checks on supervisors it has no pidfd for.
const UNWATCHED_CHECK: Duration = Duration::from_millis(50);

/// How long the host holds back the end of a supervisor while the processes it left behind die.
/// They have been sent SIGKILL and never run code of their own again; past this, what remains
/// is the kernel finishing a system call, and the end is reported anyway.
const ORPHAN_PATIENCE: Duration = Duration::from_secs(5);

/// A supervisor that has ended, whose end the host has not reported yet because processes it
/// left behind may still run.
struct HeldEnd {
    id: u64,
    since: Instant,
    /// The task's process group, from the record of a supervisor that died before writing its
    /// exit record; `None` when there is no such record.
    group: Option<TaskGroup>,
    /// The processes killed while this end was held.
    killed: HashSet<i32>,
}

impl HeldEnd {
    /// Holds the end of the supervisor `pid`, which has just been collected.
    fn new(id: u64, pid: Pid, dir: &Path) -> HeldEnd {
        let pid = pid.as_raw_nonzero().get() as u32;
        // Only a record the supervisor left running names a group still to end; once it wrote
        // its exit record, it had ended the group itself.
        let group = match supervisor::read_record(dir) {
            Some(Ok(AttemptRecordFile::Running {
                pid: recorded,
                task: Some(group),
                ..
            })) if recorded == pid => Some(group),
            _ => None,
        };
        HeldEnd {
            id,
            since: Instant::now(),
            group,
            killed: HashSet::new(),
        }
    }
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
    // No supervisor forked from here may keep Keel's socket open across its task's exec.
    let _ = fcntl_setfd(&socket, FdFlags::CLOEXEC);
    // A supervisor that dies (SIGKILL, the OOM killer) hands its children to the nearest child
    // subreaper above it: this host. So everything the attempt started, including daemons that
    // left the task's process group and session, comes here instead of to the system's first
    // process, and is killed before the supervisor's end is reported.
    let _ = set_child_subreaper(Some(getpid()));
    let mut socket_open = true;
    let mut children: HashMap<u64, Supervised> = HashMap::new();
    let mut held: Vec<HeldEnd> = Vec::new();
    let mut orphans_left = 0;
    // Since when some orphan has been dying; one stuck in the kernel for good must neither keep
    // the host polling fast nor keep it from leaving.
    let mut orphans_since: Option<Instant> = None;
    let mut buffer = vec![0u8; MAX_MESSAGE];
    loop {
        if !held.is_empty() || orphans_left > 0 {
            let mut killed = HashSet::new();
            // The groups first: what a group kill ends is handed to the host as it dies, and
            // found by the scan of its children just after.
            let mut groups_left = Vec::with_capacity(held.len());
            for end in &mut held {
                let members = end
                    .group
                    .as_ref()
                    .map(TaskGroup::kill_living_members)
                    .unwrap_or_default();
                groups_left.push(!members.is_empty());
                end.killed.extend(members);
            }
            orphans_left = end_orphans(&children, &mut killed);
            orphans_since = match orphans_left {
                0 => None,
                _ => orphans_since.or(Some(Instant::now())),
            };
            // Which orphan came from which supervisor cannot be told once it is the host's, so
            // every end held counts it.
            let mut still_held = Vec::with_capacity(held.len());
            for (mut end, group_left) in held.drain(..).zip(groups_left) {
                end.killed.extend(&killed);
                let patience_ran_out = end.since.elapsed() >= ORPHAN_PATIENCE;
                if (orphans_left > 0 || group_left) && !patience_ran_out {
                    still_held.push(end);
                    continue;
                }
                if socket_open {
                    let message = serde_json::to_vec(&FromHost::Exited {
                        id: end.id,
                        orphans: end.killed.len() as u32,
                    })
                    .unwrap_or_default();
                    let _ = send_message(socket.as_fd(), &message, None);
                }
            }
            held = still_held;
        }
        let orphans_stuck = orphans_since.is_some_and(|since| since.elapsed() >= ORPHAN_PATIENCE);
        if !socket_open
            && children.is_empty()
            && held.is_empty()
            && (orphans_left == 0 || orphans_stuck)
        {
            return 0;
        }
        let ids: Vec<u64> = children.keys().copied().collect();
        let unwatched = children.values().any(|child| child.pidfd.is_none());
        // A held end is looked at again soon whatever holds it: no descriptor says when its
        // task's process group has emptied.
        let timeout = if !held.is_empty() || (orphans_left > 0 && !orphans_stuck) {
            Some(Duration::from_millis(10))
        } else if orphans_left > 0 {
            Some(Duration::from_millis(500))
        } else if unwatched {
            Some(UNWATCHED_CHECK)
        } else {
            None
        };
        // Which of the socket (first, while open) and the supervisors' pidfds are readable.
        let ready: Vec<bool> = {
            let mut poll_fds: Vec<PollFd<'_>> = Vec::with_capacity(ids.len() + 1);
            // Where each polled descriptor's answer goes: 0 for the socket, 1 + index for the
            // supervisor `ids[index]`.
            let mut slots = Vec::with_capacity(ids.len() + 1);
            if socket_open {
                poll_fds.push(PollFd::new(&socket, PollFlags::IN));
                slots.push(0);
            }
            for (index, id) in ids.iter().enumerate() {
                if let Some(pidfd) = &children[id].pidfd {
                    poll_fds.push(PollFd::new(pidfd, PollFlags::IN));
                    slots.push(1 + index);
                }
            }
            let timeout = timeout.and_then(|timeout| Timespec::try_from(timeout).ok());
            if poll(&mut poll_fds, timeout.as_ref()).is_err() {
                continue;
            }
            let mut ready = vec![false; ids.len() + 1];
            for (poll_fd, slot) in poll_fds.iter().zip(slots) {
                ready[slot] = !poll_fd.revents().is_empty();
            }
            ready
        };
        for (index, id) in ids.iter().enumerate() {
            let ended = match children.get(id) {
                Some(Supervised { pidfd: Some(_), .. }) => ready[1 + index],
                Some(Supervised {
                    pid, pidfd: None, ..
                }) => matches!(waitpid(Some(*pid), WaitOptions::NOHANG), Ok(Some(_))),
                None => false,
            };
            if !ended {
                continue;
            }
            if let Some(child) = children.remove(id) {
                if child.pidfd.is_some() {
                    let _ = waitpid(Some(child.pid), WaitOptions::empty());
                }
                held.push(HeldEnd::new(*id, child.pid, &child.dir));
            }
        }
        if socket_open && ready[0] {
            match receive_message(socket.as_fd(), &mut buffer) {
                Ok(Some((length, passed))) => {
                    match serde_json::from_slice::<ToHost>(&buffer[..length]) {
                        Ok(ToHost::Launch { id, args, env }) => {
                            if let Some(child) =
                                fork_supervisor(&socket, &children, args, env, passed)
                            {
                                let message = serde_json::to_vec(&FromHost::Started {
                                    id,
                                    pid: child.pid.as_raw_nonzero().get() as u32,
                                })
                                .unwrap_or_default();
                                let _ = send_message(socket.as_fd(), &message, None);
                                children.insert(id, child);
                            } else {
                                let message =
                                    serde_json::to_vec(&FromHost::Exited { id, orphans: 0 })
                                        .unwrap_or_default();
                                let _ = send_message(socket.as_fd(), &message, None);
                            }
                        }
                        Ok(ToHost::Stop { id }) => {
                            // Our own child, not collected yet, so its pid is still its own.
                            if let Some(child) = children.get(&id) {
                                let _ = kill_process(child.pid, Signal::TERM);
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

/// Kills every child of the host that is not one of its supervisors: what a supervisor that
/// died left behind, handed to the host as the nearest child subreaper. Collects those that
/// have ended, notes in `killed` those it signalled, and returns how many it found, ended or
/// not. A child that is not collected keeps its pid, so no other process can be hit.
///
/// Only a scan that finds no such child at all says that nothing is left: a child found ended
/// may have handed its own children to the host after the list was read (a process's children
/// move to the subreaper just before it becomes a zombie), so it calls for another scan. As long
/// as the host has not collected a child, the child's descendants are either still below it or
/// already the host's, so nothing can slip past a scan that finds no child.
fn end_orphans(supervisors: &HashMap<u64, Supervised>, killed: &mut HashSet<i32>) -> usize {
    let own = getpid().as_raw_nonzero().get();
    let ours: HashSet<i32> = supervisors
        .values()
        .map(|child| child.pid.as_raw_nonzero().get())
        .collect();
    let children = children_of(own).unwrap_or_else(|| {
        all_processes()
            .into_iter()
            .filter(|process| process.parent == own)
            .map(|process| process.pid)
            .collect()
    });
    let mut left = 0;
    for child in children {
        if ours.contains(&child) {
            continue;
        }
        let Some(pid) = Pid::from_raw(child) else {
            continue;
        };
        match ProcessStat::read(child) {
            Some(stat) if stat.is_alive() => {
                let _ = kill_process(pid, Signal::KILL);
                killed.insert(child);
            }
            Some(_) => {
                let _ = waitpid(Some(pid), WaitOptions::NOHANG);
            }
            // Listed but not readable: counted all the same, and looked at again.
            None => {}
        }
        left += 1;
    }
    left
}

/// Forks a supervisor for one attempt. Returns it, or `None` if it could not be forked.
fn fork_supervisor(
    socket: &OwnedFd,
    children: &HashMap<u64, Supervised>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    lock: Option<OwnedFd>,
) -> Option<Supervised> {
    let lock = lock?;
    let mut args = SupervisorArgs::parse(&args).ok()?;
    args.lock_fd = Some(lock.as_raw_fd());
    // SAFETY: this process is single-threaded (it runs no thread besides its main one), so the
    // child, a copy of that one thread, holds no lock another thread held at the fork and may
    // run any code afterwards.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // The child: it must not hold Keel's socket (Keel watches for the host going away) nor
        // its siblings' pidfds.
        // SAFETY: these descriptors are the child's copies of ones the parent owns; the child
        // never uses the parent's `OwnedFd`s (it leaves through `_exit` below, running no
        // destructor), so closing its copies here cannot close anything twice.
        unsafe {
            rustix::io::close(socket.as_raw_fd());
            for pidfd in children.values().filter_map(|child| child.pidfd.as_ref()) {
                rustix::io::close(pidfd.as_raw_fd());
            }
        }
        let _ = setpgid(None, None);
        // A bound host's supervisors die with it (prctl is async-signal-safe).
        if crate::BOUND.load(std::sync::atomic::Ordering::Relaxed) {
            let _ = rustix::process::set_parent_process_death_signal(Some(
                rustix::process::Signal::KILL,
            ));
        }
        let code = supervisor::run(&args, &env);
        // SAFETY: _exit ends the process at once; it leaves without running the host's
        // destructors and exit handlers, which belong to the parent.
        unsafe { libc::_exit(code) };
    }
    drop(lock);
    let pid = Pid::from_raw(pid.max(0))?;
    // Without a pidfd the supervisor is still tracked, and checked on by polling.
    let pidfd = pidfd_open(pid, PidfdFlags::empty()).ok();
    Some(Supervised {
        pid,
        pidfd,
        dir: args.dir,
    })
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
    exited: tokio::sync::oneshot::Sender<u32>,
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
    /// Resolves when the supervisor has exited and nothing it left behind runs any more, with
    /// the number of such processes the host killed; fails if the host went away first.
    pub exited: tokio::sync::oneshot::Receiver<u32>,
}

impl HostClient {
    /// Starts `program prefix… __host` with one end of a socket pair.
    pub fn start(program: &PathBuf, prefix: &[String]) -> io::Result<HostClient> {
        let (ours, theirs) = socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )?;
        let mut command = std::process::Command::new(program);
        crate::process::without_keel_variables(&mut command);
        command
            .args(prefix)
            .args(["__host", "--socket-fd", &theirs.as_raw_fd().to_string()])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let inherited = theirs.as_raw_fd();
        // The host inherits its end of the socket, and no other child may: close-on-exec is
        // cleared only in the forked child, between fork and exec.
        // SAFETY: between fork and exec the closure makes one raw system call (fcntl), which is
        // async-signal-safe, on the socket's descriptor: `theirs` stays open in this process
        // until the spawn has returned, so the child's copy of it is open too.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
                fcntl_setfd(BorrowedFd::borrow_raw(inherited), FdFlags::empty())?;
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
                    receive_message(reader_socket.as_fd(), &mut buffer)
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
                        Ok(FromHost::Exited { id, orphans }) => {
                            // A launch still waiting for the pid learns that there is none.
                            if let Some(waiter) = waiters.remove(&id) {
                                let _ = waiter.exited.send(orphans);
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
        if let Err(error) = send_message(self.socket.as_fd(), &message, Some(lock.as_fd())) {
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
        send_message(self.socket.as_fd(), &message, None).is_ok()
    }
}
