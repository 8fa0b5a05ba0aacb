use keel_model::{Millis, QuotaSpec, QuotaWindow, ResourceSpec};

use super::TokenBucket;

/// What [`RequestTokens::try_take`] answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Take {
    /// The tokens were taken. `alert` is set when this take crossed the quota's warning
    /// threshold or used up the quota; each is reported once per period.
    Granted {
        used: Option<u32>,
        alert: Option<QuotaAlert>,
    },
    /// The rate limit: ask again at this instant.
    Wait(Millis),
    /// The quota of the current period cannot cover the request; it resets at `resets_at`.
    Exhausted {
        used: u32,
        limit: u32,
        resets_at: Millis,
    },
}

/// A quota crossing worth an alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuotaAlert {
    /// `used` of `limit` reached the `warn` share.
    Warning {
        used: u32,
        limit: u32,
        period: String,
    },
    /// The last token of the period was taken.
    Exhausted {
        used: u32,
        limit: u32,
        period: String,
    },
}

/// The request tokens of one resource: its rate limit (when `tokens = "request"`) and its
/// quota, taken by `keel token` one request at a time.
///
/// States: the rate's [`TokenBucket`], and for the quota the period being counted (its key,
/// such as `2026-12`) and how many tokens it has used. A take first asks the quota (a request
/// the period cannot cover is refused without waiting, since waiting would not help before the
/// period ends), then the rate (the instant to ask again), and only when both agree takes from
/// both. A take in a later period than the one counted starts that period at zero.
///
/// Trade-offs: the quota is counted when a token is granted, not when the request succeeds,
/// because Keel cannot see the request; a provider that counts failed calls too is matched, one
/// that does not is under-used slightly. Alerts fire on crossing a threshold, so a count taken
/// up again after a restart (through [`resume`](Self::resume)) that is already past it does not
/// alert twice.
///
/// ```
/// use std::time::Duration;
/// use keel_engine::policy::{RequestTokens, Take};
/// use keel_model::{QuotaPeriod, QuotaSpec, QuotaWindow, Rate, ResourceSpec, TokenUse};
///
/// let spec = ResourceSpec {
///     name: "odds_api".into(),
///     rate: Some(Rate { tokens: 1, per: Duration::from_secs(1) }),
///     concurrency: None,
///     breaker: None,
///     retry_budget: None,
///     ready: None,
///     tokens: TokenUse::Request,
///     quota: Some(QuotaSpec { limit: 500, period: QuotaPeriod::Month, warn: None }),
/// };
/// let mut tokens = RequestTokens::new(&spec, 0);
/// let window = QuotaWindow::at(0, "UTC", QuotaPeriod::Month);
/// assert!(matches!(tokens.try_take(1, 0, &window), Take::Granted { used: Some(1), .. }));
/// assert_eq!(tokens.try_take(1, 10, &window), Take::Wait(1_000));
/// ```
#[derive(Debug, Clone)]
pub struct RequestTokens {
    rate: Option<TokenBucket>,
    quota: Option<QuotaCount>,
}

#[derive(Debug, Clone)]
struct QuotaCount {
    spec: QuotaSpec,
    period: String,
    used: u32,
}

impl QuotaCount {
    fn warn_at(&self) -> Option<u32> {
        let share = self.spec.warn?;
        // Rounded up, so "80%" of 500 warns at the 400th request, never before.
        Some(((f64::from(self.spec.limit) * share).ceil() as u32).clamp(1, self.spec.limit))
    }
}

impl RequestTokens {
    /// The rate applies only to a resource whose tasks take request tokens; the quota applies
    /// either way.
    pub fn new(spec: &ResourceSpec, now: Millis) -> Self {
        RequestTokens {
            rate: spec
                .rate
                .filter(|_| !spec.tokens.is_attempt())
                .map(|rate| TokenBucket::new(rate, now)),
            quota: spec.quota.map(|spec| QuotaCount {
                spec,
                period: String::new(),
                used: 0,
            }),
        }
    }

    /// Takes up a stored count: `used` tokens of the period `period`.
    pub fn resume(&mut self, period: &str, used: u32) {
        if let Some(quota) = &mut self.quota {
            quota.period = period.to_string();
            quota.used = used;
        }
    }

    /// The quota's use in `window` (0 when it is a period not yet counted), or `None` without
    /// a quota.
    pub fn used(&self, window: &QuotaWindow) -> Option<u32> {
        self.quota.as_ref().map(|quota| {
            if quota.period == window.key {
                quota.used
            } else {
                0
            }
        })
    }

