//! Feature flags (`keel flags set TASK off|on|N%`): a task switched off, or on for a share of
//! partitions, without editing the pipeline file or restarting Keel.

use std::fmt;
use std::str::FromStr;

/// What a flag says about a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagState {
    /// The task runs (the default: setting `on` removes the flag).
    On,
    /// The task is `skipped` in every partition.
    Off,
    /// The task runs in this share of partitions (1–99), chosen by a hash of the pipeline, the
    /// task and the partition: the same partitions every time, and more of them as the share
    /// grows (a partition in at 10% is in at 20%).
    Percent(u8),
}

impl FlagState {
    /// Whether the task runs in `partition`.
    pub fn runs_in(&self, pipeline: &str, task: &str, partition: &str) -> bool {
        match self {
            FlagState::On => true,
            FlagState::Off => false,
            FlagState::Percent(share) => bucket(pipeline, task, partition) < u64::from(*share),
        }
    }
}

/// A stable number in 0..100 for (pipeline, task, partition): FNV-1a, so it never changes
/// between Keel versions or machines.
fn bucket(pipeline: &str, task: &str, partition: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in pipeline
        .bytes()
        .chain([0])
        .chain(task.bytes())
        .chain([0])
        .chain(partition.bytes())
    {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Fold the high bits in: FNV's low bits alone vary little with the last bytes.
    (hash ^ (hash >> 32)) % 100
}

impl fmt::Display for FlagState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlagState::On => f.write_str("on"),
            FlagState::Off => f.write_str("off"),
            FlagState::Percent(share) => write!(f, "{share}%"),
        }
    }
}

impl FromStr for FlagState {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let problem = || {
            format!("{text:?} is not a flag; write on, off, or a share of partitions such as 10%")
        };
        match text.trim() {
            "on" => Ok(FlagState::On),
            "off" => Ok(FlagState::Off),
            other => {
                let share: u8 = other
                    .strip_suffix('%')
                    .and_then(|number| number.trim().parse().ok())
                    .ok_or_else(problem)?;
                match share {
                    0 => Ok(FlagState::Off),
                    100 => Ok(FlagState::On),
                    1..=99 => Ok(FlagState::Percent(share)),
                    _ => Err(format!(
                        "{text:?} is more than 100%; write on, off, or a share from 1% to 99%"
                    )),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_every_form() {
        for (text, state) in [
            ("on", FlagState::On),
            ("off", FlagState::Off),
            ("25%", FlagState::Percent(25)),
            ("0%", FlagState::Off),
            ("100%", FlagState::On),
        ] {
            assert_eq!(text.parse::<FlagState>(), Ok(state), "{text}");
        }
        assert_eq!(FlagState::Percent(25).to_string(), "25%");
        for bad in ["", "halfway", "150%", "-3%", "10"] {
            let problem = bad.parse::<FlagState>().unwrap_err();
            assert!(problem.contains("on, off"), "{bad}: {problem}");
        }
    }

    #[test]
    fn a_share_picks_about_that_many_partitions_and_keeps_them_as_it_grows() {
        let dates: Vec<String> = (0..1000).map(|day| format!("p{day}")).collect();
        let picked = |share| -> Vec<&String> {
            dates
                .iter()
                .filter(|date| FlagState::Percent(share).runs_in("hoops", "predictions", date))
                .collect()
        };
        let ten = picked(10);
        let twenty = picked(20);
        assert!((60..=140).contains(&ten.len()), "{}", ten.len());
        assert!((140..=260).contains(&twenty.len()), "{}", twenty.len());
        assert!(ten.iter().all(|date| twenty.contains(date)));
        assert!(!FlagState::Off.runs_in("hoops", "predictions", "p1"));
        assert!(FlagState::On.runs_in("hoops", "predictions", "p1"));
    }
}
