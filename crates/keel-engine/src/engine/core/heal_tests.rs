//! Remediation from downstream on the core alone: no runtime, no database, time set by hand.

use std::sync::Mutex;

use keel_model::Severity;

use super::super::tests::{
    accuracy_at_least, chain_core_with, finishes, loaded, reported, start, with_checks,
};
use super::*;

/// The chain `a → b → c` where `c`'s accuracy check heals `a`, with one attempt each and a
/// budget of `budget` heals; everything the core tells is kept.
fn healing_core(budget: u32) -> (Core, Arc<Mutex<Vec<Progress>>>) {
    let mut core = chain_core_with(|tasks, _| {
        for task in tasks.iter_mut() {
            task.retries.attempts = 1;
        }
    });
    let mut check = accuracy_at_least(0.3, Severity::Block);
    check.heal = vec!["a".into()];
    with_checks(&mut core, 2, vec![check]);
    let mut spec = (*core.spec).clone();
    spec.heal_budget = budget;
    core.spec = Arc::new(spec);
    let told = Arc::new(Mutex::new(Vec::new()));
    let sink = told.clone();
    core.observer = Box::new(move |progress| sink.lock().unwrap().push(progress));
    (core, told)
}

/// Runs what is ready, one attempt at a time, ending each as `end` says for its task.
fn run_through(
    core: &mut Core,
    book: &mut Book,
    ids: &mut i64,
    mut end: impl FnMut(&str) -> Report,
) -> Vec<String> {
    let mut ran = Vec::new();
    loop {
        let started = start(core, book, ids);
        if started.is_empty() {
            return ran;
        }
        for (attempt, task) in started {
            let report = end(&task);
            core.on_reports(book, vec![(attempt, report)]).unwrap();
            ran.push(task);
        }
    }
}

fn events_of(book: &Book, wanted: EventKind) -> Vec<serde_json::Value> {
    book.writes
        .iter()
        .filter_map(|write| match write {
            Write::Run {
                change: Change::Event { kind, detail, .. },
                ..
            } if *kind == wanted => Some(serde_json::from_str(detail).unwrap()),
            _ => None,
        })
        .collect()
}

fn run_state(book: &Book) -> Option<RunState> {
    book.writes.iter().rev().find_map(|write| match write {
        Write::RunState { state, .. } => Some(*state),
        _ => None,
    })
}

