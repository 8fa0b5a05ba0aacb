//! Alerts of `keel serve`: the [`book`] decides what to tell (a pure state machine on an
//! injected clock), [`deliver`] tells it (a webhook, a command) off the engine's loop.

pub mod book;
pub mod deliver;

pub use deliver::Alerts;
