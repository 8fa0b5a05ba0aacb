//! The keel binary end to end.

mod crash;
mod support;
