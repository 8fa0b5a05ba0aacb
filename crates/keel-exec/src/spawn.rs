//! Starting a task's process from a thread of a busy, multi-threaded Keel, cheaply and bound to
//! that thread.
//!
//! `fork` copies the page tables of the whole process and makes every page it touches
//! afterwards copy-on-write, which in a worker with a runtime, pools and buffers costs several
//! times the task's own start. `posix_spawn` avoids that (the child borrows the parent's memory
//! until it runs the program, `CLONE_VM | CLONE_VFORK`), but it cannot set a parent-death signal,
//! and a worker's tasks must die with it. So this does what `posix_spawn` does, plus that one
//! call: the child runs on a stack of its own in the parent's memory, makes only raw system
//! calls on data prepared beforehand (no allocation, no lock, no panic), and either runs the
//! program or writes why it could not into the shared memory and exits.
//!
//! The parent-death signal follows the *thread* that started the task: the caller starts each
//! task from a thread that outlives it (one thread per attempt, which waits for the task's end).

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};

use libc::{c_char, c_int, c_void};

/// What to start.
pub(crate) struct TaskSpawn<'a> {
    pub command: &'a [String],
    /// The task's whole environment.
    pub env: Vec<(OsString, OsString)>,
    pub cwd: Option<&'a Path>,
}

/// A started task: the leader of a process group of its own, with its stdout and stderr.
pub(crate) struct SpawnedTask {
    pub pid: rustix::process::Pid,
    pub stdout: File,
    pub stderr: File,
}

/// The environment a task gets: Keel's own without its `KEEL_*` variables (or nothing, with
/// `clear`), then `env` over it, later entries winning.
pub(crate) fn task_environment(env: &[(String, String)], clear: bool) -> Vec<(OsString, OsString)> {
    let mut merged: Vec<(OsString, OsString)> = if clear {
        Vec::new()
    } else {
        std::env::vars_os()
            .filter(|(name, _)| !crate::process::is_keel_variable(name))
            .collect()
    };
    for (name, value) in env {
        let name = OsString::from(name);
        match merged.iter_mut().find(|(known, _)| *known == name) {
            Some(entry) => entry.1 = OsString::from(value),
            None => merged.push((name, OsString::from(value))),
        }
    }
    merged
}

/// Where programs were found, by `PATH` and name, for a `PATH` of absolute directories only: a
/// worker starts the same few programs again and again, and looking through `PATH` costs a
/// `stat` per directory. An entry is dropped when its program is not found there any more.
type FoundPrograms = std::collections::HashMap<(OsString, String), PathBuf>;

fn found_programs() -> std::sync::MutexGuard<'static, FoundPrograms> {
    static FOUND: std::sync::OnceLock<std::sync::Mutex<FoundPrograms>> = std::sync::OnceLock::new();
    FOUND
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The most programs remembered; past it nothing more is (a worker runs a pipeline's few).
const FOUND_PROGRAMS_CAP: usize = 1024;

/// Finds the program the way `execvp` would, in the task's own `PATH` (`/bin:/usr/bin` without
/// one); a name with a slash is used as it is. Relative directories count from `cwd`. Returns
/// whether the answer came from [`found_programs`].
fn find_program(
    program: &str,
    path: Option<&OsStr>,
    cwd: Option<&Path>,
) -> io::Result<(PathBuf, bool)> {
    let path = path.unwrap_or(OsStr::new("/bin:/usr/bin"));
    let cacheable = !program.contains('/')
        && path
            .as_bytes()
            .split(|byte| *byte == b':')
            .all(|directory| directory.first() == Some(&b'/'));
    if !cacheable {
        return resolve_program(program, Some(path), cwd).map(|found| (found, false));
    }
    let key = (path.to_os_string(), program.to_string());
    if let Some(found) = found_programs().get(&key) {
        return Ok((found.clone(), true));
    }
    let found = resolve_program(program, Some(path), cwd)?;
    let mut remembered = found_programs();
    if remembered.len() < FOUND_PROGRAMS_CAP {
        remembered.insert(key, found.clone());
    }
    Ok((found, false))
}

fn forget_program(program: &str, path: Option<&OsStr>) {
    let path = path.unwrap_or(OsStr::new("/bin:/usr/bin"));
    found_programs().remove(&(path.to_os_string(), program.to_string()));
}

fn resolve_program(program: &str, path: Option<&OsStr>, cwd: Option<&Path>) -> io::Result<PathBuf> {
    if program.contains('/') {
        return Ok(PathBuf::from(program));
    }
    if program.is_empty() {
        return Err(io::Error::from(io::ErrorKind::NotFound));
    }
    let path = path.unwrap_or(OsStr::new("/bin:/usr/bin"));
    for directory in path.as_bytes().split(|byte| *byte == b':') {
        let directory = Path::new(OsStr::from_bytes(directory));
        let candidate = if directory.as_os_str().is_empty() {
            PathBuf::from(program)
        } else {
            directory.join(program)
        };
        let on_disk = match (cwd, candidate.is_relative()) {
            (Some(cwd), true) => cwd.join(&candidate),
            _ => candidate.clone(),
        };
        if on_disk.is_file() {
            return Ok(candidate);
        }
    }
    Err(io::Error::from(io::ErrorKind::NotFound))
}

fn c_string(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "an argument or environment entry holds a NUL byte",
        )
    })
}

