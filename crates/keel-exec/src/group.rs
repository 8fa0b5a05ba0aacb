//! A task's process group, and the process table it is read from.
//!
//! Every task runs as the leader of its own process group. The supervisor records that group in
//! the attempt's record file as soon as the task has started, so that whoever later finds the
//! supervisor dead without an exit record (Keel on the spot, or a Keel started afterwards) can
//! end what is left of the task before it reports the attempt `lost`. Otherwise the next attempt
//! would start while the orphaned one still runs, with no timeout over it any more.
//!
//! A descendant that leaves the group (a daemon that calls `setsid`) escapes a group kill, so
//! the supervisor also records every such process it sees, by pid and start time
//! ([`EscapedProcess`]), and [`end_process_trees`] ends those with everything descending from
//! them.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::process::{Pid, Signal, kill_process, kill_process_group, test_kill_process_group};

/// The fields of `/proc/<pid>/stat` that Keel needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcessStat {
    pub pid: i32,
    /// The one-letter state: `R`, `S`, `D`, `T`, `Z` (a zombie), `X` (dead) and so on.
    pub state: u8,
    pub parent: i32,
    pub group: i32,
    pub session: i32,
    /// When the process started, in clock ticks since boot.
    pub started: u64,
}

impl ProcessStat {
    pub fn read(pid: i32) -> Option<ProcessStat> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        parse_stat(pid, &text)
    }

    /// Whether the process can still run code of its own. A zombie has ended and only waits for
    /// its parent to collect its exit status; some containers run a first process that never
    /// does, so zombies can stay in the table for good.
    pub fn is_alive(&self) -> bool {
        !matches!(self.state, b'Z' | b'X' | b'x')
    }
}

/// Parses one `/proc/<pid>/stat` line. The command name in parentheses may hold spaces and
/// parentheses itself, so the fields are counted from the last `)`.
fn parse_stat(pid: i32, text: &str) -> Option<ProcessStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state (field 3), ppid (4), pgrp (5), session (6), … starttime (22).
    Some(ProcessStat {
        pid,
        state: *fields.first()?.as_bytes().first()?,
        parent: fields.get(1)?.parse().ok()?,
        group: fields.get(2)?.parse().ok()?,
        session: fields.get(3)?.parse().ok()?,
        started: fields.get(19)?.parse().ok()?,
    })
}

/// The children of `pid`, from the kernel's list of each of its threads' children (a child
/// forked by another thread than the main one is listed under that thread). Empty when `pid`
/// is gone; `None` when the kernel keeps no such lists.
pub(crate) fn children_of(pid: i32) -> Option<Vec<i32>> {
    let Ok(threads) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Some(Vec::new());
    };
    let mut children = Vec::new();
    for thread in threads.flatten() {
        match std::fs::read_to_string(thread.path().join("children")) {
            Ok(text) => children.extend(
                text.split_whitespace()
                    .filter_map(|pid| pid.parse::<i32>().ok()),
            ),
            Err(error)
                if error.kind() == std::io::ErrorKind::NotFound && !thread.path().exists() => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return None,
            Err(_) => {}
        }
    }
    Some(children)
}

/// Every process descending from `root` (not `root` itself), as it is now. Walks the kernel's
/// children lists, which costs a few reads per descendant; where the kernel keeps none, the
/// whole process table is read instead.
pub(crate) fn descendants_of(root: i32) -> Vec<ProcessStat> {
    let mut found = Vec::new();
    let mut seen = HashSet::from([root]);
    let mut pending = vec![root];
    while let Some(pid) = pending.pop() {
        let Some(children) = children_of(pid) else {
            return descendants_in(&all_processes(), &[root]);
        };
        for child in children {
            if seen.insert(child)
                && let Some(stat) = ProcessStat::read(child)
            {
                pending.push(child);
                found.push(stat);
            }
        }
    }
    found
}

/// The processes of `table` that descend from one of `roots` (not the roots themselves), through
/// the parent each one names.
fn descendants_in(table: &[ProcessStat], roots: &[i32]) -> Vec<ProcessStat> {
    let mut children: HashMap<i32, Vec<&ProcessStat>> = HashMap::new();
    for process in table {
        children.entry(process.parent).or_default().push(process);
    }
    let mut found = Vec::new();
    let mut seen: HashSet<i32> = roots.iter().copied().collect();
    let mut pending: Vec<i32> = roots.to_vec();
    while let Some(pid) = pending.pop() {
        for child in children.get(&pid).into_iter().flatten() {
            if seen.insert(child.pid) {
                pending.push(child.pid);
                found.push(**child);
            }
        }
    }
    found
}

/// Every process in the table. Processes that end while it is read are skipped.
pub(crate) fn all_processes() -> Vec<ProcessStat> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(ProcessStat::read)
        .collect()
}

