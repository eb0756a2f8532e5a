//! The one place the crate reads YAML.
//!
//! Config and policy files are deserialised here so that replacing `serde_yaml`
//! (deprecated upstream) touches this module only. Every error carries the file,
//! line and column a person needs to fix it; errors found after deserialising
//! (a duplicate rule id, a bad pattern) are pointed at with [`locate`].

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::{DeserializeOwned, DeserializeSeed, EnumAccess, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

mod list;

/// A place in a file: `file:line:column`, 1-based.
///
/// `line == 0` means the whole file (an unreadable file, a clash between two
/// files); it displays as the file name alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file as the caller named it.
    pub file: PathBuf,
    /// 1-based line, or 0 for the whole file.
    pub line: usize,
    /// 1-based column in characters, or 0 for the whole file.
    pub column: usize,
}

impl Location {
    /// A position in `file`; `(line, column)` as [`locate`] returns it.
    pub fn new(file: &Path, (line, column): (usize, usize)) -> Self {
        Location {
            file: file.to_path_buf(),
            line,
            column,
        }
    }

    /// The whole of `file`, when no better position is known.
    pub fn file_only(file: &Path) -> Self {
        Location::new(file, (0, 0))
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.file.display())
        } else {
            write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
        }
    }
}

/// A YAML file that is not valid YAML or does not have the expected shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{location}: {message}")]
pub struct YamlError {
    /// Where the problem is.
    pub location: Location,
    /// What is wrong, without the position (the location already says it).
    pub message: String,
}

/// Deserialises `text` (the contents of `file`) into `T`.
///
/// The document must be a single mapping: an empty file or a top-level list is
/// refused with a plain message rather than serde's "invalid type: unit value".
pub fn from_str<T: DeserializeOwned>(text: &str, file: &Path) -> Result<T, YamlError> {
    // First an untyped walk that keeps no tree (a `serde_yaml::Value` cost several
    // times the file's size at 100,000 rules): it reports what is not YAML, a
    // duplicate key anywhere (a typed map would silently keep the last one, so a
    // repeated header condition could hide the first), and a document that is not a
    // mapping (an empty file: a half-written ConfigMap, a truncated copy).
    let de = serde_yaml::Deserializer::from_str(text);
    let found = Walk.deserialize(de).map_err(|e| convert(&e, file))?;
    if found != MAPPING {
        return Err(YamlError {
            location: Location::new(file, first_content(text)),
            message: format!("expected a mapping at the top level, found {found}"),
        });
    }
    serde_yaml::from_str(text).map_err(|e| convert(&e, file))
}

const MAPPING: &str = "a mapping";

/// Items parsed together by [`from_str_listed`]: enough to spread a parser's own
/// cost, few enough that their events stay small.
const BATCH: usize = 64;

/// Deserialises `text` as [`from_str`] does, but a long top-level block list
/// `key:` item by item: `T` is read with `key: []`, and the items, a batch of
/// consecutive ones at a time, are each given to `then` with the index of the
/// batch's first item, on the thread that parsed them (a long list is parsed in
/// parts on every core); the answers come back in the list's order (`Some`).
/// `None`: the document was read whole (its shape is not the plain one, or
/// something in it is wrong), so `T` holds the list itself and every error is the
/// one [`from_str`] gives.
///
/// `serde_yaml` holds every event of a document before deserialising any of it;
/// item by item, memory stays bounded by the largest item (see [`list`]), and
/// `then` can turn each batch into what is kept before the next is parsed.
///
/// The items are deserialised straight into `I`, without [`from_str`]'s walk for
/// repeated keys: `I` must refuse them itself. Derived structs do (serde's
/// "duplicate field"); every map inside `I` must be read with [`unique_keys`].
pub fn from_str_listed<T, I, R>(
    text: &str,
    file: &Path,
    key: &str,
    then: impl Fn(usize, Vec<I>) -> R + Sync,
) -> Result<(T, Option<Vec<R>>), YamlError>
where
    T: DeserializeOwned,
    I: DeserializeOwned,
    R: Send,
{
    let whole = || from_str(text, file).map(|t| (t, None));
    let Some(split) = list::split(text, key) else {
        return whole();
    };
    // The text cannot tell that `key:` is a key of the top-level mapping (it could
    // sit inside a quoted scalar that spans lines): the parsed header must say so.
    let top: serde_yaml::Mapping = match serde_yaml::from_str(&split.header) {
        Ok(top) => top,
        Err(_) => return whole(),
    };
    let empty = serde_yaml::Value::Sequence(Vec::new());
    if top.get(key) != Some(&empty) {
        return whole();
    }
    let Ok(header) = from_str::<T>(&split.header, file) else {
        return whole();
    };
    // A few items at a time (a parser costs some allocations of its own), and a
    // long list in contiguous parts on every core: parsing is most of a load.
    let batches: Vec<&[Range<usize>]> = split.items.chunks(BATCH).collect();
    let then = &then;
    let answers = crate::cores::map_shares(&batches, PARALLEL_MIN_BATCHES, |first, part| {
        // Every batch before this part is full.
        parse_batches(text, first * BATCH, part, then)
    })
    .into_iter()
    // A part that panicked is read again whole, like one that failed.
    .map(|part| part.ok().flatten());
    match answers.collect::<Option<Vec<Vec<R>>>>() {
        Some(answers) => Ok((header, Some(answers.into_iter().flatten().collect()))),
        None => whole(),
    }
}

