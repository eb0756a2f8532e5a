//! Per-caller rate limits: the stage after the policy's allow.
//!
//! A policy's `limits:` are compiled with its rules (`policy/compile/limits.rs`);
//! evaluation lists the [`LimitHit`]s an allowed request counts against and the
//! decision carries them, so a cached allow still names its limits. The engine then
//! spends one unit from each hit's bucket ([`bucket::Buckets`]) on every allow,
//! cached or not; the first empty bucket turns the allow into a 429 that is never
//! cached. Denied requests spend nothing.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub mod bucket;
pub mod redis;

pub use bucket::{Buckets, Spent, Tightest};

/// A sustained rate: `count` requests per `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    /// Requests per period (at least 1).
    pub count: u64,
    /// The period: one second, minute or hour.
    pub period: Duration,
}

/// The largest count a rate may name: beyond this a limit is no limit, and the bucket
/// arithmetic (nanoseconds) keeps its precision below it.
pub const MAX_COUNT: u64 = 1_000_000_000;

/// Why a rate or `per` value is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateError {
    /// Not `N/s`, `N/m` or `N/h`.
    #[error("invalid rate {0:?}: write N/s, N/m or N/h, e.g. 200/s")]
    Syntax(String),
    /// `0/s`: would deny everything the policy allows.
    #[error("invalid rate {0:?}: the count must be at least 1 (a rate of 0 would refuse everything; use a deny rule)")]
    Zero(String),
    /// More than [`MAX_COUNT`].
    #[error("invalid rate {0:?}: the count must be at most 1000000000")]
    TooLarge(String),
}

impl Rate {
    /// Parses `N/s`, `N/m` or `N/h` (also `N/sec`, `N/min`, `N/hour`; spaces around
    /// `/` are allowed).
    pub fn parse(raw: &str) -> Result<Rate, RateError> {
        let syntax = || RateError::Syntax(raw.to_string());
        let (count, unit) = raw.split_once('/').ok_or_else(syntax)?;
        let count = count.trim();
        if count.is_empty() || !count.bytes().all(|b| b.is_ascii_digit()) {
            return Err(syntax());
        }
        let count: u64 = count
            .parse()
            .map_err(|_| RateError::TooLarge(raw.to_string()))?;
        let period = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            _ => return Err(syntax()),
        };
        if count == 0 {
            return Err(RateError::Zero(raw.to_string()));
        }
        if count > MAX_COUNT {
            return Err(RateError::TooLarge(raw.to_string()));
        }
        Ok(Rate { count, period })
    }

    /// The time one request's worth of budget takes to come back, in nanoseconds
    /// (at least 1).
    pub fn interval_nanos(&self) -> u64 {
        let period = u64::try_from(self.period.as_nanos()).unwrap_or(u64::MAX);
        (period / self.count).max(1)
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.period.as_secs() {
            1 => "s",
            60 => "m",
            _ => "h",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

/// Whose budget a request spends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Per {
    /// One budget per caller (the default).
    Principal,
    /// One budget shared by every caller the limit matches.
    Service,
}

impl Per {
    /// Parses `principal` or `service`.
    pub fn parse(raw: &str) -> Option<Per> {
        match raw {
            "principal" => Some(Per::Principal),
            "service" => Some(Per::Service),
            _ => None,
        }
    }

    /// The name policy files use.
    pub fn as_str(self) -> &'static str {
        match self {
            Per::Principal => "principal",
            Per::Service => "service",
        }
    }
}

/// Which bucket of a limit a request spends from. Memory stays bounded by the
/// policy text: only callers a policy names literally get buckets of their own.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Caller {
    /// `per: service`: the limit's one bucket.
    Service,
    /// A caller the policy names literally (principal or peer id).
    Named(Arc<str>),
    /// Every other caller: one shared bucket per limit.
    Others,
}

impl Caller {
    /// The bucket's name in explanations: the caller's id, `service` or `others`.
    pub fn as_str(&self) -> &str {
        match self {
            Caller::Service => "service",
            Caller::Named(id) => id,
            Caller::Others => "others",
        }
    }
}

/// One limit an allowed request counts against, and which of its buckets.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LimitHit {
    /// The protected service (metric label, bucket key).
    pub service: Arc<str>,
    /// The limit's id, unique within its policy.
    pub limit: Arc<str>,
    /// Whose bucket.
    pub caller: Caller,
    /// The sustained rate.
    pub rate: Rate,
    /// How many requests may arrive at once (at least 1).
    pub burst: u64,
}

