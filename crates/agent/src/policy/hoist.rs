//! Constant rules moved out of the policy text into the data document.
//!
//! genpolicy writes each pod's settings as one big constant rule, `policy_data := { …JSON… }`,
//! appended to its `rules.rego`. regorus evaluates a rule afresh in every evaluation, so that
//! literal (tens of KiB, thousands of objects) would be rebuilt for every decision that reads it,
//! which is most of the cost of a CopyFile or CreateContainer decision.
//!
//! [`hoist`] finds such rules before the text is parsed: a column-0 `NAME := ` (or `NAME = `)
//! followed by exactly one JSON object or array ending its line, where NAME is defined nowhere
//! else in the module. The literal is parsed once into a [`Value`] that goes to the data document
//! under [`DATA_ROOT`]`.<package>.<NAME>`, and the rule becomes `NAME := data.…` on the same
//! line, with the literal's other lines kept as empty lines so that error positions do not move.
//! A JSON literal means the same thing in Rego, so every decision is unchanged; anything that
//! does not fit the pattern exactly is left in the text as it was.

use std::collections::BTreeMap;

use regorus::Value;

/// The data document key the hoisted constants live under.
pub const DATA_ROOT: &str = "kata_agent_constants";

/// A policy text with its constant rules hoisted.
#[derive(Debug)]
pub struct Hoisted {
    /// The rewritten text (same number of lines as the original).
    pub text: String,
    /// `{DATA_ROOT: {<package>: {NAME: value, …}}}`, or `None` when nothing was hoisted.
    pub data: Option<Value>,
}

/// Hoists the constant JSON rules of `text` (see the module documentation).
pub fn hoist(text: &str) -> Hoisted {
    let unchanged = || Hoisted {
        text: text.to_string(),
        data: None,
    };
    let Some(package) = package_of(text) else {
        return unchanged();
    };
    let mut out = String::with_capacity(text.len());
    let mut constants = BTreeMap::new();
    let mut copied = 0;
    let mut line_start = 0;
    while line_start < text.len() {
        let line_end = text[line_start..]
            .find('\n')
            .map_or(text.len(), |i| line_start + i);
        if let Some((name, value_start)) = constant_head(&text[line_start..line_end]) {
            let value_start = line_start + value_start;
            if let Some((value, value_end)) = json_literal(text, value_start) {
                if defined_once(text, name) && !constants.contains_key(name) {
                    let replacement = format!("{name} := data.{DATA_ROOT}.{package}.{name}");
                    out.push_str(&text[copied..line_start]);
                    out.push_str(&replacement);
                    // Keep the line count: one newline for each the literal spanned.
                    let spanned = text[value_start..value_end].matches('\n').count();
                    out.extend(std::iter::repeat_n('\n', spanned));
                    copied = value_end;
                    constants.insert(name.to_string(), value);
                    line_start = value_end;
                    continue;
                }
            }
        }
        line_start = line_end + 1;
    }
    if constants.is_empty() {
        return unchanged();
    }
    out.push_str(&text[copied..]);
    let rules: BTreeMap<Value, Value> = constants
        .into_iter()
        .map(|(k, v)| (Value::from(k), v))
        .collect();
    let mut pkg = BTreeMap::new();
    pkg.insert(Value::from(package), Value::from(rules));
    let mut root = BTreeMap::new();
    root.insert(Value::from(DATA_ROOT), Value::from(pkg));
    Hoisted {
        text: out,
        data: Some(Value::from(root)),
    }
}

/// The module's package when it is a single plain identifier (`package agent_policy`).
fn package_of(text: &str) -> Option<&str> {
    let mut found = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("package ") {
            let name = rest.split('#').next().unwrap_or("").trim();
            if found.is_some() || !is_ident(name) {
                return None;
            }
            found = Some(name);
        }
    }
    found
}

