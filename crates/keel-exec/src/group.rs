//! A task's process group, and the process table it is read from.
//!
//! Every task runs as the leader of its own process group. The supervisor records that group in
//! the attempt's record file as soon as the task has started, so that whoever later finds the
//! supervisor dead without an exit record (Keel on the spot, or a Keel started afterwards) can
//! end what is left of the task before it reports the attempt `lost`. Otherwise the next attempt
//! would start while the orphaned one still runs, with no timeout over it any more.

use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::process::{Pid, Signal, kill_process_group, test_kill_process_group};

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

/// The kernel's random identity of the current boot.
fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|text| text.trim().to_string())
        .filter(|text| !text.is_empty())
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
