//! The cluster-wide store: rate limit buckets that replicas share through Redis.
//!
//! Redis is never on a check's path. Every replica decides with its own bucket table
//! ([`Buckets`]), which counts the requests each bucket allowed since the last flush.
//! Every `flush_interval` [`sync`] sends those counts to Redis in one script call
//! (`redis.lua`, EVALSHA with EVAL on a `NOSCRIPT`), which adds them to the shared
//! GCRA buckets and answers how far ahead each one is; the replica adopts that, so its
//! next decisions see what every replica spent. This is Limitador's "cached" approach:
//! replicas can overshoot a budget by what the others allowed within one flush
//! interval (docs/rate-limits.md has the bound and the measured figures).
//!
//! Redis unreachable, slow (every call is bounded by `timeout`) or refusing the
//! password: each replica keeps limiting on its own (the local limit still applies,
//! never more), logs it once, shows it in `hopwarden_rate_limit_store_fallback`, and
//! logs once more when the store answers again. Requests counted during the outage are
//! not replayed: they were already limited locally, and stay spent locally
//! ([`Buckets::adopt`] never lowers a bucket).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, IntoConnectionInfo, Script};
use serde::Deserialize;

use super::bucket::{Buckets, Key, Pending};
use super::Caller;
use crate::telemetry::Metrics;

/// Buckets sent in one script call (bounded request size and script run time).
const CHUNK: usize = 512;

/// How long a replica in fallback waits between attempts to reach Redis again.
const RETRY: Duration = Duration::from_millis(500);

/// `rate_limits.redis`: where the shared buckets live.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisSpec {
    /// `redis://[user[:password]@]host:port[/db]`, or `rediss://…` for TLS.
    pub url: String,
    /// Prepended to every key, so deployments sharing a Redis stay apart.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// A file holding the password (`requirepass` or the ACL user's); overrides a
    /// password in the URL. Relative to the config file.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// PEM CA certificates that verify a `rediss://` server (default: the Mozilla root
    /// bundle built in, webpki-roots, read once rather than the system's on every connect).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// How often counts are sent to Redis.
    #[serde(default = "default_flush_interval", with = "humantime_serde")]
    #[schemars(with = "crate::schema::HumanDuration")]
    pub flush_interval: Duration,
    /// The longest a connection attempt or a flush may take.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    #[schemars(with = "crate::schema::HumanDuration")]
    pub timeout: Duration,
}

fn default_prefix() -> String {
    "hopwarden:".to_string()
}

fn default_flush_interval() -> Duration {
    Duration::from_millis(10)
}

fn default_timeout() -> Duration {
    Duration::from_millis(250)
}

impl RedisSpec {
    /// Anchors relative file names at the config file's directory.
    pub fn resolve(&mut self, base: &Path) {
        for file in [&mut self.password_file, &mut self.ca_file]
            .into_iter()
            .flatten()
        {
            *file = base.join(&*file);
        }
    }

    /// What is wrong with the settings: (text to point at, message).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        match self.url.as_str().into_connection_info() {
            Ok(_) if self.url.starts_with("redis://") || self.url.starts_with("rediss://") => {}
            // The error may quote the URL, and with it a password: name only the scheme.
            _ => out.push((
                "url".to_string(),
                "rate_limits.redis.url: not a redis:// or rediss:// URL".to_string(),
            )),
        }
        if self.ca_file.is_some() && !self.url.starts_with("rediss://") {
            out.push((
                "ca_file".to_string(),
                "rate_limits.redis.ca_file: only a rediss:// URL uses TLS".to_string(),
            ));
        }
        let ms = |d: Duration| d.as_millis();
        if !(1..=1000).contains(&ms(self.flush_interval)) {
            out.push((
                "flush_interval".to_string(),
                format!(
                    "rate_limits.redis.flush_interval: {:?} is not between 1ms and 1s",
                    self.flush_interval
                ),
            ));
        }
        if !(1..=10_000).contains(&ms(self.timeout)) {
            out.push((
                "timeout".to_string(),
                format!(
                    "rate_limits.redis.timeout: {:?} is not between 1ms and 10s",
                    self.timeout
                ),
            ));
        }
        out
    }
}

