//! The integration tests of keel-config: error messages as snapshots, valid files as specs.

mod alerts;
mod backfill;
mod checks;
mod context;
mod edges;
mod errors;
mod expand;
mod http;
mod property;
mod rollout;
mod secrets;
mod slo;
mod timing;
mod tokens;
mod valid;

/// The full `Display` of the errors for `source`, read as `keel.toml`.
pub fn errors_of(source: &str) -> String {
    match keel_config::parse(source, "keel.toml") {
        Ok(spec) => panic!("expected errors, got a valid spec: {spec:#?}"),
        Err(errors) => errors.to_string(),
    }
}

/// A minimal valid pipeline for fixtures to extend.
pub const HEADER: &str = r#"[pipeline]
name = "hoops"

[phases.scrape]
"#;