impl LimitHit {
    /// For `explain`: `id: 200/s, burst 400, bucket <caller>`.
    pub fn describe(&self) -> String {
        let bucket = match &self.caller {
            Caller::Service => "one budget for the service".to_string(),
            Caller::Named(id) => format!("own budget of {id}"),
            Caller::Others => "shared budget of callers the policy does not name".to_string(),
        };
        format!(
            "{}: {}, burst {} ({bucket})",
            self.limit, self.rate, self.burst
        )
    }
}

/// A request over a limit: what the 429 says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimited {
    /// The limit that ran out.
    pub limit: Arc<str>,
    /// The limit's rate, for `ratelimit-policy`.
    pub rate: Rate,
    /// Whole seconds until one more request fits (rounded up, at least 1).
    pub retry_after: u64,
}

impl RateLimited {
    /// The `ratelimit-policy` field (draft-ietf-httpapi-ratelimit-headers):
    /// `"<id>";q=<count>;w=<seconds>`.
    pub fn policy_field(&self) -> String {
        policy_field(&self.limit, self.rate)
    }

    /// The `ratelimit` field: `"<id>";r=0;t=<seconds until a request fits>`.
    pub fn field(&self) -> String {
        format!("\"{}\";r=0;t={}", self.limit, self.retry_after)
    }
}

/// What an allowed request left of its tightest limit: the `ratelimit-policy` and
/// `ratelimit` fields on an allowed answer, with `rate_limits.headers_on_allow`.
///
/// One limit, the one with the fewest requests left, because that is how many more
/// requests fit right now whatever the others say (draft-ietf-httpapi-ratelimit-headers
/// lets a server name any of its policies).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    /// The limit's id.
    pub limit: Arc<str>,
    /// The limit's rate, for `ratelimit-policy`.
    pub rate: Rate,
    /// Requests that would still fit at once.
    pub remaining: u64,
    /// Whole seconds until the bucket is full again (rounded up, at least 1).
    pub reset: u64,
}

impl Budget {
    /// The budget `tightest` names among `hits` (what [`Buckets::spend_all`] spent).
    pub fn of(hits: &[LimitHit], tightest: Tightest) -> Option<Budget> {
        let hit = hits.get(tightest.hit)?;
        Some(Budget {
            limit: hit.limit.clone(),
            rate: hit.rate,
            remaining: tightest.remaining,
            reset: bucket::whole_seconds(tightest.full_in),
        })
    }