/// What the child reads, all made before the clone; `error` is what it writes back.
struct ChildContext {
    path: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
    cwd: *const c_char,
    stdin: RawFd,
    stdout: RawFd,
    stderr: RawFd,
    parent: libc::pid_t,
    /// The errno of the step that failed; 0 while none did.
    error: AtomicI32,
}

/// The child's stack: the child makes a few system calls and nothing else.
const CHILD_STACK: usize = 64 << 10;

/// `/dev/null`, opened once: every task's stdin.
fn dev_null() -> io::Result<&'static File> {
    static DEV_NULL: std::sync::OnceLock<File> = std::sync::OnceLock::new();
    if let Some(file) = DEV_NULL.get() {
        return Ok(file);
    }
    let file = File::open("/dev/null")?;
    Ok(DEV_NULL.get_or_init(|| file))
}

/// Starts `spawn` as the leader of a new process group, its stdin `/dev/null`, its stdout and
/// stderr pipes, killed by the kernel (SIGKILL) when the calling thread ends.
pub(crate) fn spawn_bound(spawn: &TaskSpawn<'_>) -> io::Result<SpawnedTask> {
    let Some(program) = spawn.command.first() else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "no command"));
    };
    let path_variable = spawn
        .env
        .iter()
        .rev()
        .find(|(name, _)| name == "PATH")
        .map(|(_, value)| value.as_os_str());
    let (resolved, remembered) = find_program(program, path_variable, spawn.cwd)?;
    match start(spawn, &resolved) {
        // The program moved since it was found: look for it again, once.
        Err(error) if remembered && error.kind() == io::ErrorKind::NotFound => {
            forget_program(program, path_variable);
            let (resolved, _) = find_program(program, path_variable, spawn.cwd)?;
            start(spawn, &resolved)
        }
        started => started,
    }
}

