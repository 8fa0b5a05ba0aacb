//! The keel binary end to end.

mod support;
