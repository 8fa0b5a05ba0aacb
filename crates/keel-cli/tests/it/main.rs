//! The keel binary end to end.

mod alerts;
mod api;
mod calendars;
mod cli;
mod context;
mod crash;
mod daemon;
mod dashboard_grid;
mod dashboard_pages;
mod dashboard_run;
mod demo;
mod faults;
mod hardening;
mod history;
mod http_tasks;
mod logs;
mod messages;
mod operations;
mod reconcile_crash;
mod serve;
mod shutdown;
mod storm;
mod support;
mod tokens;
mod unattended;