fn start(spawn: &TaskSpawn<'_>, resolved: &Path) -> io::Result<SpawnedTask> {
    let path = c_string(resolved.as_os_str().as_bytes())?;
    let arguments: Vec<CString> = spawn
        .command
        .iter()
        .map(|argument| c_string(argument.as_bytes()))
        .collect::<io::Result<_>>()?;
    let environment: Vec<CString> = spawn
        .env
        .iter()
        .map(|(name, value)| {
            let mut entry = name.clone().into_vec();
            entry.push(b'=');
            entry.extend_from_slice(value.as_bytes());
            c_string(&entry)
        })
        .collect::<io::Result<_>>()?;
    let cwd = spawn
        .cwd
        .map(|cwd| c_string(cwd.as_os_str().as_bytes()))
        .transpose()?;
    let mut argv: Vec<*const c_char> = arguments.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const c_char> = environment.iter().map(|e| e.as_ptr()).collect();
    envp.push(std::ptr::null());

    let stdin = dev_null()?;
    let (stdout_read, stdout_write) = pipe()?;
    let (stderr_read, stderr_write) = pipe()?;
    let context = ChildContext {
        path: path.as_ptr(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        cwd: cwd.as_ref().map_or(std::ptr::null(), |cwd| cwd.as_ptr()),
        stdin: stdin.as_raw_fd(),
        stdout: stdout_write.as_raw_fd(),
        stderr: stderr_write.as_raw_fd(),
        // SAFETY: getpid has no preconditions.
        parent: unsafe { libc::getpid() },
        error: AtomicI32::new(0),
    };
    let mut stack = vec![0u8; CHILD_STACK];
    // The stack grows down from its end, which must be 16-byte aligned.
    let top = (stack.as_mut_ptr() as usize + CHILD_STACK) & !15;

    // Every signal is blocked across the clone, so no handler of Keel's runs in the child
    // while it shares Keel's memory; the child sets the handlers back to the default and
    // unblocks everything before it runs the program.
    // SAFETY: plain signal-mask calls on sets living on this stack.
    let pid = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut previous: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut previous);
        // SAFETY: `child_main` only reads `context` and the C strings it points to, which
        // live until this function returns; with CLONE_VFORK this thread does not go on
        // until the child has run its program or exited, so none of them is freed or moved
        // under it. The stack is ours and unused by anything else.
        let pid = libc::clone(
            child_main,
            top as *mut c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            &context as *const ChildContext as *mut c_void,
        );
        let clone_error = io::Error::last_os_error();
        libc::pthread_sigmask(libc::SIG_SETMASK, &previous, std::ptr::null_mut());
        if pid < 0 {
            return Err(clone_error);
        }
        pid
    };
    drop(stack);
    drop((stdout_write, stderr_write));
    let error = context.error.load(Ordering::SeqCst);
    let pid = rustix::process::Pid::from_raw(pid)
        .ok_or_else(|| io::Error::other("the clone returned no pid"))?;
    if error != 0 {
        // The child exited without running the program; collect it.
        let _ = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty());
        return Err(io::Error::from_raw_os_error(error));
    }
    Ok(SpawnedTask {
        pid,
        stdout: File::from(stdout_read),
        stderr: File::from(stderr_read),
    })
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as c_int; 2];
    // SAFETY: pipe2 writes two descriptors into the array on success, which we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors are fresh and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The child, in the parent's memory on its own stack: raw system calls only.