/// Why the store could not be set up at start.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL does not parse (the URL is not repeated: it may hold a password).
    #[error("rate_limits.redis.url is not a valid redis URL: {0}")]
    Url(String),
    /// `password_file` or `ca_file` could not be read.
    #[error("rate_limits.redis: cannot read {path}: {source}")]
    File {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// A connection to the shared store (made lazily, re-made after errors).
pub struct Store {
    connection: ConnectionManager,
    /// `host:port`, for logs (never the password).
    server: String,
    prefix: String,
    script: Script,
    flush_interval: Duration,
    timeout: Duration,
}

impl Store {
    /// Reads the password and CA files and prepares the connection; connects on the
    /// first flush, so a Redis that is down at start delays nothing.
    pub fn new(spec: &RedisSpec) -> Result<Store, StoreError> {
        let url_error = |e: redis::RedisError| StoreError::Url(format!("{:?}", e.kind()));
        let mut info = spec
            .url
            .as_str()
            .into_connection_info()
            .map_err(url_error)?;
        if let Some(path) = &spec.password_file {
            let password = read(path)?;
            let password = String::from_utf8_lossy(&password).trim_end().to_string();
            let settings = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(settings);
        }
        let server = info.addr().to_string();
        let client = match &spec.ca_file {
            Some(path) => {
                let certs = redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(read(path)?),
                };
                Client::build_with_tls(info, certs).map_err(url_error)?
            }
            None => Client::open(info).map_err(url_error)?,
        };
        // No retries inside a call: the flush loop retries on its own schedule, and a
        // call must end within `timeout` whatever happens.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(spec.timeout))
            .set_response_timeout(Some(spec.timeout))
            .set_number_of_retries(0);
        let connection =
            ConnectionManager::new_lazy_with_config(client, config).map_err(url_error)?;
        Ok(Store {
            connection,
            server,
            prefix: spec.prefix.clone(),
            script: Script::new(include_str!("redis.lua")),
            flush_interval: spec.flush_interval,
            timeout: spec.timeout,
        })
    }

    /// The Redis key of a bucket: `<prefix><service>:<limit>:<rate>:<burst>:<caller>`.
    /// The rate and burst are in it as in the local table: a reload that changes a
    /// limit starts fresh budgets, and replicas mid-rollout never mix two rates in one
    /// bucket. The caller goes last, so the colons of a SPIFFE ID are harmless.
    pub fn key(&self, key: &Key) -> String {
        let caller = match &key.caller {
            Caller::Named(id) => format!("={id}"),
            Caller::Others => "*others".to_string(),
            Caller::Service => "*service".to_string(),
        };
        format!(
            "{}{}:{}:{}:{}:{caller}",
            self.prefix, key.service, key.limit, key.rate, key.burst
        )
    }

    /// Sends one batch; returns, per bucket, nanoseconds until it is full again.
    async fn flush(&self, batch: &[Pending]) -> Result<Vec<u64>, redis::RedisError> {
        let mut aheads = Vec::with_capacity(batch.len());
        for chunk in batch.chunks(CHUNK) {
            let mut call = self.script.prepare_invoke();
            for pending in chunk {
                let interval_us = key_interval_micros(&pending.key);
                call.key(self.key(&pending.key))
                    .arg(pending.count)
                    .arg(interval_us);
            }
            let mut connection = self.connection.clone();
            let micros: Vec<i64> = call.invoke_async(&mut connection).await?;
            aheads.extend(
                micros
                    .into_iter()
                    .map(|us| u64::try_from(us).unwrap_or(0).saturating_mul(1000)),
            );
        }
        Ok(aheads)
    }
}

/// A bucket's interval in microseconds, as text with nanosecond precision (the script
/// works in microseconds; very fast rates have intervals under one).
fn key_interval_micros(key: &Key) -> String {
    let nanos = key.rate.interval_nanos();
    format!("{}.{:03}", nanos / 1000, nanos % 1000)
}

fn read(path: &Path) -> Result<Vec<u8>, StoreError> {
    std::fs::read(path).map_err(|source| StoreError::File {
        path: path.display().to_string(),
        source,
    })
}

/// Whether the store answered the last flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    /// Not tried yet, or it answered.
    Up,
    /// It failed: counting locally until it answers again.
    Down,
}

