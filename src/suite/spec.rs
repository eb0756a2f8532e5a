//! Suite files as serde reads them (`deny_unknown_fields` throughout: a misspelt
//! `expect` key would otherwise make a case check nothing).

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::principal::PrincipalKind;
use crate::request::Hop;

/// A suite file as serde reads it.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SuiteSpec {
    /// The service cases are about unless a request names another.
    pub service: Option<String>,
    /// The cases, run in file order.
    pub cases: Vec<CaseSpec>,
}

/// One case as written.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CaseSpec {
    /// Shown in the output; unique within the file.
    pub name: String,
    /// Who calls.
    pub caller: CallerSpec,
    /// What they ask for.
    pub request: RequestSpec,
    /// The answer the policy must give.
    pub expect: ExpectSpec,
}

/// `caller: anonymous` or a mapping.
#[derive(Debug)]
pub enum CallerSpec {
    /// No token, no mTLS peer.
    Anonymous,
    /// A token caller (`id` + `issuer`) or an mTLS-only caller (`peer` alone).
    Principal(PrincipalSpec),
}

/// The caller's verified identity, as the authenticator would have produced it.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PrincipalSpec {
    /// `service` (default) or `user`.
    pub kind: Option<PrincipalKind>,
    /// The token's principal claim.
    pub id: Option<String>,
    /// The token's issuer.
    pub issuer: Option<String>,
    /// The token's scopes.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Other token claims.
    #[serde(default)]
    pub claims: Map<String, Value>,
    /// The mTLS peer's SPIFFE ID.
    pub peer: Option<String>,
    /// A delegated token's actors (RFC 8693 `act.sub`), outermost (the caller)
    /// first: `[customer-bff]` is the BFF calling for this principal.
    #[serde(default)]
    pub actors: Vec<String>,
    /// The id of the API key that identified the caller (with `id`, no `issuer`):
    /// the caller is the key's principal, with the key's kind and scopes.
    pub api_key: Option<String>,
}

impl<'de> Deserialize<'de> for CallerSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct CallerVisitor;
        impl<'de> Visitor<'de> for CallerVisitor {
            type Value = CallerSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "`anonymous` or a mapping with kind, id, issuer, scopes, claims, peer, actors",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<CallerSpec, E> {
                match v {
                    "anonymous" => Ok(CallerSpec::Anonymous),
                    _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<CallerSpec, A::Error> {
                PrincipalSpec::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(CallerSpec::Principal)
            }
        }
        d.deserialize_any(CallerVisitor)
    }
}

/// The request as written.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestSpec {
    /// `gateway` or `mesh` (default).
    pub hop: Option<Hop>,
    /// HTTP method, default `GET`.
    pub method: Option<String>,
    /// The `:path` as Envoy would send it (query and escapes included).
    pub path: String,
    /// Request headers (`content-type: application/grpc` makes it a gRPC call).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The destination service, overriding the suite's.
    pub service: Option<String>,
}

/// `allow` or `deny`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Expected {
    /// The request is let through.
    Allow,
    /// The request is refused.
    Deny,
}

/// The expected answer; rule, status and reason are checked when given.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExpectSpec {
    /// `allow` or `deny`.
    pub decision: Expected,
    /// The rule that decides.
    pub rule: Option<String>,
    /// 200 for allow; 400, 401 or 403 for deny.
    pub status: Option<u16>,
    /// The deny reason as decision logs name it (`deny_rule`, `no_matching_rule`, …).
    pub reason: Option<String>,
    /// The ids of exactly the rate limits the request counts against (any order;
    /// `[]`: none). Which limits apply, not whether a budget is spent.
    pub limits: Option<Vec<String>>,
}