/// Lists of fewer batches than this are parsed on the calling thread: a thread
/// would cost more than it saves.
const PARALLEL_MIN_BATCHES: usize = 16;

/// `then`'s answers for consecutive batches, each given its items as soon as they
/// are parsed; `None` when one does not parse as exactly its items (the caller
/// then reads the whole document for its error).
fn parse_batches<I: DeserializeOwned, R>(
    text: &str,
    first: usize,
    batches: &[&[Range<usize>]],
    then: impl Fn(usize, Vec<I>) -> R,
) -> Option<Vec<R>> {
    let mut answers = Vec::with_capacity(batches.len());
    let mut first = first;
    for batch in batches {
        let (start, end) = (batch.first()?.start, batch.last()?.end);
        // Straight into the items (a tree first, or `from_str`'s walk, cost a
        // third of a load): `I` refuses repeated keys itself.
        match serde_yaml::from_str::<Vec<I>>(&text[start..end]) {
            Ok(items) if items.len() == batch.len() => answers.push(then(first, items)),
            _ => return None,
        }
        first += batch.len();
    }
    Some(answers)
}

/// Reads an optional map in which every key is written once (`deserialize_with`).
///
/// A typed map keeps the last of a repeated key silently, so a repeated header
/// condition could hide the first; [`from_str`] refuses repeats before typing, and
/// this makes a type refuse them wherever it is read from (see [`from_str_listed`]).
pub fn unique_keys<'de, D, V>(de: D) -> Result<Option<BTreeMap<String, V>>, D::Error>
where
    D: serde::Deserializer<'de>,
    V: Deserialize<'de>,
{
    Option::<UniqueKeys<V>>::deserialize(de).map(|map| map.map(|m| m.0))
}

/// A map whose deserialising refuses a repeated key; see [`unique_keys`].
struct UniqueKeys<V>(BTreeMap<String, V>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for UniqueKeys<V> {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct Keys<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for Keys<V> {
            type Value = UniqueKeys<V>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut keys = BTreeMap::new();
                while let Some((key, value)) = map.next_entry::<String, V>()? {
                    if keys.contains_key(&key) {
                        return Err(serde::de::Error::custom(format!(
                            "duplicate entry with key {key:?}"
                        )));
                    }
                    keys.insert(key, value);
                }
                Ok(UniqueKeys(keys))
            }
        }
        de.deserialize_map(Keys(std::marker::PhantomData))
    }
}

/// Visits a whole document without keeping it; answers what kind of value it is.
#[derive(Clone, Copy)]
struct Walk;

impl<'de> DeserializeSeed<'de> for Walk {
    type Value = &'static str;