/// Flushes `buckets`' counts to the store forever (spawn it; abort it to stop).
pub async fn sync(buckets: Arc<Buckets>, store: Store, metrics: Arc<Metrics>) {
    let mut tick = tokio::time::interval(store.flush_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reach = Reach::Up;
    let mut retry_at = tokio::time::Instant::now();
    tracing::info!(server = %store.server, "rate limits shared through redis");
    loop {
        tick.tick().await;
        let batch = buckets.take_pending(buckets.now());
        if batch.is_empty() {
            continue;
        }
        if reach == Reach::Down && tokio::time::Instant::now() < retry_at {
            // Counted locally: nothing to replay once the store is back.
            continue;
        }
        let result = match tokio::time::timeout(store.timeout, store.flush(&batch)).await {
            Ok(Ok(aheads)) if aheads.len() == batch.len() => Ok(aheads),
            Ok(Ok(_)) => Err("the script answered a different number of buckets".to_string()),
            Ok(Err(e)) => Err(describe(&e)),
            Err(_) => Err(format!("no answer within {:?}", store.timeout)),
        };
        metrics.store().flush(result.is_ok());
        match result {
            Ok(aheads) => {
                let now = buckets.now();
                for (pending, ahead) in batch.iter().zip(aheads) {
                    buckets.adopt(&pending.key, ahead, now);
                }
                if reach == Reach::Down {
                    tracing::info!(server = %store.server, "rate limit store reachable again: limits are shared across replicas");
                    metrics.store().set_fallback(false);
                    reach = Reach::Up;
                }
            }
            Err(error) => {
                retry_at = tokio::time::Instant::now() + RETRY;
                if reach == Reach::Up {
                    tracing::warn!(server = %store.server, %error, "rate limit store unreachable: each replica limits on its own until it is back");
                    metrics.store().set_fallback(true);
                    reach = Reach::Down;
                }
            }
        }
    }
}

/// A Redis error for the log: its kind and Redis's own message, which never carries
/// the password (the URL is not part of it).
fn describe(e: &redis::RedisError) -> String {
    if e.kind() == redis::ErrorKind::AuthenticationFailed
        || e.code().is_some_and(|c| c == "WRONGPASS" || c == "NOAUTH")
    {
        return format!("authentication failed (check the password): {e}");
    }
    e.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::Rate;

    fn spec(url: &str) -> RedisSpec {
        RedisSpec {
            url: url.to_string(),
            prefix: default_prefix(),
            password_file: None,
            ca_file: None,
            flush_interval: default_flush_interval(),
            timeout: default_timeout(),
        }
    }

    #[test]
    fn settings_problems() {
        assert!(spec("redis://127.0.0.1:6379").problems().is_empty());
        assert!(spec("rediss://cache.internal:6380/2").problems().is_empty());
        let bad = spec("http://:hunter2@127.0.0.1").problems();
        assert_eq!(bad.len(), 1, "{bad:?}");
        assert!(!bad[0].1.contains("hunter2"), "{bad:?}");
        let mut tls = spec("redis://127.0.0.1");
        tls.ca_file = Some("ca.pem".into());
        tls.flush_interval = Duration::ZERO;
        tls.timeout = Duration::from_secs(60);
        let problems: Vec<String> = tls.problems().into_iter().map(|p| p.1).collect();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].contains("only a rediss:// URL"));
        assert!(problems[1].contains("flush_interval"));
        assert!(problems[2].contains("timeout"));
    }

    #[tokio::test]
    async fn keys_and_intervals() {
        let store = Store::new(&spec("redis://127.0.0.1:1")).unwrap();
        let key = |caller| Key {
            service: "ledger".into(),
            limit: "reads".into(),
            caller,
            rate: Rate::parse("200/s").unwrap(),
            burst: 400,
        };
        let named = key(Caller::Named("spiffe://td/ns/a/sa/b".into()));
        assert_eq!(
            store.key(&named),
            "hopwarden:ledger:reads:200/s:400:=spiffe://td/ns/a/sa/b"
        );
        assert_eq!(
            store.key(&key(Caller::Others)),
            "hopwarden:ledger:reads:200/s:400:*others"
        );
        // A caller literally named "others" is not the shared bucket.
        assert_ne!(
            store.key(&key(Caller::Named("*others".into()))),
            store.key(&key(Caller::Others))
        );
        assert_eq!(key_interval_micros(&named), "5000.000");
        let fast = Key {
            rate: Rate::parse("3000000/s").unwrap(),
            ..named
        };
        assert_eq!(key_interval_micros(&fast), "0.333");
    }
}
