//! Request tokens and quotas on a resource: `tokens`, `quota` and `warn`.

use insta::assert_snapshot;
use keel_model::{QuotaPeriod, QuotaSpec, TokenUse};

use crate::{HEADER, errors_of};

#[test]
fn request_tokens_and_a_quota_become_the_resource_spec() {
    let spec = keel_config::parse(
        &format!(
            r#"{HEADER}
[resources.odds_api]
rate = "20/m"
tokens = "request"
quota = "500/month"
warn = "80%"

[resources.daily]
quota = "50/day"

[tasks.fetch]
phase = "scrape"
command = ["true"]
uses = ["odds_api", "daily"]
"#
        ),
        "keel.toml",
    )
    .unwrap_or_else(|errors| panic!("{errors}"));
    let odds = &spec.resources[0];
    assert_eq!(odds.name, "odds_api");
    assert_eq!(odds.tokens, TokenUse::Request);
    assert_eq!(
        odds.quota,
        Some(QuotaSpec {
            limit: 500,
            period: QuotaPeriod::Month,
            warn: Some(0.8)
        })
    );
    let daily = &spec.resources[1];
    assert_eq!(daily.tokens, TokenUse::Attempt);
    assert_eq!(
        daily.quota,
        Some(QuotaSpec {
            limit: 50,
            period: QuotaPeriod::Day,
            warn: None
        })
    );
}

#[test]
fn bad_tokens_quotas_and_warnings() {
    assert_snapshot!(errors_of(&format!(
        r#"{HEADER}
[resources.rolling]
quota = "500/30d"
[resources.words]
quota = "500 a month"
[resources.zero]
quota = "0/day"
[resources.count]
quota = "lots/month"
[resources.huge]
quota = "9999999999/day"
[resources.number]
quota = 500
[resources.choice]
tokens = "requests"
rate = "1/s"
[resources.lonely_warn]
rate = "1/s"
warn = "80%"
[resources.warn_range]
quota = "10/day"
warn = "120%"
[resources.nothing_to_take]
tokens = "request"

[tasks.fetch]
phase = "scrape"
command = ["true"]
"#
    )));
}