    fn deserialize<D: serde::Deserializer<'de>>(self, de: D) -> Result<Self::Value, D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk {
    type Value = &'static str;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok("a boolean")
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok("a number")
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok("a number")
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok("a number")
    }

    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok("a string")
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok("an empty document")
    }

    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok("an empty document")
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, de: D) -> Result<Self::Value, D::Error> {
        de.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element_seed(self)?.is_some() {}
        Ok("a list")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        // The keys of this one mapping only, so memory stays bounded by the widest
        // mapping, not the document.
        let mut keys = serde_yaml::Mapping::new();
        while let Some(key) = map.next_key::<serde_yaml::Value>()? {
            if keys.contains_key(&key) {
                // The words serde_yaml's own mapping uses.
                let message = match &key {
                    serde_yaml::Value::Null => "duplicate entry with null key".to_string(),
                    serde_yaml::Value::Bool(b) => format!("duplicate entry with key `{b}`"),
                    serde_yaml::Value::Number(n) => format!("duplicate entry with key {n}"),
                    serde_yaml::Value::String(s) => format!("duplicate entry with key {s:?}"),
                    _ => "duplicate entry in YAML map".to_string(),
                };
                return Err(serde::de::Error::custom(message));
            }
            keys.insert(key, serde_yaml::Value::Null);
            map.next_value_seed(self)?;
        }
        Ok(MAPPING)
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Self::Value, A::Error> {
        // `!tag value`: rare, so the tagged value is simply read whole.
        let de = serde::de::value::EnumAccessDeserializer::new(data);
        serde_yaml::value::TaggedValue::deserialize(de)?;
        Ok("a tagged value")
    }
}

fn convert(err: &serde_yaml::Error, file: &Path) -> YamlError {
    let mut message = err.to_string();
    let position = match err.location() {
        Some(loc) => {
            // serde_yaml appends " at line X column Y"; the location already says it.
            let suffix = format!(" at line {} column {}", loc.line(), loc.column());
            if let Some(at) = message.find(&suffix) {
                message.replace_range(at..at + suffix.len(), "");
            }
            (loc.line().max(1), loc.column().max(1))
        }
        None => (1, 1),
    };
    YamlError {
        location: Location::new(file, position),
        message,
    }
}

/// The first line that is not blank, a comment, a directive or `---`.
fn first_content(text: &str) -> (usize, usize) {
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let skip = trimmed.is_empty()
            || trimmed.starts_with('#')
            || trimmed.starts_with('%')
            || trimmed.starts_with("---");
        if !skip {
            return (i + 1, line.chars().count() - trimmed.chars().count() + 1);
        }
    }
    (1, 1)
}

/// 1-based `(line, column)` of the `nth` (0-based) occurrence of `needle` as a
/// whole YAML token: not part of a longer scalar, so looking for `/a` does not
/// stop inside `/a/b`.
pub fn locate(text: &str, needle: &str, nth: usize) -> Option<(usize, usize)> {
    find_token(text, needle, 0, text.len())
        .nth(nth)
        .map(|offset| position(text, offset))
}

/// Byte offsets of `needle` as a whole token within `text[from..to]`.
pub fn find_token<'a>(
    text: &'a str,
    needle: &'a str,
    from: usize,
    to: usize,
) -> impl Iterator<Item = usize> + 'a {
    let to = to.min(text.len());
    let from = from.min(to);
    let hay = text.get(from..to).unwrap_or("");
    let matches = if needle.is_empty() {
        None
    } else {
        Some(hay.match_indices(needle))
    };
    matches
        .into_iter()
        .flatten()
        .map(move |(i, _)| from + i)
        .filter(move |&at| {
            let before = text[..at].chars().next_back();
            let after = text[at + needle.len()..].chars().next();
            before.is_none_or(is_boundary) && after.is_none_or(is_boundary)
        })
}

/// Byte offset of `value` written as the value of `key` (`key: value`, quoted or
/// not, block or flow style) at or after byte `from`.
pub fn find_value(text: &str, key: &str, value: &str, from: usize) -> Option<usize> {
    find_token(text, value, from, text.len()).find(|&at| {
        let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
        let before = text[line_start..at].trim_end_matches(['"', '\'', ' ', '\t']);
        let Some(rest) = before.strip_suffix(':') else {
            return false;
        };
        let rest = rest.trim_end_matches(['"', '\'']);
        rest.strip_suffix(key)
            .is_some_and(|r| r.chars().next_back().is_none_or(is_boundary_or_dash))
    })
}

