//! `hopwarden schema policy|suite|config`: the JSON Schema of each file hopwarden reads.
//!
//! The schemas are derived (schemars) from the same serde structs that read the files,
//! so a key added to a `*Spec` struct appears here with its `///` text as description;
//! `deny_unknown_fields` becomes `additionalProperties: false`, so editors flag a
//! misspelt key as the loader would. Where serde reads a field through a function of
//! its own (durations, one-or-many lists, `caller: anonymous`), the schema of what it
//! accepts is written by hand below. The committed copies live in `schemas/`
//! (`scripts/schemas.sh` rewrites them; tests/schemas.rs keeps them current).

use std::borrow::Cow;
use std::process::ExitCode;

use schemars::generate::SchemaSettings;
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};

use crate::config::ConfigSpec;
use crate::policy::PolicySpec;
use crate::suite::{CallerSpec, PrincipalSpec, SuiteSpec};

/// Which file's schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SchemaKind {
    /// A policy file (`policies/<service>.yaml`).
    Policy,
    /// A policy test suite (`policies/<service>_test.yaml`).
    Suite,
    /// The server config (`hopwarden.yaml`).
    Config,
}

impl SchemaKind {
    /// Every kind, in the order `scripts/schemas.sh` writes them.
    pub const ALL: [SchemaKind; 3] = [SchemaKind::Policy, SchemaKind::Suite, SchemaKind::Config];

    /// The lowercase name: the command's argument and the file's stem in `schemas/`.
    pub fn as_str(self) -> &'static str {
        match self {
            SchemaKind::Policy => "policy",
            SchemaKind::Suite => "suite",
            SchemaKind::Config => "config",
        }
    }

    /// The committed file's name in `schemas/`.
    pub fn file_name(self) -> String {
        format!("{}.schema.json", self.as_str())
    }
}

/// The schema as pretty-printed JSON with a final newline (what the command prints and
/// what `schemas/` holds).
pub fn render(kind: SchemaKind) -> String {
    // Draft 7: the newest draft that every editor's YAML support reads
    // (yaml-language-server, JetBrains, check-jsonschema).
    let generator = SchemaSettings::draft07().into_generator();
    let (mut schema, title) = match kind {
        SchemaKind::Policy => (
            generator.into_root_schema_for::<PolicySpec>(),
            "hopwarden policy file",
        ),
        SchemaKind::Suite => (
            generator.into_root_schema_for::<SuiteSpec>(),
            "hopwarden policy test suite",
        ),
        SchemaKind::Config => (
            generator.into_root_schema_for::<ConfigSpec>(),
            "hopwarden server config",
        ),
    };
    schema.insert("title".into(), title.into());
    let mut text = serde_json::to_string_pretty(&schema).expect("a schema is plain JSON");
    text.push('\n');
    text
}

/// `hopwarden schema KIND`: prints the schema.
pub fn run(kind: SchemaKind) -> ExitCode {
    print!("{}", render(kind));
    ExitCode::SUCCESS
}

/// A duration read by `humantime_serde`: `250ms`, `10s`, `5m`, `1h 30m`.
pub struct HumanDuration;

impl JsonSchema for HumanDuration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "A duration: a number and a unit (ms, s, m, h, d), e.g. `250ms`, `10s`, `5m`, `1h 30m`.",
            // A number then a unit, repeated; humantime accepts more spellings
            // (`5min`, `2hours`), all starting this way.
            "pattern": "^\\s*[0-9]+\\s*[a-zµ]+(\\s*[0-9]+\\s*[a-zµ]+)*\\s*$"
        })
    }
}

/// A string or a list of strings (config.rs reads both as a list).
pub fn one_or_many_strings(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "anyOf": [
            {"type": "string"},
            {"type": "array", "items": {"type": "string"}}
        ]
    })
}

/// `caller:` is `anonymous` or a principal mapping (its `Deserialize` is hand-written).
impl JsonSchema for CallerSpec {
    fn schema_name() -> Cow<'static, str> {
        "CallerSpec".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "`anonymous` (no token, no mTLS peer) or the caller's verified identity.",
            "anyOf": [
                {"type": "string", "enum": ["anonymous"]},
                generator.subschema_for::<PrincipalSpec>()
            ]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_schema_names_its_draft_and_denies_unknown_top_level_keys() {
        for kind in SchemaKind::ALL {
            let schema: serde_json::Value = serde_json::from_str(&render(kind)).unwrap();
            assert_eq!(
                schema["$schema"], "http://json-schema.org/draft-07/schema#",
                "{kind:?}"
            );
            assert_eq!(schema["additionalProperties"], false, "{kind:?}");
        }
    }

    #[test]
    fn durations_are_strings_and_caller_may_be_anonymous() {
        let config: serde_json::Value = serde_json::from_str(&render(SchemaKind::Config)).unwrap();
        assert_eq!(config["definitions"]["Duration"]["type"], "string");
        let suite = render(SchemaKind::Suite);
        assert!(suite.contains("\"anonymous\""), "{suite}");
    }
}
