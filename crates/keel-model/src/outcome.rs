use std::fmt;
use std::str::FromStr;

/// A name read back from the store or the command line that is not one of the known values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {value:?}")]
pub struct UnknownName {
    pub kind: &'static str,
    pub value: String,
}

macro_rules! named_enum {
    ($(#[$meta:meta])* $name:ident, $kind:literal { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stable lowercase name used in the store, the CLI and JSON.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownName;
            fn from_str(text: &str) -> Result<Self, Self::Err> {
                match text {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownName { kind: $kind, value: text.to_string() }),
                }
            }
        }
    };
}

named_enum!(
    /// How one attempt of a task ended (docs/tasks.md), or why a task never got an attempt.
    Outcome, "outcome" {
        Succeeded => "succeeded",
        NoData => "no_data",
        NotReady => "not_ready",
        Failed => "failed",
        FailedPermanent => "failed_permanent",
        TimedOut => "timed_out",
        Stalled => "stalled",
        Lost => "lost",
        Cancelled => "cancelled",
        Skipped => "skipped",
        UpstreamFailed => "upstream_failed",
        FailedCheck => "failed_check",
    }
);

impl Outcome {
    /// Whether a task that ended this way counts as done for gates and downstream tasks.
    pub fn is_complete(self) -> bool {
        matches!(
            self,
            Outcome::Succeeded | Outcome::NoData | Outcome::Skipped
        )
    }

    /// Whether another attempt may be scheduled under the retry policy. Permanent failures,
    /// cancellations and the outcomes that are not attempts at all are never retried. An
    /// attempt whose `block` check failed (`failed_check`) is retried like a failure.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Outcome::Failed
                | Outcome::TimedOut
                | Outcome::Stalled
                | Outcome::Lost
                | Outcome::FailedCheck
        )
    }

    /// Whether a retry after this outcome uses up one of the policy's attempts. A lost attempt
    /// was Keel's failure, not the task's, so it is retried without being charged.
    pub fn uses_retry_attempt(self) -> bool {
        !matches!(self, Outcome::Lost | Outcome::NotReady)
    }
}

named_enum!(
    /// The state of a run .
    RunState, "run state" {
        Queued => "queued",
        Running => "running",
        Succeeded => "succeeded",
        Degraded => "degraded",
        Failed => "failed",
        Cancelled => "cancelled",
        Partial => "partial",
    }
);

impl RunState {
    /// Whether the run has ended and will do no more work unless rerun. A `partial` run (one
    /// `keel run --only` left tasks out of) has ended too: only a plain `keel run` of its
    /// partition takes it up again, to run what was left out.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            RunState::Succeeded
                | RunState::Degraded
                | RunState::Failed
                | RunState::Cancelled
                | RunState::Partial
        )
    }

    /// The `keel run` exit code for a run that ended in this state (docs/cli.md).
    pub fn exit_code(self) -> i32 {
        match self {
            RunState::Succeeded | RunState::Partial => 0,
            RunState::Degraded => 3,
            _ => 1,
        }
    }
}

named_enum!(
    /// Where one task of one run stands. `Done` carries its outcome separately.
    TaskState, "task state" {
        Pending => "pending",
        Waiting => "waiting",
        Running => "running",
        Done => "done",
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for outcome in Outcome::ALL {
            assert_eq!(outcome.as_str().parse::<Outcome>().unwrap(), *outcome);
        }
        for state in RunState::ALL {
            assert_eq!(state.as_str().parse::<RunState>().unwrap(), *state);
        }
        assert!("exploded".parse::<Outcome>().is_err());
    }
}

named_enum!(
    /// What an entry of the event log records. The event log is append-only and every state
    /// transition writes one entry, in the same transaction as the transition.
    EventKind, "event kind" {
        RunCreated => "run_created",
        RunState => "run_state",
        TaskAdded => "task_added",
        TaskChanged => "task_changed",
        AttemptClaimed => "attempt_claimed",
        AttemptFinished => "attempt_finished",
        TaskDone => "task_done",
        RetryScheduled => "retry_scheduled",
        TaskInterrupted => "task_interrupted",
        LeaseTakenOver => "lease_taken_over",
        RerunOwed => "rerun_owed",
        SensorPolled => "sensor_polled",
        CancelRequested => "cancel_requested",
        Cancelling => "cancelling",
        Breaker => "breaker",
        GateSufficient => "gate_sufficient",
        GateOpened => "gate_opened",
        GateFailed => "gate_failed",
        PipelineChanged => "pipeline_changed",
        Accepted => "accepted",
        Pruned => "pruned",
        Expanded => "expanded",
        GapUnrepaired => "gap_unrepaired",
        RolloutCanary => "rollout_canary",
        RolloutPromoted => "rollout_promoted",
        RolloutRolledBack => "rollout_rolled_back",
        CheckFailed => "check_failed",
        HealRequested => "heal_requested",
        HealExhausted => "heal_exhausted",
    }
);

impl PartialEq<&str> for EventKind {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}