#[test]
fn a_failed_check_heals_upstream_then_runs_again_and_the_run_succeeds() {
    let (mut core, told) = healing_core(2);
    let mut book = loaded(&mut core, 1_000);
    let mut ids = 0;
    // The first `c` reads what a bad `a` wrote; once `a` ran again, it passes.
    let mut c_runs = 0;
    let ran = run_through(&mut core, &mut book, &mut ids, |task| match task {
        "c" => {
            c_runs += 1;
            let accuracy = if c_runs == 1 { 0.19 } else { 0.45 };
            reported(Some(48), &format!(r#"{{"accuracy":{accuracy}}}"#))
        }
        _ => reported(Some(1), "{}"),
    });
    assert_eq!(ran, ["a", "b", "c", "a", "b", "c"]);
    let heals = events_of(&book, EventKind::HealRequested);
    assert_eq!(heals.len(), 1, "{heals:?}");
    assert_eq!(heals[0]["heal"], serde_json::json!(["a"]));
    // `b` read what `a` wrote, so it runs again between them.
    assert_eq!(heals[0]["rerun"], serde_json::json!(["a", "b"]));
    assert_eq!(heals[0]["used"], 1);
    assert_eq!(heals[0]["budget"], 2);
    assert_eq!(heals[0]["source"], "check");
    let decided = finishes(&book);
    // The healing attempt is not charged: the task waits for its upstream, pending.
    assert_eq!(decided[2].1, Outcome::FailedCheck);
    assert_eq!(decided[2].2, TaskNext::Resume);
    assert_eq!(decided[5].2, TaskNext::Done(Outcome::Succeeded));
    assert!(events_of(&book, EventKind::HealExhausted).is_empty());
    assert_eq!(run_state(&book), Some(RunState::Succeeded));
    let healed: Vec<(String, Vec<String>, u32)> = told
        .lock()
        .unwrap()
        .iter()
        .filter_map(|progress| match progress {
            Progress::HealRequested {
                task, heal, used, ..
            } => Some((task.clone(), heal.clone(), *used)),
            _ => None,
        })
        .collect();
    assert_eq!(healed, [("c".to_string(), vec!["a".to_string()], 1)]);
}

#[test]
fn a_permanently_bad_input_ends_after_the_budget_with_one_exhausted_event() {
    let (mut core, told) = healing_core(2);
    let mut book = loaded(&mut core, 1_000);
    let mut ids = 0;
    let ran = run_through(&mut core, &mut book, &mut ids, |task| match task {
        "c" => reported(Some(48), r#"{"accuracy":0.1}"#),
        _ => reported(Some(1), "{}"),
    });
    // Two heals, then the third `c` ends the task: no endless loop.
    assert_eq!(ran, ["a", "b", "c", "a", "b", "c", "a", "b", "c"]);
    assert_eq!(events_of(&book, EventKind::HealRequested).len(), 2);
    let exhausted = events_of(&book, EventKind::HealExhausted);
    assert_eq!(exhausted.len(), 1, "{exhausted:?}");
    assert_eq!(exhausted[0]["used"], 2);
    assert_eq!(exhausted[0]["outcome"], "failed_check");
    assert_eq!(
        exhausted[0]["describe"],
        "c ended failed_check with its heal budget spent (2 of 2); healing \"a\" did not help"
    );
    let last = finishes(&book).pop().unwrap();
    assert_eq!(last.2, TaskNext::Done(Outcome::FailedCheck));
    assert_eq!(run_state(&book), Some(RunState::Failed));
    let told_exhausted = told
        .lock()
        .unwrap()
        .iter()
        .filter(|progress| matches!(progress, Progress::HealExhausted { .. }))
        .count();
    assert_eq!(told_exhausted, 1);
}

#[test]
fn a_result_heals_only_tasks_upstream_and_says_what_it_refused() {
    let (mut core, _) = healing_core(1);
    let mut book = loaded(&mut core, 1_000);
    let mut ids = 0;
    let mut b_runs = 0;
    let ran = run_through(&mut core, &mut book, &mut ids, |task| match task {
        // `b` asks to heal `a` (upstream), itself and `c` (downstream) the first time.
        "b" => {
            b_runs += 1;
            Report {
                heal: if b_runs == 1 {
                    vec!["a".into(), "b".into(), "c".into(), "nope".into()]
                } else {
                    Vec::new()
                },
                ..reported(Some(1), "{}")
            }
        }
        "c" => reported(Some(48), r#"{"accuracy":0.45}"#),
        _ => reported(Some(1), "{}"),
    });
    assert_eq!(ran, ["a", "b", "a", "b", "c"]);
    let heals = events_of(&book, EventKind::HealRequested);
    assert_eq!(heals[0]["heal"], serde_json::json!(["a"]));
    assert_eq!(heals[0]["source"], "result");
    let message = book
        .writes
        .iter()
        .find_map(|write| match write {
            Write::Finish(finish) if finish.next == TaskNext::Resume => finish.message.clone(),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        message,
        "healing \"a\" (1 of 1 heals of this run); runs again after them; heal refused: \"b\" is the task itself, \"c\" is not upstream of it, \"nope\" is no task"
    );
    assert_eq!(run_state(&book), Some(RunState::Succeeded));
}

#[test]
fn a_restarted_keel_counts_the_heals_already_made() {
    let (mut core, _) = healing_core(1);
    let mut book = loaded(&mut core, 1_000);
    // As `load_run` finds it in the event log: the run's one heal is made.
    book.runs[0].heals_used = 1;
    let mut ids = 0;
    let ran = run_through(&mut core, &mut book, &mut ids, |task| match task {
        "c" => reported(Some(48), r#"{"accuracy":0.1}"#),
        _ => reported(Some(1), "{}"),
    });
    assert_eq!(ran, ["a", "b", "c"]);
    assert!(events_of(&book, EventKind::HealRequested).is_empty());
    assert_eq!(events_of(&book, EventKind::HealExhausted).len(), 1);
}

#[test]
fn a_frozen_upstream_task_is_not_healed() {
    let (mut core, _) = healing_core(1);
    let mut spec = (*core.spec).clone();
    spec.tasks[0].freeze_after =
        keel_model::TimeOfDay::parse("00:00").map(keel_model::FreezeSpec::At);
    core.spec = Arc::new(spec);
    // Past midnight of the run's partition, 2026-01-18 UTC.
    let mut book = loaded(&mut core, 1_768_800_000_000);
    let mut ids = 0;
    let ran = run_through(&mut core, &mut book, &mut ids, |task| match task {
        "c" => reported(Some(48), r#"{"accuracy":0.1}"#),
        _ => reported(Some(1), "{}"),
    });
    assert_eq!(ran, ["a", "b", "c"]);
    assert!(events_of(&book, EventKind::HealRequested).is_empty());
    let last = book
        .writes
        .iter()
        .rev()
        .find_map(|write| match write {
            Write::Finish(finish) => finish.message.clone(),
            _ => None,
        })
        .unwrap();
    assert!(
        last.contains("heal refused: \"a\" is frozen at 00:00"),
        "{last}"
    );
}

#[test]
fn a_frozen_task_asks_no_heal_and_says_so() {
    let (mut core, _) = healing_core(1);
    let mut spec = (*core.spec).clone();
    spec.tasks[2].freeze_after =
        keel_model::TimeOfDay::parse("00:00").map(keel_model::FreezeSpec::At);
    core.spec = Arc::new(spec);
    let mut book = loaded(&mut core, 1_768_800_000_000);
    let mut ids = 0;
    let ran = run_through(&mut core, &mut book, &mut ids, |task| match task {
        "c" => reported(Some(48), r#"{"accuracy":0.1}"#),
        _ => reported(Some(1), "{}"),
    });
    assert_eq!(ran, ["a", "b", "c"]);
    assert!(events_of(&book, EventKind::HealRequested).is_empty());
    let last = finishes(&book).pop().unwrap();
    assert_eq!(last.2, TaskNext::Done(Outcome::FailedCheck));
    let message = book
        .writes
        .iter()
        .rev()
        .find_map(|write| match write {
            Write::Finish(finish) => finish.message.clone(),
            _ => None,
        })
        .unwrap();
    assert!(
        message.contains("heal not made: the task is frozen at 00:00"),
        "{message}"
    );
}