/// The kernel's random identity of the current boot, read once: it cannot change while this
/// process lives.
fn boot_id() -> Option<String> {
    static BOOT_ID: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    BOOT_ID
        .get_or_init(|| {
            std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .ok()
                .map(|text| text.trim().to_string())
                .filter(|text| !text.is_empty())
        })
        .clone()
}

/// A task's process group as the supervisor recorded it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TaskGroup {
    /// The process group id, which is the task's own pid: the task leads its group.
    pub id: i32,
    /// The leader's start time in clock ticks since boot. A group id is only taken again once
    /// every process of the group has gone, and then by a new leader with that pid; a leader
    /// with another start time therefore means the group was ended and its id reused.
    #[serde(default)]
    pub started: Option<u64>,
    /// The leader's session: every member of the group is in it, since a process can only join
    /// a group of its own session and leaves the group when it starts a session of its own.
    #[serde(default)]
    pub session: Option<i32>,
    /// The boot the group ran in; after a reboot nothing of it can be running.
    #[serde(default)]
    pub boot: Option<String>,
}

/// How [`TaskGroup::end`] left a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupEnd {
    /// Nothing of it was running any more.
    AlreadyGone,
    /// Processes of it were running; they were killed and have exited.
    Killed,
    /// Processes of it were killed but had not finished exiting when patience ran out. A process
    /// killed with SIGKILL never runs code of its own again; what remains is the kernel
    /// finishing a system call it was in, such as a write to a slow disk.
    StillExiting { processes: usize },
}

/// A descendant of the task that its supervisor saw outside the task's process group, such as a
/// daemon that called `setsid`. A group kill misses it, so it is on record by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EscapedProcess {
    pub pid: i32,
    /// Its start time in clock ticks since boot: once the process has gone, a process that
    /// takes its pid again has another start time, so it is never mistaken for this one.
    pub started: u64,
}

impl EscapedProcess {
    /// Whether this very process still exists and can run.
    pub(crate) fn is_alive(&self) -> bool {
        ProcessStat::read(self.pid)
            .is_some_and(|stat| stat.started == self.started && stat.is_alive())
    }
}

/// How [`end_process_trees`] left the processes it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TreesEnd {
    /// Processes that were running and have been killed.
    pub killed: usize,
    /// Processes killed that had not finished exiting when patience ran out.
    pub still_exiting: usize,
}

