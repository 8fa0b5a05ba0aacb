//! The processors' chaos knobs, from `HOOPS_CHAOS`: faults a task plays on itself, for
//! `keel chaos`. A comma-separated list of `key=TASK@DATE` items, e.g.
//! `crash=load_props@2026-11-03,hang=team_defense@2026-11-05,regress=grading@2026-11-20`.
//!
//! | item | meaning |
//! |---|---|
//! | `crash=TASK@DATE` | that task, for that date, exits 1 before doing anything, once |
//! | `hang=TASK@DATE` | that task, for that date, sleeps for an hour (past any timeout), once |
//! | `corrupt=TASK@DATE` | that task, for that date, does its work and then writes garbage to `KEEL_RESULT`, once |
//! | `regress=TASK@DATE` | that task, for that date, reports its `accuracy` metric at 30% of its value (about the 18.75% of the incident that asked for anomaly alerts), every time |
//!
//! "Once" is kept in `HOOPS_CHAOS_STATE`, a directory (required with the one-shot knobs): the
//! first attempt to fire a knob creates a mark file there, and later attempts find it and run
//! normally, so a retry heals what the knob broke. `none` or an empty list means no knobs.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::date::Date;

/// What a knob does to its task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Crash,
    Hang,
    Corrupt,
    Regress,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Crash => "crash",
            Kind::Hang => "hang",
            Kind::Corrupt => "corrupt",
            Kind::Regress => "regress",
        }
    }

    fn parse(text: &str) -> Option<Kind> {
        [Kind::Crash, Kind::Hang, Kind::Corrupt, Kind::Regress]
            .into_iter()
            .find(|kind| kind.as_str() == text)
    }

    /// Whether the knob fires only on its first attempt.
    fn once(self) -> bool {
        self != Kind::Regress
    }
}

/// One knob: what, to which task, on which date.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Knob {
    pub kind: Kind,
    pub task: String,
    pub date: Date,
}

/// The parsed `HOOPS_CHAOS` list.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Chaos {
    pub knobs: Vec<Knob>,
}

/// What accuracy a `regress` knob leaves: this share of the real one.
pub const REGRESSED_SHARE: f64 = 0.3;

impl Chaos {
    pub fn parse(spec: &str) -> Result<Chaos, String> {
        let mut chaos = Chaos::default();
        let spec = spec.trim();
        if spec.is_empty() || spec == "none" {
            return Ok(chaos);
        }
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let err = |what: &str| format!("chaos knob {item:?}: {what}");
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| err("expected KIND=TASK@YYYY-MM-DD"))?;
            let kind = Kind::parse(key.trim())
                .ok_or_else(|| err("unknown kind (crash, hang, corrupt, regress)"))?;
            let (task, date) = value
                .trim()
                .split_once('@')
                .ok_or_else(|| err("expected TASK@YYYY-MM-DD"))?;
            if task.is_empty() {
                return Err(err("the task is empty"));
            }
            let date = date.trim().parse().map_err(|e| err(&format!("{e}")))?;
            chaos.knobs.push(Knob {
                kind,
                task: task.trim().to_string(),
                date,
            });
        }
        Ok(chaos)
    }

    /// The knobs of `HOOPS_CHAOS` (none when it is unset).
    pub fn from_env() -> Result<Chaos, String> {
        match std::env::var("HOOPS_CHAOS") {
            Ok(spec) => Chaos::parse(&spec).map_err(|e| format!("HOOPS_CHAOS: {e}")),
            Err(_) => Ok(Chaos::default()),
        }
    }

    /// Whether a knob of `kind` applies to `task` on `date`, before any "once" is considered.
    pub fn has(&self, kind: Kind, task: &str, date: &str) -> bool {
        let Ok(date) = date.parse::<Date>() else {
            return false;
        };
        self.knobs
            .iter()
            .any(|knob| knob.kind == kind && knob.task == task && knob.date == date)
    }

    /// Whether the knob of `kind` fires now for `task` on `date`: it applies and, for a one-shot
    /// knob, this is the first time (its mark is created in `state`, atomically).
    pub fn fires(
        &self,
        kind: Kind,
        task: &str,
        date: &str,
        state: Option<&Path>,
    ) -> Result<bool, String> {
        if !self.has(kind, task, date) {
            return Ok(false);
        }
        if !kind.once() {
            return Ok(true);
        }
        let state = state.ok_or_else(|| {
            "HOOPS_CHAOS_STATE is not set; set it to a directory where one-shot knobs keep their marks"
                .to_string()
        })?;
        std::fs::create_dir_all(state)
            .map_err(|e| format!("cannot create HOOPS_CHAOS_STATE {}: {e}", state.display()))?;
        let mark = state.join(format!("{}-{task}-{date}", kind.as_str()));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&mark)
        {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(format!("cannot create {}: {e}", mark.display())),
        }
    }
}

/// `HOOPS_CHAOS_STATE`, when set.
pub fn state_dir() -> Option<PathBuf> {
    std::env::var_os("HOOPS_CHAOS_STATE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

impl fmt::Display for Chaos {
    /// The canonical list; parsing it gives back the same knobs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.knobs.is_empty() {
            return write!(f, "none");
        }
        let items: Vec<String> = self
            .knobs
            .iter()
            .map(|knob| format!("{}={}@{}", knob.kind.as_str(), knob.task, knob.date))
            .collect();
        write!(f, "{}", items.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_round_trips() {
        let chaos = Chaos::parse(
            "crash=load_props@2026-11-03, hang=team_defense@2026-11-05,corrupt=rest_days@2026-11-06,regress=grading@2026-11-20",
        )
        .unwrap();
        assert_eq!(chaos.knobs.len(), 4);
        assert!(chaos.has(Kind::Hang, "team_defense", "2026-11-05"));
        assert!(!chaos.has(Kind::Hang, "team_defense", "2026-11-06"));
        assert!(!chaos.has(Kind::Crash, "team_defense", "2026-11-05"));
        assert_eq!(Chaos::parse(&chaos.to_string()).unwrap(), chaos);
        assert_eq!(Chaos::parse("none").unwrap(), Chaos::default());
    }

    #[test]
    fn refuses_bad_lists() {
        for bad in [
            "crash",
            "explode=load_props@2026-11-03",
            "crash=load_props",
            "crash=@2026-11-03",
            "crash=load_props@2026-13-03",
        ] {
            assert!(Chaos::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_one_shot_knob_fires_once_and_regress_every_time() {
        let dir = tempfile::tempdir().unwrap();
        let chaos = Chaos::parse("crash=load_props@2026-11-03,regress=grading@2026-11-03").unwrap();
        let fire = |kind, task| chaos.fires(kind, task, "2026-11-03", Some(dir.path()));
        assert_eq!(fire(Kind::Crash, "load_props"), Ok(true));
        assert_eq!(fire(Kind::Crash, "load_props"), Ok(false));
        assert_eq!(fire(Kind::Regress, "grading"), Ok(true));
        assert_eq!(fire(Kind::Regress, "grading"), Ok(true));
        assert_eq!(fire(Kind::Crash, "grading"), Ok(false));
        assert!(
            chaos
                .fires(Kind::Crash, "load_props", "2026-11-03", None)
                .unwrap_err()
                .contains("HOOPS_CHAOS_STATE")
        );
    }
}
