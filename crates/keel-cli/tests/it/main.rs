//! The keel binary end to end.

mod cli;
mod context;
mod crash;
mod demo;
mod faults;
mod hardening;
mod reconcile_crash;
mod shutdown;
mod support;
