//! Keel's health intelligence as pure functions over numbers and dates: no I/O, no clock, no
//! randomness, so every rule is tested on synthetic series.
//!
//! - [`anomaly`]: is a task's metric (or its rows, or its duration) for this partition far
//!   outside what it usually is?
//! - [`slo`]: error budgets and multi-window burn rates of service level objectives.

pub mod anomaly;
pub mod slo;
