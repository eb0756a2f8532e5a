//! Policy files as serde reads them; [`super::compile`] validates and compiles them.
//!
//! Every struct denies unknown fields: a misspelt key (`principal:` for
//! `principals:`) would otherwise silently widen or disable a rule.
//! Lists are `Option` so that "omitted" (match anything) and "empty" (a mistake
//! that would match nothing) can be told apart at compile time.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::principal::{CredentialType, PrincipalKind};
use crate::request::Hop;

/// Whether a rule allows or denies what it matches.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    Deserialize,
    serde::Serialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    /// The rule grants access (the default).
    #[default]
    Allow,
    /// The rule refuses access, whatever any allow rule says.
    Deny,
}

impl Effect {
    /// The lowercase name used in policy files and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Effect::Allow => "allow",
            Effect::Deny => "deny",
        }
    }
}

/// Whether a policy or rule is enforced or only trialled.
///
/// A `dry-run` deny rule that matches does not deny: evaluation goes on as if it had
/// not matched and the result records it as a would-deny. A `dry-run` policy is
/// evaluated normally and the engine turns a final denial into an allow marked with
/// `x-hopwarden-dry-run`, so allow rules can be trialled too.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    Deserialize,
    serde::Serialize,
    schemars::JsonSchema,
)]
pub enum Mode {
    /// The default: decisions take effect.
    #[default]
    #[serde(rename = "enforce")]
    Enforce,
    /// Decisions are recorded, not enforced.
    #[serde(rename = "dry-run")]
    DryRun,
}

/// One policy file: the rules protecting one service.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    /// The protected service's name.
    pub service: String,
    /// Token audiences the service accepts; default `[service]`.
    pub audiences: Option<Vec<String>>,
    /// `enforce` (default) or `dry-run` for the whole policy.
    #[serde(default)]
    pub mode: Mode,
    /// Rules in file order; none means everything is denied.
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
    /// Rate limits on what the rules allow.
    #[serde(default)]
    pub limits: Vec<LimitSpec>,
}

/// One rule as written.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Unique across the policy set; shown in logs and `x-hopwarden-rule`.
    pub id: String,
    /// Why the rule exists, for people reading decisions.
    pub description: Option<String>,
    /// `allow` (default) or `deny`.
    #[serde(default)]
    pub effect: Effect,
    /// `enforce` (default) or `dry-run` (deny rules only).
    #[serde(default)]
    pub mode: Mode,
    /// Who the rule is about; omitted means any authenticated caller.
    pub from: Option<FromSpec>,
    /// Which actions the rule is about (any clause); omitted means every action.
    pub to: Option<Vec<ClauseSpec>>,
    /// Scopes the caller's token must all carry (allow rules only).
    pub scopes: Option<Vec<String>>,
    /// Extra conditions on the hop, headers and claims.
    pub when: Option<WhenSpec>,
    /// Ids of this policy's limits that the requests this rule allows count against
    /// (allow rules only).
    pub limits: Option<Vec<String>>,
}

/// One rate limit as written: `from`, `to` and `when` select requests as in rules.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitSpec {
    /// Unique within the policy; shown in logs, metrics and the 429's fields.
    pub id: String,
    /// Why the limit exists, for people reading decisions.
    pub description: Option<String>,
    /// Whose requests count; omitted means every caller.
    pub from: Option<FromSpec>,
    /// Which actions count (any clause); omitted means every action.
    pub to: Option<Vec<ClauseSpec>>,
    /// Extra conditions on the hop, headers and claims.
    pub when: Option<WhenSpec>,
    /// `N/s`, `N/m` or `N/h`.
    pub rate: String,
    /// Requests that may arrive at once; default the rate's N.
    pub burst: Option<u64>,
    /// `principal` (default: a budget per caller) or `service` (one shared budget).
    pub per: Option<String>,
}

/// The `from` block: each named field must match.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FromSpec {
    /// Principal ids, exact or `*`-per-segment globs.
    pub principals: Option<Vec<String>>,
    /// mTLS peer SPIFFE IDs, exact or globs.
    pub peers: Option<Vec<String>>,
    /// `service` and/or `user`.
    pub kinds: Option<Vec<PrincipalKind>>,
    /// Token issuers, exact.
    pub issuers: Option<Vec<String>>,
    /// `true`: the rule is about callers with no credential at all.
    pub anonymous: Option<bool>,
    /// Which credentials may identify the caller: `jwt`, `api_key`, `mtls` (the
    /// peer alone); e.g. `[jwt]` keeps long-lived API keys off an endpoint.
    pub credentials: Option<Vec<CredentialType>>,
    /// The rule is about delegated calls (RFC 8693 `act`): the fields above match the
    /// outermost actor, these match the token's subject (docs/delegation.md).
    pub acting_for: Option<ActingForSpec>,
    /// `true`: only delegated calls; `false`: only direct ones. Omitted: allow rules
    /// take direct calls only unless `acting_for` is named; deny rules and limits
    /// take both, matching any party of the chain.
    pub delegated: Option<bool>,
}

/// `from.acting_for`: whom the actor is acting for (the token's subject).
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ActingForSpec {
    /// Subject principal ids, exact or `*`-per-segment globs.
    pub principals: Option<Vec<String>>,
    /// The subject's kind: `service` and/or `user`.
    pub kinds: Option<Vec<PrincipalKind>>,
    /// The most actors the chain may hold for this rule to match (the issuer's
    /// `max_delegation_depth` bounds it first).
    pub max_depth: Option<usize>,
}

/// One `to` clause: each named field must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClauseSpec {
    /// HTTP methods, case-insensitive.
    pub methods: Option<Vec<String>>,
    /// Path patterns.
    pub paths: Option<Vec<String>>,
    /// gRPC method patterns (`pkg.Service/Method`, `pkg.Service/*`).
    pub grpc: Option<Vec<String>>,
}

/// The `when` block: each named condition must hold.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WhenSpec {
    /// `gateway` or `mesh`.
    pub hop: Option<Hop>,
    /// Header name to accepted values.
    #[serde(default, deserialize_with = "crate::yaml::unique_keys")]
    pub headers: Option<BTreeMap<String, Vec<String>>>,
    /// Claim name to accepted values.
    #[serde(default, deserialize_with = "crate::yaml::unique_keys")]
    pub claims: Option<BTreeMap<String, Vec<String>>>,
}
