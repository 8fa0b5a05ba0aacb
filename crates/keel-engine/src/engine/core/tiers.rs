//! Tiered gates: a gate whose requirement relaxes with time since the run was created. The
//! tier in force is the last whose `after` has passed; before the first, the gate waits for
//! every task. It opens as soon as the tier in force is met (no grace), saying which tier in its
//! stored event, and fails only once every task has finished and not even its last tier can be
//! met. Timers at each tier's start (set when the run is loaded) judge it again as tiers relax.

use super::*;
use crate::gate::GateDef;

impl Core {
    pub(crate) fn evaluate_tiered_gate(
        &mut self,
        book: &mut Book,
        run_index: usize,
        gate: usize,
    ) -> Result<(), EngineError> {
        let now = book.now;
        let active = &book.runs[run_index];
        let definition = &self.topologies[active.topology].gates[gate];
        let elapsed = now - active.record.created_at;
        let complete = |task: TaskIndex| is_complete(&active.slots[task]);
        let done = |task: TaskIndex| active.slots[task].state == TaskState::Done;
        let every_task = GateDef {
            required: definition.tasks.clone(),
            min_share: 1.0,
            tiers: Vec::new(),
            ..definition.clone()
        };
        if judge(&every_task, complete, done) == (Verdict::Sufficient { all_done: true }) {
            return self.open_gate(book, run_index, gate);
        }
        let in_force = definition
            .tiers
            .iter()
            .enumerate()
            .rev()
            .find(|(_, tier)| tier.after <= elapsed);
        if let Some((position, tier)) = in_force
            && matches!(
                judge(&definition.at_tier(tier), complete, done),
                Verdict::Sufficient { .. }
            )
        {
            let why = format!(
                "tier {} of {}: after {}, min {}%{}",
                position + 1,
                definition.tiers.len(),
                keel_model::format_duration(std::time::Duration::from_millis(tier.after as u64)),
                (tier.min_share * 100.0).round(),
                if tier.required.is_empty() {
                    String::new()
                } else {
                    let names: Vec<&str> =
                        tier.required.iter().map(|task| self.name(*task)).collect();
                    format!(", required {}", names.join(", "))
                }
            );
            return self.open_gate_saying(book, run_index, gate, Some(why));
        }
        let all_done = definition.tasks.iter().all(|task| done(*task));
        let later_can_open = definition
            .tiers
            .iter()
            .filter(|tier| tier.after > elapsed)
            .any(|tier| {
                matches!(
                    judge(&definition.at_tier(tier), complete, done),
                    Verdict::Sufficient { .. }
                )
            });
        if !all_done || later_can_open {
            // Undecided: judged again when a task of the phase ends or the next tier starts.
            if let Some(next) = definition.tiers.iter().find(|tier| tier.after > elapsed) {
                let at = active.record.created_at + next.after;
                book.timers.push(Reverse((at, run_index, Wake::Gate(gate))));
            }
            return Ok(());
        }
        // Every task has finished and no tier, now or later, is met: the gate fails.
        let phase = definition.phase.clone();
        let failed: Vec<TaskIndex> = definition
            .tasks
            .iter()
            .copied()
            .filter(|task| !complete(*task))
            .collect();
        let active = &mut book.runs[run_index];
        active.gates[gate] = GateStatus::Failed;
        let record = self.gate_record(active, gate);
        let event = Change::Event {
            task: None,
            kind: keel_model::EventKind::GateFailed,
            detail: format!("phase {phase}: no tier of the gate can be met"),
        };
        write_changes(
            &mut book.writes,
            active.record.id,
            [Change::Gate(record), event],
        );
        for task in failed {
            book.followups
                .push_back(Followup::Propagate { run_index, task });
        }
        Ok(())
    }
}
