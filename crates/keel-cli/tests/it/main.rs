//! The keel binary end to end.

mod api;
mod cli;
mod context;
mod crash;
mod demo;
mod faults;
mod hardening;
mod history;
mod messages;
mod operations;
mod reconcile_crash;
mod serve;
mod shutdown;
mod storm;
mod support;