    /// Takes `count` tokens at `now`, in the quota period `window` (which holds `now`), or says
    /// why not. A count above the rate's capacity is taken one by one by the caller.
    pub fn try_take(&mut self, count: u32, now: Millis, window: &QuotaWindow) -> Take {
        if let Some(quota) = &mut self.quota {
            if quota.period != window.key {
                quota.period = window.key.clone();
                quota.used = 0;
            }
            if quota.used.saturating_add(count) > quota.spec.limit {
                return Take::Exhausted {
                    used: quota.used,
                    limit: quota.spec.limit,
                    resets_at: window.end,
                };
            }
        }
        if let Some(bucket) = &mut self.rate {
            // Check every token before taking any, so a refused take leaves nothing taken.
            let mut trial = bucket.clone();
            for _ in 0..count {
                if let Err(when) = trial.try_take(now) {
                    return Take::Wait(when);
                }
            }
            *bucket = trial;
        }
        let Some(quota) = &mut self.quota else {
            return Take::Granted {
                used: None,
                alert: None,
            };
        };
        let before = quota.used;
        quota.used += count;
        let (used, limit, period) = (quota.used, quota.spec.limit, quota.period.clone());
        let alert = if used == limit {
            Some(QuotaAlert::Exhausted {
                used,
                limit,
                period,
            })
        } else {
            match quota.warn_at() {
                Some(at) if before < at && used >= at => Some(QuotaAlert::Warning {
                    used,
                    limit,
                    period,
                }),
                _ => None,
            }
        };
        Take::Granted {
            used: Some(used),
            alert,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use keel_model::{QuotaPeriod, Rate, TokenUse};

    use super::*;

    const DAY: Millis = 86_400_000;

    fn spec(rate: Option<Rate>, tokens: TokenUse, quota: Option<QuotaSpec>) -> ResourceSpec {
        ResourceSpec {
            name: "odds_api".into(),
            rate,
            concurrency: None,
            breaker: None,
            retry_budget: None,
            ready: None,
            tokens,
            quota,
        }
    }

    fn day(at: Millis) -> QuotaWindow {
        QuotaWindow::at(at, "UTC", QuotaPeriod::Day)
    }

    #[test]
    fn the_rate_is_shared_by_every_taker_and_answers_the_instant_to_ask_again() {
        let rate = Rate {
            tokens: 20,
            per: Duration::from_secs(60),
        };
        let mut tokens = RequestTokens::new(&spec(Some(rate), TokenUse::Request, None), 0);
        for at in 0..20 {
            assert_eq!(
                tokens.try_take(1, at, &day(at)),
                Take::Granted {
                    used: None,
                    alert: None
                }
            );
        }
        assert_eq!(tokens.try_take(1, 30_000, &day(30_000)), Take::Wait(60_000));
        assert!(matches!(
            tokens.try_take(1, 60_000, &day(60_000)),
            Take::Granted { .. }
        ));
        // A take of several tokens is all or nothing.
        assert_eq!(tokens.try_take(2, 60_001, &day(60_001)), Take::Wait(60_002));
        assert!(matches!(
            tokens.try_take(1, 60_001, &day(60_001)),
            Take::Granted { .. }
        ));
    }

    #[test]
    fn an_attempt_charged_resource_leaves_its_rate_to_the_engine() {
        let rate = Rate {
            tokens: 1,
            per: Duration::from_secs(60),
        };
        let mut tokens = RequestTokens::new(&spec(Some(rate), TokenUse::Attempt, None), 0);
        for at in 0..5 {
            assert!(matches!(
                tokens.try_take(1, at, &day(at)),
                Take::Granted { .. }
            ));
        }
    }

    #[test]
    fn a_quota_warns_once_refuses_when_used_up_and_resets_with_the_period() {
        let quota = QuotaSpec {
            limit: 5,
            period: QuotaPeriod::Day,
            warn: Some(0.8),
        };
        let mut tokens = RequestTokens::new(&spec(None, TokenUse::Request, Some(quota)), 0);
        let mut alerts = Vec::new();
        for at in 0..5 {
            match tokens.try_take(1, at, &day(at)) {
                Take::Granted { alert, .. } => alerts.extend(alert),
                other => panic!("{other:?}"),
            }
        }
        let period = "1970-01-01".to_string();
        assert_eq!(
            alerts,
            vec![
                QuotaAlert::Warning {
                    used: 4,
                    limit: 5,
                    period: period.clone()
                },
                QuotaAlert::Exhausted {
                    used: 5,
                    limit: 5,
                    period
                },
            ]
        );
        assert_eq!(
            tokens.try_take(1, 10, &day(10)),
            Take::Exhausted {
                used: 5,
                limit: 5,
                resets_at: DAY
            }
        );
        assert_eq!(tokens.used(&day(DAY)), Some(0));
        assert_eq!(
            tokens.try_take(1, DAY, &day(DAY)),
            Take::Granted {
                used: Some(1),
                alert: None
            }
        );
    }

    #[test]
    fn a_resumed_count_past_the_warning_does_not_warn_again() {
        let quota = QuotaSpec {
            limit: 10,
            period: QuotaPeriod::Day,
            warn: Some(0.5),
        };
        let mut tokens = RequestTokens::new(&spec(None, TokenUse::Request, Some(quota)), 0);
        tokens.resume("1970-01-01", 6);
        assert_eq!(
            tokens.try_take(1, 5, &day(5)),
            Take::Granted {
                used: Some(7),
                alert: None
            }
        );
        // A request larger than what is left is refused whole.
        assert!(matches!(
            tokens.try_take(4, 6, &day(6)),
            Take::Exhausted { used: 7, .. }
        ));
    }

    #[test]
    fn a_refused_rate_takes_nothing_from_the_quota() {
        let rate = Rate {
            tokens: 1,
            per: Duration::from_secs(1),
        };
        let quota = QuotaSpec {
            limit: 10,
            period: QuotaPeriod::Day,
            warn: None,
        };
        let mut tokens = RequestTokens::new(&spec(Some(rate), TokenUse::Request, Some(quota)), 0);
        assert!(matches!(
            tokens.try_take(1, 0, &day(0)),
            Take::Granted { used: Some(1), .. }
        ));
        assert_eq!(tokens.try_take(1, 1, &day(1)), Take::Wait(1_000));
        assert_eq!(tokens.used(&day(1)), Some(1));
    }
}