extern "C" fn child_main(argument: *mut c_void) -> c_int {
    // SAFETY: the parent passed a pointer to a `ChildContext` that outlives this child's use
    // of it (see `spawn_bound`); every call below is a plain system call wrapper.
    unsafe {
        let context = &*(argument as *const ChildContext);
        let fail = |context: &ChildContext| -> c_int {
            let errno = *libc::__errno_location();
            context
                .error
                .store(if errno == 0 { libc::EIO } else { errno }, Ordering::SeqCst);
            libc::_exit(127)
        };
        // Handlers are Keel's code, which must never run here; ignored signals stay ignored
        // across exec except SIGPIPE, which a Rust program ignores for itself, not its
        // children.
        for signal in 1..65 {
            if signal == libc::SIGKILL || signal == libc::SIGSTOP {
                continue;
            }
            let mut current: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(signal, std::ptr::null(), &mut current) != 0 {
                continue;
            }
            if current.sa_sigaction != libc::SIG_DFL
                && (current.sa_sigaction != libc::SIG_IGN || signal == libc::SIGPIPE)
            {
                let mut default: libc::sigaction = std::mem::zeroed();
                default.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(signal, &default, std::ptr::null_mut());
            }
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        if libc::setpgid(0, 0) != 0 {
            return fail(context);
        }
        // The task dies with the thread that started it, which lives as long as the attempt's
        // watch; if that thread (or the whole process) is already gone, nothing is started.
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
            return fail(context);
        }
        if libc::getppid() != context.parent {
            *libc::__errno_location() = libc::ESRCH;
            return fail(context);
        }
        if !context.cwd.is_null() && libc::chdir(context.cwd) != 0 {
            return fail(context);
        }
        for (from, to) in [(context.stdin, 0), (context.stdout, 1), (context.stderr, 2)] {
            let done = if from == to {
                libc::fcntl(to, libc::F_SETFD, 0)
            } else {
                libc::dup2(from, to)
            };
            if done < 0 {
                return fail(context);
            }
        }
        libc::execve(context.path, context.argv, context.envp);
        fail(context)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn run(
        command: &[&str],
        env: &[(&str, &str)],
        cwd: Option<&Path>,
    ) -> io::Result<(i32, String)> {
        let command: Vec<String> = command.iter().map(|part| part.to_string()).collect();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        let spawned = spawn_bound(&TaskSpawn {
            command: &command,
            env: task_environment(&env, false),
            cwd,
        })?;
        let mut out = String::new();
        let mut stdout = spawned.stdout;
        stdout.read_to_string(&mut out)?;
        let status =
            rustix::process::waitpid(Some(spawned.pid), rustix::process::WaitOptions::empty())?
                .expect("a status")
                .1;
        Ok((status.exit_status().unwrap_or(-1), out))
    }

    #[test]
    fn runs_the_program_with_its_arguments_environment_directory_and_own_group() {
        let dir = tempfile::tempdir().unwrap();
        let (code, out) = run(
            &[
                "sh",
                "-c",
                "echo \"$1 $GREETING $(pwd) $(ps -o pgid= -p $$ | tr -d ' ') $$\"; exit 3",
                "sh",
                "one",
            ],
            &[("GREETING", "hello")],
            Some(dir.path()),
        )
        .unwrap();
        assert_eq!(code, 3);
        let words: Vec<&str> = out.split_whitespace().collect();
        assert_eq!(words[0], "one");
        assert_eq!(words[1], "hello");
        assert_eq!(
            Path::new(words[2]).canonicalize().unwrap(),
            dir.path().canonicalize().unwrap()
        );
        assert_eq!(
            words[3], words[4],
            "the task leads a process group of its own"
        );
    }

    #[test]
    fn keel_variables_stay_out_unless_the_launch_sets_them() {
        // SAFETY: this test's variable is read only by the children spawned below.
        unsafe { std::env::set_var("KEEL_SPAWN_TEST_SECRET", "hidden") };
        let (_, out) = run(
            &["sh", "-c", "echo \"[$KEEL_SPAWN_TEST_SECRET][$KEEL_OWN]\""],
            &[("KEEL_OWN", "mine")],
            None,
        )
        .unwrap();
        assert_eq!(out.trim(), "[][mine]");
    }

    #[test]
    fn a_missing_program_a_directory_and_a_missing_cwd_are_errors_of_their_kind() {
        let missing = run(&["keel-no-such-program-anywhere"], &[], None).unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("script");
        std::fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
        let denied = run(&[script.to_str().unwrap()], &[], None).unwrap_err();
        assert_eq!(denied.kind(), io::ErrorKind::PermissionDenied);
        let no_cwd = run(&["true"], &[], Some(&dir.path().join("gone"))).unwrap_err();
        assert_eq!(no_cwd.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn a_program_found_once_is_looked_for_again_when_it_moved() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (first, second) = (dir.path().join("first"), dir.path().join("second"));
        for (place, word) in [(&first, "first"), (&second, "second")] {
            std::fs::create_dir(place).unwrap();
            let program = place.join("keel-spawn-test-program");
            std::fs::write(&program, format!("#!/bin/sh\necho {word}\n")).unwrap();
            std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let path = format!("{}:{}:/bin:/usr/bin", first.display(), second.display());
        let env = [("PATH", path.as_str())];
        let (_, out) = run(&["keel-spawn-test-program"], &env, None).unwrap();
        assert_eq!(out.trim(), "first");
        std::fs::remove_file(first.join("keel-spawn-test-program")).unwrap();
        let (_, out) = run(&["keel-spawn-test-program"], &env, None).unwrap();
        assert_eq!(out.trim(), "second");
        std::fs::remove_file(second.join("keel-spawn-test-program")).unwrap();
        let gone = run(&["keel-spawn-test-program"], &env, None).unwrap_err();
        assert_eq!(gone.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn sigpipe_is_the_default_again_in_the_task() {
        // A Rust program ignores SIGPIPE; the task must not inherit that.
        let (_, out) = run(&["sh", "-c", "grep SigIgn /proc/$$/status"], &[], None).unwrap();
        let mask = u64::from_str_radix(out.split_whitespace().nth(1).unwrap(), 16).unwrap();
        assert_eq!(mask & (1 << (libc::SIGPIPE - 1)), 0, "{out}");
    }

    #[test]
    fn the_task_dies_with_the_thread_that_started_it() {
        let (sender, receiver) = std::sync::mpsc::channel();
        let starter = std::thread::spawn(move || {
            let command = vec!["sleep".to_string(), "30".to_string()];
            let spawned = spawn_bound(&TaskSpawn {
                command: &command,
                env: task_environment(&[], false),
                cwd: None,
            })
            .unwrap();
            sender.send(spawned.pid).unwrap();
        });
        let pid = receiver.recv().unwrap();
        starter.join().unwrap();
        let status = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty())
            .unwrap()
            .unwrap()
            .1;
        assert_eq!(status.terminating_signal(), Some(libc::SIGKILL));
    }
}