/// `NAME := ` or `NAME = ` at column 0, with `{` or `[` next: the name and the offset of the
/// bracket within the line.
fn constant_head(line: &str) -> Option<(&str, usize)> {
    let name_len = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(line.len());
    let name = &line[..name_len];
    if !is_ident(name) || is_keyword(name) {
        return None;
    }
    let rest = line[name_len..].trim_start_matches([' ', '\t']);
    let rest = rest
        .strip_prefix(":=")
        .or_else(|| rest.strip_prefix('=').filter(|r| !r.starts_with('=')))?;
    let value = rest.trim_start_matches([' ', '\t']);
    if !value.starts_with(['{', '[']) {
        return None;
    }
    Some((name, line.len() - value.len()))
}

/// Exactly one JSON value at `start`, followed on its last line only by blanks or a comment:
/// the value and the offset of that line's end.
fn json_literal(text: &str, start: usize) -> Option<(Value, usize)> {
    let mut values =
        serde_json::Deserializer::from_str(&text[start..]).into_iter::<serde::de::IgnoredAny>();
    values.next()?.ok()?;
    let end = start + values.byte_offset();
    let line_end = text[end..].find('\n').map_or(text.len(), |i| end + i);
    let trailer = text[end..line_end].trim();
    if !(trailer.is_empty() || trailer.starts_with('#')) {
        return None;
    }
    // A body or an `else` on the following line would make this a conditional rule.
    let next = text[line_end..]
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty());
    if next.is_some_and(|l| l.starts_with('{') || l.starts_with("if") || l.starts_with("else")) {
        return None;
    }
    let value = Value::from_json_str(&text[start..end]).ok()?;
    Some((value, line_end))
}

/// Whether `name` begins exactly one line of `text` (as a rule head) and no `default` names it.
fn defined_once(text: &str, name: &str) -> bool {
    let mut heads = 0;
    for line in text.lines() {
        let line = line.strip_prefix("default ").unwrap_or(line);
        if let Some(rest) = line.strip_prefix(name) {
            if !rest.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
                heads += 1;
            }
        }
    }
    heads == 1
}

fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_keyword(s: &str) -> bool {
    matches!(
        s,
        "package" | "import" | "default" | "not" | "some" | "every" | "with" | "as" | "else"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hoists_a_json_rule_and_keeps_line_numbers() {
        let text = "package p\n\nx := {\n  \"a\": [1, 2],\n  \"b\": {\"c\": null}\n}\n\nallow { x.a[0] == 1 }\n";
        let h = hoist(text);
        assert_eq!(h.text.lines().count(), text.lines().count());
        assert!(h
            .text
            .contains(&format!("x := data.{DATA_ROOT}.p.x\n\n\n\n\nallow")));
        let data = h.data.unwrap();
        assert_eq!(
            data[DATA_ROOT]["p"]["x"],
            Value::from_json_str(r#"{"a":[1,2],"b":{"c":null}}"#).unwrap()
        );
    }

    #[test]
    fn leaves_what_does_not_fit() {
        for text in [
            // Not JSON: a set, a reference, a trailing expression.
            "package p\nx := {1, 2}\n",
            "package p\nx := {\"a\": input.y}\n",
            "package p\nx := [1] ; y\n",
            "package p\nx := [1]\n  if { true }\n",
            // Defined twice, or with a default.
            "package p\nx := {\"a\": 1}\nx := {\"a\": 2} { false }\n",
            "package p\ndefault x := {}\nx := {\"a\": 1}\n",
            // Indented, or a scalar.
            "package p\n  x := {\"a\": 1}\n",
            "package p\nx := 1\n",
            // No package, or a dotted one.
            "x := {\"a\": 1}\n",
            "package a.b\nx := {\"a\": 1}\n",
        ] {
            let h = hoist(text);
            assert!(h.data.is_none(), "{text}");
            assert_eq!(h.text, text);
        }
    }

    #[test]
    fn comment_after_the_literal_is_kept_out() {
        let h = hoist("package p\nx := [\"a\"] # note\ny := 1\n");
        assert_eq!(
            h.text,
            format!("package p\nx := data.{DATA_ROOT}.p.x\ny := 1\n")
        );
    }
}