/// Byte offset of the key `key:` at or after byte `from`, before byte `to`.
pub fn find_key(text: &str, key: &str, from: usize, to: usize) -> Option<usize> {
    find_token(text, key, from, to).find(|&at| {
        let rest = text[at + key.len()..].trim_start_matches(['"', '\'']);
        let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
        let before = text[line_start..at].trim_end_matches(['"', '\'']);
        rest.starts_with(':') && before.chars().next_back().is_none_or(is_boundary_or_dash)
    })
}

/// 1-based `(line, column)` of byte `offset`; the column counts characters.
pub fn position(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// Characters that can end a YAML scalar: space, quotes and flow punctuation.
fn is_boundary(c: char) -> bool {
    c.is_whitespace() || matches!(c, '"' | '\'' | '[' | ']' | '{' | '}' | ',' | ':' | '#')
}

fn is_boundary_or_dash(c: char) -> bool {
    is_boundary(c) || c == '-'
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Doc {
        name: String,
        #[serde(default)]
        tags: Vec<String>,
    }

    fn err(text: &str) -> String {
        from_str::<Doc>(text, Path::new("f.yaml"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn errors_carry_location_once() {
        let cases: &[(&str, &str)] = &[
            ("", "f.yaml:1:1: expected a mapping at the top level, found an empty document"),
            ("# only a comment\n", "f.yaml:1:1: expected a mapping at the top level, found an empty document"),
            ("# c\n- a\n", "f.yaml:2:1: expected a mapping at the top level, found a list"),
            ("just text", "f.yaml:1:1: expected a mapping at the top level, found a string"),
            ("name: a\nnope: 1\n", "f.yaml:2:1: unknown field `nope`, expected `name` or `tags`"),
            ("name: a\ntags: {x: 1}\n", "f.yaml:2:7: tags: invalid type: map, expected a sequence"),
            ("tags: []\n", "f.yaml:1:1: missing field `name`"),
            ("name: [a\n", "f.yaml:2:1: did not find expected ',' or ']', while parsing a flow sequence at line 1 column 7"),
            ("name: a\n---\nname: b\n", "f.yaml:1:1: deserializing from YAML containing more than one document is not supported"),
        ];
        for (text, want) in cases {
            assert_eq!(err(text), *want, "{text:?}");
        }
    }

    #[derive(Debug, PartialEq, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Listed {
        name: String,
        #[serde(default)]
        items: Vec<Item>,
    }

    /// A listed item: a map that refuses a repeated key, as `from_str_listed` needs.
    #[derive(Debug, PartialEq, serde::Deserialize)]
    struct Item(#[serde(deserialize_with = "unique_keys")] Option<BTreeMap<String, String>>);

    /// `from_str_listed`, its items put back, as text to compare with `from_str`.
    fn listed(text: &str) -> (String, bool) {
        let path = Path::new("f.yaml");
        let then = |first, items: Vec<Item>| (first, items);
        match from_str_listed::<Listed, Item, _>(text, path, "items", then) {
            Ok((mut doc, parts)) => {
                let split = parts.is_some();
                for (first, items) in parts.into_iter().flatten() {
                    // Each part is told where it starts in the list.
                    assert_eq!(first, doc.items.len(), "{text:?}");
                    doc.items.extend(items);
                }
                (format!("{doc:?}"), split)
            }
            Err(e) => (e.to_string(), false),
        }
    }

    #[test]
    fn listed_reads_what_from_str_reads() {
        // (text, whether it is read item by item)
        let many: String = (0..200).map(|i| format!("- {{a: '{i}'}}\n")).collect();
        let many = format!("name: n\nitems:\n{many}");
        // Long enough to be parsed in parts on several threads (when there are
        // several cores); the bad one fails in its last part.
        let long: String = (0..2100).map(|i| format!("- {{a: '{i}'}}\n")).collect();
        let bad_late = format!("name: n\nitems:\n{long}- a: x\n  a: y\n");
        let long = format!("name: n\nitems:\n{long}");
        let cases: &[(&str, bool)] = &[
            ("name: n\nitems:\n- a: x\n  b: y\n- a: z\n", true),
            ("items:\n  - a: x\n\n  # c\n  - {a: z}\nname: n\n", true),
            (&many, true),
            (&long, true),
            (&bad_late, false),
            ("name: n\nitems: [{a: x}]\n", false),
            ("name: n\nitems:\n", false),
            // Errors, where whole reading says where they are.
            ("name: n\nitems:\n- a: x\n  a: y\n", false),
            ("name: n\nitems:\n- {a: x, b: y, a: z}\n", false),
            ("name: n\nitems:\n- a: x\n- nope\n", false),
            ("name: n\nitems:\n- a: [x\n", false),
            ("name: n\nitems:\n- a: *x\n", false),
            ("name: n\nname: m\nitems:\n- a: x\n", false),
            ("name: n\nitems:\n- a: x\nother: 1\n", false),
            ("items:\n- a: x\n", false),
            // What the text alone cannot tell: `items:` inside a quoted scalar.
            ("name: \"n\nitems:\n- a: x\n  b: y\"\n", false),
            ("name: \"n\nitems:\n- a: x\nother: y\"\n", false),
            ("name: n\nitems:\n- a: 'x\n- a: y'\n", false),
            // Anchors are read whole: an alias after the list could name one in it.
            ("name: &a n\nitems:\n- a: *a\n", false),
        ];
        for (text, split) in cases {
            let whole = match from_str::<Listed>(text, Path::new("f.yaml")) {
                Ok(doc) => format!("{doc:?}"),
                Err(e) => e.to_string(),
            };
            assert_eq!(listed(text), (whole, *split), "{text:?}");
        }
    }

    #[test]
    fn generic_over_types() {
        let m: BTreeMap<String, u32> = from_str("a: 1\nb: 2\n", Path::new("c.yaml")).unwrap();
        assert_eq!(m.len(), 2);
        let d: Doc = from_str("name: x\n", Path::new("c.yaml")).unwrap();
        assert_eq!(d.name, "x");
    }

    #[test]
    fn locates_whole_tokens() {
        let text = "a: /x/y\nb: \"/x\"\nc: [/x, /x2]\n";
        type Case<'a> = (&'a str, usize, Option<(usize, usize)>);
        let cases: &[Case] = &[
            ("/x", 0, Some((2, 5))),
            ("/x", 1, Some((3, 5))),
            ("/x", 2, None),
            ("/x2", 0, Some((3, 9))),
            ("/x/y", 0, Some((1, 4))),
            ("/y", 0, None),
            ("", 0, None),
        ];
        for (needle, nth, want) in cases {
            assert_eq!(locate(text, needle, *nth), *want, "{needle} #{nth}");
        }
    }

    #[test]
    fn finds_values_and_keys() {
        let text = "- id: a\n  description: the b rule\n- id: \"b\"\n- {id: c, scopes: [x]}\n";
        let at = |o: Option<usize>| o.map(|o| position(text, o));
        assert_eq!(at(find_value(text, "id", "a", 0)), Some((1, 7)));
        assert_eq!(at(find_value(text, "id", "b", 0)), Some((3, 8)));
        assert_eq!(at(find_value(text, "id", "c", 0)), Some((4, 8)));
        assert_eq!(at(find_value(text, "id", "a", 7)), None);
        assert_eq!(at(find_key(text, "scopes", 0, text.len())), Some((4, 11)));
        assert_eq!(at(find_key(text, "scopes", 0, 20)), None);
        assert_eq!(position("é\nab", 4), (2, 2));
        assert_eq!(position("éa", 1), (1, 1));
    }

    #[test]
    fn location_display() {
        let p = Path::new("p/a.yaml");
        assert_eq!(Location::new(p, (3, 7)).to_string(), "p/a.yaml:3:7");
        assert_eq!(Location::file_only(p).to_string(), "p/a.yaml");
    }
}