    /// The response fields: `ratelimit-policy` as on a 429, and `ratelimit`:
    /// `"<id>";r=<remaining>;t=<seconds until full>`.
    pub fn headers(&self) -> [(&'static str, String); 2] {
        [
            ("ratelimit-policy", policy_field(&self.limit, self.rate)),
            (
                "ratelimit",
                format!("\"{}\";r={};t={}", self.limit, self.remaining, self.reset),
            ),
        ]
    }
}

/// What `hopwarden validate` prints with `rate_limits.headers_on_allow`: over Envoy's
/// HTTP service the fields reach the client only if the filter lets them (over gRPC
/// `response_headers_to_add` needs no setting).
pub const ENVOY_HTTP_SERVICE_BUDGET_HEADERS: &str = "ext_authz http_service, for the budget on allowed requests (docs/rate-limits.md): authorization_response: { allowed_client_headers_on_success: { patterns: [{ exact: ratelimit-policy }, { exact: ratelimit }] } }";

/// `"<id>";q=<count>;w=<seconds>` (draft-ietf-httpapi-ratelimit-headers).
fn policy_field(limit: &str, rate: Rate) -> String {
    format!("\"{limit}\";q={};w={}", rate.count, rate.period.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_parsing() {
        let ok: &[(&str, u64, u64)] = &[
            ("200/s", 200, 1),
            ("1/s", 1, 1),
            ("10/m", 10, 60),
            ("10 / min", 10, 60),
            ("5/h", 5, 3600),
            ("7/hour", 7, 3600),
            ("3/sec", 3, 1),
            ("1000000000/s", 1_000_000_000, 1),
        ];
        for (raw, count, secs) in ok {
            let rate = Rate::parse(raw).unwrap_or_else(|e| panic!("{raw}: {e}"));
            assert_eq!(rate.count, *count, "{raw}");
            assert_eq!(rate.period, Duration::from_secs(*secs), "{raw}");
        }
        let bad: &[(&str, &str)] = &[
            ("0/s", "the count must be at least 1"),
            ("0/h", "the count must be at least 1"),
            ("200", "write N/s, N/m or N/h"),
            ("200/d", "write N/s, N/m or N/h"),
            ("/s", "write N/s, N/m or N/h"),
            ("-1/s", "write N/s, N/m or N/h"),
            ("1.5/s", "write N/s, N/m or N/h"),
            ("", "write N/s, N/m or N/h"),
            ("1000000001/s", "at most 1000000000"),
            ("99999999999999999999999/s", "at most 1000000000"),
        ];
        for (raw, want) in bad {
            let err = Rate::parse(raw).unwrap_err().to_string();
            assert!(err.contains(want), "{raw}: {err}");
            assert!(err.contains(&format!("{raw:?}")), "{raw}: {err}");
        }
    }

    #[test]
    fn rate_display_and_interval() {
        for raw in ["200/s", "10/m", "5/h"] {
            assert_eq!(Rate::parse(raw).unwrap().to_string(), raw);
        }
        assert_eq!(Rate::parse("4/s").unwrap().interval_nanos(), 250_000_000);
        assert_eq!(Rate::parse("1/m").unwrap().interval_nanos(), 60_000_000_000);
        assert_eq!(Rate::parse("1000000000/s").unwrap().interval_nanos(), 1);
    }

    #[test]
    fn per_parsing() {
        assert_eq!(Per::parse("principal"), Some(Per::Principal));
        assert_eq!(Per::parse("service"), Some(Per::Service));
        assert_eq!(Per::parse("caller"), None);
        assert_eq!(Per::parse("Principal"), None);
        assert_eq!(Per::Service.as_str(), "service");
    }

    #[test]
    fn a_hit_describes_its_limit_and_bucket() {
        let hit = |caller| LimitHit {
            service: "ledger".into(),
            limit: "payments-reads".into(),
            caller,
            rate: Rate::parse("200/s").unwrap(),
            burst: 400,
        };
        let table = [
            (Caller::Service, "payments-reads: 200/s, burst 400 (one budget for the service)"),
            (
                Caller::Named("spiffe://td/ns/p/sa/p".into()),
                "payments-reads: 200/s, burst 400 (own budget of spiffe://td/ns/p/sa/p)",
            ),
            (
                Caller::Others,
                "payments-reads: 200/s, burst 400 (shared budget of callers the policy does not name)",
            ),
        ];
        for (caller, want) in table {
            assert_eq!(hit(caller).describe(), want);
        }
    }

    #[test]
    fn header_fields() {
        let limited = RateLimited {
            limit: "payments-reads".into(),
            rate: Rate::parse("200/s").unwrap(),
            retry_after: 3,
        };
        assert_eq!(limited.policy_field(), "\"payments-reads\";q=200;w=1");
        assert_eq!(limited.field(), "\"payments-reads\";r=0;t=3");
    }

    #[test]
    fn budget_fields_on_an_allow() {
        let hits = [
            LimitHit {
                service: "ledger".into(),
                limit: "payments-reads".into(),
                caller: Caller::Service,
                rate: Rate::parse("200/s").unwrap(),
                burst: 400,
            },
            LimitHit {
                service: "ledger".into(),
                limit: "payments-hourly".into(),
                caller: Caller::Others,
                rate: Rate::parse("5000/h").unwrap(),
                burst: 1,
            },
        ];
        let tightest = |hit, remaining, full_in| Tightest {
            hit,
            remaining,
            full_in,
        };
        let rendered = |t| Budget::of(&hits, t).map(|b| b.headers());
        // (tightest, ratelimit-policy, ratelimit)
        #[rustfmt::skip]
        let table: &[(Tightest, &str, &str)] = &[
            (tightest(0, 399, 5_000_000), "\"payments-reads\";q=200;w=1", "\"payments-reads\";r=399;t=1"),
            (tightest(1, 0, 720_000_000_000), "\"payments-hourly\";q=5000;w=3600", "\"payments-hourly\";r=0;t=720"),
            // Rounded up: 1.5 s until full is t=2, never 1.
            (tightest(0, 7, 1_500_000_000), "\"payments-reads\";q=200;w=1", "\"payments-reads\";r=7;t=2"),
        ];
        for (t, policy, field) in table {
            let [p, f] = rendered(*t).unwrap();
            assert_eq!(p, ("ratelimit-policy", policy.to_string()), "{t:?}");
            assert_eq!(f, ("ratelimit", field.to_string()), "{t:?}");
        }
        assert_eq!(rendered(tightest(2, 0, 1)), None, "no such hit");
    }
}