/// Kills `roots` (pid and start time; those gone or taken by another process are skipped) and
/// every process descending from them, and waits, for at most `patience`, until none of them
/// runs any more.
///
/// They are stopped with SIGSTOP first, round after round, until a round finds no new
/// descendant: a stopped process cannot fork, so the set is then complete. Killing them at once
/// instead would hand the children of each to the system's first process as it dies, where
/// nothing would tie them to the task any more.
pub(crate) fn end_process_trees(
    roots: &[EscapedProcess],
    boot: Option<&str>,
    patience: Duration,
) -> TreesEnd {
    if let (Some(recorded), Some(current)) = (boot, boot_id())
        && recorded != current
    {
        return TreesEnd::default();
    }
    // Each target by pid, with its start time: a target is stopped, so alive, so its pid is
    // its own for as long as it is in the set.
    let mut targets: HashMap<i32, u64> = HashMap::new();
    for _round in 0..100 {
        let table = all_processes();
        let mut found: Vec<(i32, u64)> = table
            .iter()
            .filter(|process| process.is_alive())
            .filter(|process| {
                roots
                    .iter()
                    .any(|root| root.pid == process.pid && root.started == process.started)
            })
            .map(|process| (process.pid, process.started))
            .collect();
        let known: Vec<i32> = found
            .iter()
            .map(|(pid, _)| *pid)
            .chain(targets.keys().copied())
            .collect();
        found.extend(
            descendants_in(&table, &known)
                .into_iter()
                .filter(|process| process.is_alive())
                .map(|process| (process.pid, process.started)),
        );
        let mut added = false;
        for (pid, started) in found {
            if targets.insert(pid, started).is_none() {
                added = true;
                if let Some(pid) = Pid::from_raw(pid) {
                    let _ = kill_process(pid, Signal::STOP);
                }
            }
        }
        if !added {
            break;
        }
    }
    let living = |targets: &HashMap<i32, u64>| -> Vec<i32> {
        targets
            .iter()
            .filter(|(pid, started)| {
                ProcessStat::read(**pid)
                    .is_some_and(|stat| stat.started == **started && stat.is_alive())
            })
            .map(|(pid, _)| *pid)
            .collect()
    };
    let killed = living(&targets).len();
    let deadline = Instant::now() + patience;
    let mut pause = Duration::from_millis(2);
    loop {
        let left = living(&targets);
        if left.is_empty() {
            return TreesEnd {
                killed,
                still_exiting: 0,
            };
        }
        if Instant::now() >= deadline {
            return TreesEnd {
                killed,
                still_exiting: left.len(),
            };
        }
        for pid in left.into_iter().filter_map(Pid::from_raw) {
            let _ = kill_process(pid, Signal::KILL);
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

impl TaskGroup {
    /// Describes the group that the just-started process `leader` leads.
    pub fn of_leader(leader: i32) -> TaskGroup {
        let stat = ProcessStat::read(leader);
        TaskGroup {
            id: leader,
            started: stat.map(|stat| stat.started),
            session: stat.map(|stat| stat.session),
            boot: boot_id(),
        }
    }

    /// The group id as a pid, unless it is not a valid one.
    fn pid(&self) -> Option<Pid> {
        if self.id > 0 {
            Pid::from_raw(self.id)
        } else {
            None
        }
    }

    /// The group's members that can still run, as processes to end with [`end_process_trees`]
    /// (which also reaches what they started outside the group).
    pub(crate) fn living_processes(&self) -> Vec<EscapedProcess> {
        self.living_members()
            .unwrap_or_default()
            .into_iter()
            .filter_map(ProcessStat::read)
            .map(|stat| EscapedProcess {
                pid: stat.pid,
                started: stat.started,
            })
            .collect()
    }

    /// The pids of the group's members that can still run, or `None` when the group id now
    /// belongs to some other group.
    fn living_members(&self) -> Option<Vec<i32>> {
        if let (Some(recorded), Some(current)) = (&self.boot, boot_id())
            && *recorded != current
        {
            return Some(Vec::new());
        }
        // A record the task tampered with may name no group at all; 0 would mean Keel's own.
        let Some(id) = self.pid() else {
            return Some(Vec::new());
        };
        if test_kill_process_group(id) == Err(Errno::SRCH) {
            return Some(Vec::new());
        }
        let members: Vec<ProcessStat> = all_processes()
            .into_iter()
            .filter(|process| process.group == self.id)
            .collect();
        let reused = members.iter().any(|process| {
            (process.pid == self.id
                && self
                    .started
                    .is_some_and(|started| started != process.started))
                || self
                    .session
                    .is_some_and(|session| session != process.session)
        });
        if reused {
            return None;
        }
        Some(
            members
                .iter()
                .filter(|process| process.is_alive())
                .map(|process| process.pid)
                .collect(),
        )
    }

    /// Sends SIGKILL to the group if any of its members can still run, and returns those
    /// members' pids, without waiting for them: empty once nothing of the group runs, or when
    /// its id now belongs to another group. For a caller that cannot block, such as the attempt
    /// host, which asks again on every round until this comes back empty.
    pub(crate) fn kill_living_members(&self) -> Vec<i32> {
        let members = self.living_members().unwrap_or_default();
        if !members.is_empty()
            && let Some(id) = self.pid()
        {
            let _ = kill_process_group(id, Signal::KILL);
        }
        members
    }

    /// Kills whatever still runs in the group with SIGKILL and waits, for at most `patience`,
    /// until none of it runs any more. A group whose id has been taken by another group is left
    /// alone: the task's own group is then long gone.
    pub fn end(&self, patience: Duration) -> GroupEnd {
        let Some(members) = self.living_members() else {
            return GroupEnd::AlreadyGone;
        };
        if members.is_empty() {
            return GroupEnd::AlreadyGone;
        }
        let deadline = Instant::now() + patience;
        let mut pause = Duration::from_millis(2);
        loop {
            // Sent again on every round: a member may have forked before the first signal
            // landed.
            if let Some(id) = self.pid() {
                let _ = kill_process_group(id, Signal::KILL);
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(50));
            let living = self.living_members().unwrap_or_default();
            if living.is_empty() {
                return GroupEnd::Killed;
            }
            if Instant::now() >= deadline {
                return GroupEnd::StillExiting {
                    processes: living.len(),
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_is_parsed_even_with_spaces_and_parentheses_in_the_name() {
        let line = "4242 (my (odd) task) S 4200 4242 4100 0 -1 4194560 97 0 0 0 0 0 0 0 20 0 1 0 123456 2445312 201 18446744073709551615";
        let stat = parse_stat(4242, line).unwrap();
        assert_eq!(stat.state, b'S');
        assert_eq!(stat.parent, 4200);
        assert_eq!(stat.group, 4242);
        assert_eq!(stat.session, 4100);
        assert_eq!(stat.started, 123456);
        assert!(stat.is_alive());
        let zombie = parse_stat(1, &line.replace(") S ", ") Z ")).unwrap();
        assert!(!zombie.is_alive());
        assert!(parse_stat(1, "garbage").is_none());
    }

    #[test]
    fn this_process_is_in_the_table() {
        let own = std::process::id() as i32;
        let stat = ProcessStat::read(own).expect("this process has a stat file");
        assert!(stat.is_alive());
        assert!(all_processes().iter().any(|process| process.pid == own));
    }
}
