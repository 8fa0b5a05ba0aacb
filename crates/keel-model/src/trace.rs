//! W3C trace context ids for runs and attempts.
//!
//! Each run is a trace: its id is drawn at random when the run is created and stored with it.
//! Every span id is derived from the trace id, so that a Keel restarted in the middle of a run
//! names the run's root span and each attempt's span exactly as the Keel before it did: the
//! root span from the trace id alone, an attempt's span from the trace id, the task and the
//! attempt number. The derivation is a fixed hash (FNV-1a, then a SplitMix64 finaliser), never
//! the standard library's hasher, whose output may change between Rust releases.

use std::fmt;

/// A W3C trace id: 128 bits, shown as 32 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId(pub u128);

/// A W3C span (parent) id: 64 bits, shown as 16 lowercase hex digits; never zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId(pub u64);

impl TraceId {
    /// The trace id a run stored. A stored id that is not 32 hex digits (or is all zeros, which
    /// W3C forbids) is hashed into a valid one, so that a damaged row still gives one stable
    /// trace instead of none.
    pub fn from_stored(text: &str) -> TraceId {
        match u128::from_str_radix(text, 16) {
            Ok(id) if text.len() == 32 && id != 0 => TraceId(id),
            _ => {
                let high = u128::from(mix(fnv(&[b"trace-high", text.as_bytes()])));
                let low = u128::from(mix(fnv(&[b"trace-low", text.as_bytes()])));
                TraceId((high << 64 | low).max(1))
            }
        }
    }

    /// The span of the run itself, the parent of every attempt's span.
    pub fn root_span(self) -> SpanId {
        self.derive(&[b"run"])
    }

    /// The span of attempt `attempt` of `task`: the parent id in that attempt's `TRACEPARENT`.
    pub fn attempt_span(self, task: &str, attempt: u32) -> SpanId {
        self.derive(&[b"attempt", task.as_bytes(), &attempt.to_le_bytes()])
    }

    /// The span of the `poll`th poll of `task`'s sensor.
    pub fn sensor_span(self, task: &str, poll: u32) -> SpanId {
        self.derive(&[b"sensor", task.as_bytes(), &poll.to_le_bytes()])
    }

    /// A `TRACEPARENT` value (version 00, sampled) naming `parent` as the caller's span.
    pub fn traceparent(self, parent: SpanId) -> String {
        format!("00-{self}-{parent}-01")
    }

    fn derive(self, parts: &[&[u8]]) -> SpanId {
        let trace = self.0.to_be_bytes();
        let mut all: Vec<&[u8]> = Vec::with_capacity(parts.len() + 1);
        all.push(&trace);
        all.extend_from_slice(parts);
        SpanId(mix(fnv(&all)).max(1))
    }
}

/// FNV-1a over the parts, each followed by its length so that ("ab", "c") and ("a", "bc")
/// differ.
fn fnv(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |byte: u8| {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    };
    for part in parts {
        part.iter().copied().for_each(&mut eat);
        (part.len() as u64)
            .to_le_bytes()
            .into_iter()
            .for_each(&mut eat);
    }
    hash
}

/// SplitMix64's finaliser: spreads FNV's weak low bits over the whole word.
fn mix(mut value: u64) -> u64 {
    value = (value ^ (value >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    value = (value ^ (value >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    value ^ (value >> 31)
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STORED: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

    #[test]
    fn a_stored_id_is_kept_as_it_is() {
        let trace = TraceId::from_stored(STORED);
        assert_eq!(trace.to_string(), STORED);
    }

    #[test]
    fn a_damaged_stored_id_still_gives_one_valid_stable_trace() {
        for bad in ["", "xyz", "00000000000000000000000000000000", "4bf92f"] {
            let trace = TraceId::from_stored(bad);
            assert_ne!(trace.0, 0, "{bad:?}");
            assert_eq!(trace.to_string().len(), 32);
            assert_eq!(trace, TraceId::from_stored(bad));
        }
        assert_ne!(TraceId::from_stored("a"), TraceId::from_stored("b"));
    }

    #[test]
    fn span_ids_are_stable_and_tell_attempts_apart() {
        let trace = TraceId::from_stored(STORED);
        // Pinned: a restarted Keel must name the same spans as the Keel before it, across
        // releases.
        assert_eq!(trace.root_span().to_string(), "54e7c70ad3893598");
        assert_eq!(
            trace.attempt_span("load", 1).to_string(),
            "d2613f3010eec2e3"
        );
        let spans = [
            trace.root_span(),
            trace.attempt_span("load", 1),
            trace.attempt_span("load", 2),
            trace.attempt_span("loa", 1),
            trace.sensor_span("load", 1),
            TraceId::from_stored("4bf92f3577b34da6a3ce929d0e0e4737").root_span(),
        ];
        for (index, span) in spans.iter().enumerate() {
            assert_eq!(span.to_string().len(), 16);
            assert!(!spans[..index].contains(span), "{span} repeats");
        }
    }

    #[test]
    fn traceparent_is_w3c_shaped() {
        let trace = TraceId::from_stored(STORED);
        let parent = trace.attempt_span("load", 3);
        assert_eq!(
            trace.traceparent(parent),
            format!("00-{STORED}-{parent}-01")
        );
    }
}
