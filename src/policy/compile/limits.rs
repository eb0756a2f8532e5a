//! A policy's `limits:`, compiled with its rules and matched with the rules' own
//! `from` / `to` / `when` code, so a limit selects requests exactly as a rule would.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::super::eval::EvalInput;
use super::super::spec::{Effect, LimitSpec, Mode};
use super::{FileContext, FromClause, Rule, ServicePolicy, When};
use crate::limits::{Caller, LimitHit, Per, Rate, MAX_COUNT};

/// One compiled limit.
#[derive(Debug)]
pub struct Limit {
    pub(in crate::policy) id: Arc<str>,
    pub(in crate::policy) service: Arc<str>,
    pub(in crate::policy) description: Option<String>,
    /// `from` / `to` / `when` as a deny rule compiles them: a limit with no `from`
    /// counts anonymous callers too, a `GET` also counts `HEAD`, and paths match
    /// whatever their case, so a limit is no easier to slip past than a deny rule.
    pub(in crate::policy) selector: Rule,
    pub(in crate::policy) rate: Rate,
    pub(in crate::policy) burst: u64,
    pub(in crate::policy) per: Per,
    /// Named by some rule's `limits:`: then only those rules' allows count.
    pub(in crate::policy) attached: bool,
}

impl Limit {
    /// The limit's id, unique within its policy.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Why the limit exists, if the author said.
    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }

    /// The sustained rate.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// Requests that may arrive at once.
    pub fn burst(&self) -> u64 {
        self.burst
    }

    /// Whose budget a request spends.
    pub fn per(&self) -> Per {
        self.per
    }

    /// Whether only the allows of rules that name it count.
    pub fn attached(&self) -> bool {
        self.attached
    }

    /// Who the limit is about.
    pub fn from(&self) -> &FromClause {
        &self.selector.from
    }

    /// Its `from` / `to` / `when`, as the deny rule they are compiled as.
    pub fn selector(&self) -> &Rule {
        &self.selector
    }
}

impl ServicePolicy {
    /// The policy's limits, in file order.
    pub fn limits(&self) -> &[Limit] {
        &self.limits
    }

    /// The ids of the allow rules that name limit number `index` in `limits:`.
    pub fn rules_naming(&self, index: usize) -> Vec<&str> {
        self.allow
            .iter()
            .filter(|r| r.limits.contains(&index))
            .map(|r| &*r.id)
            .collect()
    }

    /// The limits a request that allow rule `rule` let through counts against, and
    /// which bucket of each. Called once per evaluation (not per cache hit): the
    /// decision keeps the answer.
    pub fn limits_for(&self, rule: &str, input: &EvalInput<'_>) -> Vec<LimitHit> {
        if self.limits.is_empty() {
            return Vec::new();
        }
        let named_by_rule: &[usize] = self
            .naming_limits
            .get(rule)
            .map_or(&[], |&i| &self.allow[i].limits);
        self.limits
            .iter()
            .enumerate()
            .filter(|(i, limit)| !limit.attached || named_by_rule.contains(i))
            .filter(|(_, limit)| limit.selector.matches_except_scopes(input))
            .map(|(_, limit)| LimitHit {
                service: limit.service.clone(),
                limit: limit.id.clone(),
                caller: self.caller(limit.per, input),
                rate: limit.rate,
                burst: limit.burst,
            })
            .collect()
    }

    /// A caller the policy names literally keeps a bucket of its own; everyone else
    /// shares `others`, so the number of buckets is bounded by the policy text.
    fn caller(&self, per: Per, input: &EvalInput<'_>) -> Caller {
        if per == Per::Service {
            return Caller::Service;
        }
        let Some(p) = input.principal else {
            return Caller::Others;
        };
        let peer = p.peer.as_ref().map(|peer| peer.as_str());
        [Some(p.id.as_str()), peer]
            .into_iter()
            .flatten()
            .find_map(|id| self.named_callers.get(id))
            .map_or(Caller::Others, |id| Caller::Named(id.clone()))
    }
}

/// Every principal or peer id the policy's rules and limits name without a wildcard.
pub(super) fn named_callers<'a>(rules: impl Iterator<Item = &'a Rule>) -> HashSet<Arc<str>> {
    let mut names = HashSet::new();
    for rule in rules {
        if let FromClause::Authenticated(callers) = &rule.from {
            let ids = [&callers.principals, &callers.peers];
            for pattern in ids.into_iter().flatten().flatten() {
                if let Some(id) = pattern.exact_shared() {
                    names.insert(id);
                }
            }
        }
    }
    names
}

