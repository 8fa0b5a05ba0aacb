//! Alerts of `keel serve`: the [`book`] decides what to tell (a pure state machine on an
//! injected clock), [`deliver`] tells it (a webhook, a command) off the engine's loop, and
//! [`watch`] reads what the ticker judges from the store (anomalies, SLO burn rates).

pub mod book;
pub mod deliver;
pub mod watch;

pub use deliver::Alerts;
