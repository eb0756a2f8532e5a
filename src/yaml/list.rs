//! Splitting a long top-level block list out of a YAML document, item by item.
//!
//! `serde_yaml` 0.9 holds every event of a document before deserialising it
//! (about 100 bytes an event, some 30 events a rule): 400 MB for a file of
//! 100,000 rules. Parsed item by item, only one item's events are held at a time.
//!
//! Splitting is a fast path, never a second meaning: it is taken only for the
//! plain shape (`key:` alone on a line at column 0, then `- ` items), and
//! [`super::from_str_listed`] checks what the text alone cannot tell (that `key:`
//! really is a key of the top-level mapping, that each item is exactly one list
//! element) and parses the whole document instead whenever anything fails.

use std::ops::Range;

/// A document with its top-level block list `key:` taken out.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Split {
    /// The document with the list replaced by `key: []` and its lines left empty,
    /// so that every other line keeps its number.
    pub header: String,
    /// Each item's byte range in the original text, from its `-` line to the next.
    pub items: Vec<Range<usize>>,
}

/// Splits the top-level block list `key:` out of `text`, or `None` when the text
/// is not of the plain shape (then the whole document must be parsed).
///
/// Refused shapes: several documents or directives (`---`, `...`, `%`), complex
/// keys (`?`), anchors (an `&` anywhere: a later alias could refer to an anchor in
/// another part), a top-level line that is neither a plain `name:` key, a comment
/// nor blank (a flow mapping or a quoted scalar spanning lines), `key:` written
/// more than once or with a value on its line, an item line less indented than the
/// items, tabs as indentation, and an empty list.
pub(super) fn split(text: &str, key: &str) -> Option<Split> {
    if text.starts_with('\u{feff}') || text.contains('&') {
        return None;
    }
    let lines = lines(text);
    let mut list_line = None;
    for (n, line) in lines.iter().enumerate() {
        let body = &text[line.clone()];
        let Some(first) = body.bytes().next() else {
            continue;
        };
        match first {
            b'-' if body.starts_with("---") => return None,
            b' ' | b'#' | b'-' => {}
            _ if !is_plain_key(body) => return None,
            _ if body.starts_with(key) && body[key.len()..].starts_with(':') => {
                if list_line.is_some() || !is_bare_key(&body[key.len() + 1..]) {
                    return None;
                }
                list_line = Some(n);
            }
            _ => {}
        }
    }
    let list_line = list_line?;
    // The list: every line after `key:` up to the first line at column 0 that is
    // not blank, a comment or (items at column 0) an item.
    let mut indent = None;
    let mut items: Vec<Range<usize>> = Vec::new();
    let mut end_line = lines.len();
    for (n, line) in lines.iter().enumerate().skip(list_line + 1) {
        let body = &text[line.clone()];
        let spaces = body.len() - body.trim_start_matches(' ').len();
        let rest = &body[spaces..];
        if rest.is_empty() || rest.starts_with('#') {
            continue;
        }
        if rest.starts_with('\t') {
            return None;
        }
        let is_item = rest.starts_with('-') && (rest.len() == 1 || rest[1..].starts_with(' '));
        let ind = *indent.get_or_insert(spaces);
        if spaces == 0 && !(is_item && ind == 0) {
            end_line = n;
            break;
        }
        if is_item && spaces == ind {
            if let Some(last) = items.last_mut() {
                last.end = line.start;
            }
            items.push(line.start..text.len());
        } else if spaces <= ind || items.is_empty() {
            return None;
        }
    }
    let end = lines.get(end_line).map_or(text.len(), |l| l.start);
    if let Some(last) = items.last_mut() {
        last.end = end;
    }
    if items.is_empty() {
        return None;
    }
    let start = lines[list_line].start;
    let mut header = String::with_capacity(start + (text.len() - end) + lines.len());
    header.push_str(&text[..start]);
    header.push_str(key);
    header.push_str(": []");
    let blanked = text[lines[list_line].end..end].matches('\n').count();
    header.extend(std::iter::repeat_n('\n', blanked));
    header.push_str(&text[end..]);
    Some(Split { header, items })
}

/// Each line's byte range, without its line break.
fn lines(text: &str) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    for line in text.split_inclusive('\n') {
        let body = line.trim_end_matches(['\n', '\r']);
        out.push(start..start + body.len());
        start += line.len();
    }
    out
}

/// `name:` then a space, a line end or nothing: a plain top-level key.
fn is_plain_key(line: &str) -> bool {
    let name_len = line
        .bytes()
        .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        .count();
    name_len > 0
        && line.as_bytes()[0].is_ascii_alphabetic()
        && line[name_len..].starts_with(':')
        && line[name_len + 1..]
            .bytes()
            .next()
            .is_none_or(|b| b == b' ')
}

/// What may follow `key:` for the list to start on the next line: nothing, or
/// spaces and a comment.
fn is_bare_key(rest: &str) -> bool {
    let trimmed = rest.trim_start_matches(' ');
    trimmed.is_empty() || (trimmed.starts_with('#') && trimmed.len() < rest.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(text: &str) -> Option<(String, Vec<&str>)> {
        split(text, "rules").map(|s| (s.header, s.items.iter().map(|r| &text[r.clone()]).collect()))
    }

    #[test]
    fn splits_block_lists_keeping_line_numbers() {
        let text = "service: a\nrules:\n- id: x\n  scopes: [s]\n\n# c\n- id: y\nmode: enforce\n";
        let (header, items) = parts(text).unwrap();
        assert_eq!(header, "service: a\nrules: []\n\n\n\n\n\nmode: enforce\n");
        assert_eq!(header.lines().count(), text.lines().count());
        assert_eq!(items, ["- id: x\n  scopes: [s]\n\n# c\n", "- id: y\n"]);

        let text = "rules:  # the rules\n  - id: x\n    from: {principals: [p]}\n  -\n    id: y\n";
        let (header, items) = parts(text).unwrap();
        assert_eq!(header, "rules: []\n\n\n\n\n");
        assert_eq!(
            items,
            [
                "  - id: x\n    from: {principals: [p]}\n",
                "  -\n    id: y\n"
            ]
        );

        let text = "rules:\r\n- id: x\r\nservice: a\r\n";
        let (header, items) = parts(text).unwrap();
        assert_eq!(header, "rules: []\n\nservice: a\r\n");
        assert_eq!(items, ["- id: x\r\n"]);
    }

    #[test]
    fn refuses_what_is_not_the_plain_shape() {
        let refused = [
            "service: a\n",
            "rules: []\n",
            "rules:\n",
            "rules: # only a comment\n\n",
            "rules:#c\n- id: x\n",
            "rules:\n- id: x\nrules:\n- id: y\n",
            "---\nrules:\n- id: x\n",
            "rules:\n- id: x\n...\n",
            "%YAML 1.2\nrules:\n- id: x\n",
            "? rules\n: - id: x\n",
            "\"rules\":\n- id: x\n",
            "{service: a,\nrules:\n- id: x\n}\n",
            "description: \"a\nrules:\n- id: x\n\"\n",
            "audiences: &a [x]\nrules:\n- id: x\n",
            "rules:\n  - id: x\n - id: y\n",
            "rules:\n  id: x\n",
            "rules:\n\t- id: x\n",
            "\u{feff}rules:\n- id: x\n",
        ];
        for text in refused {
            assert_eq!(split(text, "rules"), None, "{text:?}");
        }
    }
}