impl FileContext<'_> {
    /// Compiles `specs`, whose regions follow the `first` rules' ones.
    pub(super) fn limits(
        &mut self,
        service: &str,
        first: usize,
        specs: Vec<LimitSpec>,
    ) -> Vec<Limit> {
        let service: Arc<str> = Arc::from(service);
        let mut seen: HashMap<String, ()> = HashMap::new();
        let mut out = Vec::with_capacity(specs.len());
        for (n, spec) in specs.into_iter().enumerate() {
            let index = first + n;
            let id = spec.id;
            let at_id = Some(self.region(index).0);
            if !super::is_name(&id, |b| b.is_ascii_alphanumeric()) {
                let message = format!(
                    "invalid limit id {id:?}: use letters, digits, '.', '_' and '-', starting with a letter or digit"
                );
                self.error(at_id, message);
            }
            if seen.insert(id.clone(), ()).is_some() {
                self.error(at_id, format!("duplicate limit id {id:?}"));
            }
            let before = self.errors.len();
            let from = self.from(index, &id, spec.from, true);
            let anonymous = matches!(from, FromClause::Anonymous);
            let to = spec.to.map(|clauses| self.to(index, &id, clauses, true));
            let when = match spec.when {
                Some(when) => self.when(index, &id, when, anonymous),
                None => When::default(),
            };
            // The shared checks speak of rules; these are limits.
            let rule_prefix = format!("rule {id:?}:");
            for err in &mut self.errors[before..] {
                if let Some(rest) = err.message.strip_prefix(&rule_prefix) {
                    err.message = format!("limit {id:?}:{rest}");
                }
            }
            let rate = match Rate::parse(spec.rate.trim()) {
                Ok(rate) => rate,
                Err(e) => {
                    let at = self
                        .value_in(index, &spec.rate)
                        .or(self.key_in(index, "rate"));
                    self.error(at, format!("limit {id:?}: {e}"));
                    Rate {
                        count: 1,
                        period: std::time::Duration::from_secs(1),
                    }
                }
            };
            let burst = spec.burst.unwrap_or(rate.count);
            if burst == 0 || burst > MAX_COUNT {
                let at = self.key_in(index, "burst");
                let message = format!(
                    "limit {id:?}: invalid burst {burst}: use 1 to 1000000000 (or omit it for the rate's count)"
                );
                self.error(at, message);
            }
            let per = match spec.per.as_deref() {
                None => Per::Principal,
                Some(raw) => Per::parse(raw).unwrap_or_else(|| {
                    let at = self.value_in(index, raw).or(self.key_in(index, "per"));
                    let message =
                        format!("limit {id:?}: unknown per {raw:?}: use principal or service");
                    self.error(at, message);
                    Per::Principal
                }),
            };
            let id: Arc<str> = id.into();
            out.push(Limit {
                id: id.clone(),
                service: service.clone(),
                description: spec.description,
                selector: Rule {
                    id,
                    description: None,
                    effect: Effect::Deny,
                    mode: Mode::Enforce,
                    from,
                    to: to.map(Into::into),
                    scopes: Arc::from(Vec::new()),
                    when,
                    limits: Box::default(),
                },
                rate,
                burst,
                per,
                attached: false,
            });
        }
        out
    }

    /// Resolves each rule's `limits:` names (`named`: rule index, id, effect, names) to
    /// indices into `limits`, marking those limits attached.
    pub(super) fn attach(
        &mut self,
        named: Vec<(usize, String, Effect, Vec<String>)>,
        limits: &mut [Limit],
    ) -> HashMap<usize, Vec<usize>> {
        let mut out = HashMap::new();
        for (index, id, effect, names) in named {
            if effect == Effect::Deny {
                let at = self.key_in(index, "limits");
                let message = format!("rule {id:?}: only allow rules can name limits (a denied request spends no budget)");
                self.error(at, message);
                continue;
            }
            if names.is_empty() {
                let at = self.key_in(index, "limits");
                self.error(at, format!("rule {id:?}: limits is empty; omit it instead"));
            }
            let mut indices = Vec::with_capacity(names.len());
            for name in names {
                match limits.iter().position(|l| *l.id == *name) {
                    Some(i) => {
                        limits[i].attached = true;
                        indices.push(i);
                    }
                    None => {
                        let at = self.value_in(index, &name).or(self.key_in(index, "limits"));
                        let message = format!(
                            "rule {id:?}: unknown limit {name:?} (limits are defined under `limits:` in the same policy file)"
                        );
                        self.error(at, message);
                    }
                }
            }
            out.insert(index, indices);
        }
        out
    }
}

#[cfg(test)]
mod tests;
