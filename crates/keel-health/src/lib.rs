//! Keel's health intelligence as pure functions over numbers and dates: no I/O, no clock, no
//! randomness, so every rule is tested on synthetic series.
//!
//! - [`anomaly`]: is a task's metric (or its rows, or its duration) for this partition far
//!   outside what it usually is?
//! - [`slo`]: error budgets and multi-window burn rates of service level objectives.
//! - [`score`]: the health score from 0 to 10, from weighted dimensions with their evidence.

pub mod anomaly;
pub mod score;
pub mod slo;
