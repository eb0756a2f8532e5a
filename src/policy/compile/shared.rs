//! Compiled parts that many rules of a file write alike, compiled once and shared.

use std::collections::HashMap;
use std::sync::Arc;

use super::{ActionClause, FileContext};
use crate::policy::spec::ClauseSpec;

/// What many rules of a file write alike, compiled once and shared: a shared
/// platform API's thousands of per-caller rules differ in the caller alone. (A
/// long file's rules are compiled a batch at a time, each batch sharing within
/// itself: see `compile/parts.rs`.)
#[derive(Default)]
pub(super) struct Shared {
    /// Compiled `to` lists by what was written (and whether for a deny rule); only
    /// lists that compiled without an error, so each bad one is still reported.
    to: HashMap<(bool, Vec<ClauseSpec>), Arc<[ActionClause]>>,
    scopes: HashMap<Vec<String>, Arc<[String]>>,
}

impl FileContext<'_> {
    /// [`FileContext::to`], once for all the rules that write the same `to`.
    pub(super) fn shared_to(
        &mut self,
        index: usize,
        id: &str,
        clauses: Vec<ClauseSpec>,
        deny: bool,
    ) -> Arc<[ActionClause]> {
        let key = (deny, clauses);
        if let Some(to) = self.shared.to.get(&key) {
            return to.clone();
        }
        let errors = self.errors.len();
        let to: Arc<[ActionClause]> = self.to(index, id, key.1.clone(), deny).into();
        if self.errors.len() == errors {
            self.shared.to.insert(key, to.clone());
        }
        to
    }

    pub(super) fn shared_scopes(&mut self, scopes: Vec<String>) -> Arc<[String]> {
        if let Some(shared) = self.shared.scopes.get(&scopes) {
            return shared.clone();
        }
        let shared: Arc<[String]> = scopes.as_slice().into();
        self.shared.scopes.insert(scopes, shared.clone());
        shared
    }
}
