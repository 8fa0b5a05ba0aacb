//! `[alerts]`: the sinks and limits `keel serve` alerts with, and the errors that name what is
//! wrong without ever quoting a webhook URL.

use std::time::Duration;

use keel_model::WebhookUrl;

use crate::{HEADER, errors_of};

fn with_alerts(alerts: &str) -> String {
    format!("{HEADER}\n[tasks.fetch]\nphase = \"scrape\"\ncommand = [\"true\"]\n\n{alerts}")
}

#[test]
fn alerts_read_with_their_defaults() {
    let source = with_alerts(
        "[alerts]\nwebhook = { url_env = \"KEEL_ALERT_WEBHOOK\" }\ncommand = [\"notify\", \"--to\", \"data\"]\n",
    );
    let spec = keel_config::parse(&source, "keel.toml").unwrap();
    let alerts = spec.alerts.expect("alerts");
    assert_eq!(
        alerts.webhook,
        Some(WebhookUrl::Env("KEEL_ALERT_WEBHOOK".into()))
    );
    assert_eq!(
        alerts.command,
        Some(vec!["notify".into(), "--to".into(), "data".into()])
    );
    assert_eq!(alerts.max_per_hour, 5);
    assert_eq!(alerts.degraded_grace, Duration::from_secs(3600));
    assert_eq!(alerts.breaker_open_for, Duration::from_secs(900));
    assert_eq!(alerts.timeout, Duration::from_secs(10));

    let source = with_alerts(
        "[alerts]\nwebhook = { url = \"http://127.0.0.1:9093/keel\" }\nmax_per_hour = 2\ndegraded_grace = \"30m\"\nbreaker_open_for = \"5m\"\ntimeout = \"3s\"\n",
    );
    let alerts = keel_config::parse(&source, "keel.toml")
        .unwrap()
        .alerts
        .unwrap();
    assert_eq!(
        alerts.webhook,
        Some(WebhookUrl::Literal("http://127.0.0.1:9093/keel".into()))
    );
    assert_eq!(alerts.max_per_hour, 2);
    assert_eq!(alerts.degraded_grace, Duration::from_secs(1800));
    assert_eq!(alerts.breaker_open_for, Duration::from_secs(300));
    assert_eq!(alerts.timeout, Duration::from_secs(3));

    let none = keel_config::parse(&with_alerts(""), "keel.toml").unwrap();
    assert_eq!(none.alerts, None);
}

#[test]
fn every_alerts_problem_is_reported_at_once_without_the_url() {
    let source = with_alerts(
        "[alerts]\nwebhook = { url = \"https://hooks.slack.com/services/T000/B000/XXXXSECRETXXXX\" }\ncommand = []\nmax_per_hour = 0\ndegraded_grace = \"soon\"\nbreaker_open = \"5m\"\n",
    );
    let errors = errors_of(&source);
    assert!(
        !errors.contains("XXXXSECRETXXXX"),
        "a webhook URL leaked: {errors}"
    );
    assert!(
        errors.contains("invalid \"webhook.url\" in [alerts] (keel.toml:11:19)"),
        "{errors}"
    );
    assert!(errors.contains("name it with url_env"), "{errors}");
    assert!(
        errors.contains("invalid \"command\" in [alerts]"),
        "{errors}"
    );
    assert!(errors.contains("max_per_hour"), "{errors}");
    assert!(errors.contains("degraded_grace"), "{errors}");
    assert!(
        errors.contains("did you mean \"breaker_open_for\""),
        "{errors}"
    );

    let https = errors_of(&with_alerts(
        "[alerts]\nwebhook = { url = \"https://example.org/hook\" }\n",
    ));
    assert!(https.contains("https is not supported"), "{https}");
    let both = errors_of(&with_alerts(
        "[alerts]\nwebhook = { url = \"http://127.0.0.1:1/x\", url_env = \"HOOK\" }\n",
    ));
    assert!(both.contains("both url and url_env"), "{both}");
    let no_sink = errors_of(&with_alerts("[alerts]\nmax_per_hour = 3\n"));
    assert!(no_sink.contains("it has no sink"), "{no_sink}");
    let bad_env = errors_of(&with_alerts("[alerts]\nwebhook = { url_env = \"A=B\" }\n"));
    assert!(bad_env.contains("webhook.url_env"), "{bad_env}");
}
