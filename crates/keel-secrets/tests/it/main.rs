//! keel-secrets against the world: the real `age` binary, real files and real processes.

mod age_interop;
mod providers;
mod store;
mod support;
