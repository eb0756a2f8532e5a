//! A delegated caller's actors (RFC 8693 `act`): the values rules and logs read.
//! [`crate::authn::delegation`] reads them from a verified token.

/// One party in a delegation chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// The actor's `sub`.
    pub sub: String,
    /// The actor's `iss`, when the token names one (informational: the token's own
    /// issuer vouches for the whole chain).
    pub iss: Option<String>,
}

/// The actors of a delegated token, outermost (the current caller) first. Never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delegation {
    actors: Vec<Actor>,
}

impl Delegation {
    /// A chain of actors, outermost first; `None` for an empty list.
    pub fn new(actors: Vec<Actor>) -> Option<Self> {
        (!actors.is_empty()).then_some(Delegation { actors })
    }

    /// The outermost actor: the party that is calling, for the token's subject.
    pub fn actor(&self) -> &Actor {
        // `new` and `parse` never build an empty chain.
        &self.actors[0]
    }

    /// Every actor, outermost first; the ones after the first acted earlier.
    pub fn actors(&self) -> &[Actor] {
        &self.actors
    }

    /// How many actors the chain holds (1 for a plain "A acting for B").
    pub fn depth(&self) -> usize {
        self.actors.len()
    }

    /// The chain as logs show it: actor subjects, outermost first, joined by ` < `
    /// (read "acting for whoever acted before"): `customer-bff < web-gateway`.
    pub fn chain(&self) -> String {
        let subs: Vec<&str> = self.actors.iter().map(|a| a.sub.as_str()).collect();
        subs.join(" < ")
    }
}
