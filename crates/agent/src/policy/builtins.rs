//! Builtins the agent supplies to regorus in place of its own.
//!
//! `regex.match`: regorus keeps compiled patterns in a cache but hands out clones of them, and a
//! cloned `regex::Regex` starts with no matching state, so every call rebuilt the lazy DFA and its
//! scratch space (a third of a genpolicy CopyFile decision). Here a pattern is compiled once per
//! policy, with the same size limit as regorus, and the same `Regex` is reused, keeping what it
//! learned. Results and errors are those of the builtin in regorus' non-strict mode: an argument
//! that is not a string or a pattern that does not compile is undefined; a pattern over the size
//! limit is an error.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use regorus::Value;

/// regorus' limit on a compiled pattern (bounds compile and match time).
const REGEX_SIZE_LIMIT: usize = 100 * 1024;
/// Distinct patterns kept per policy; past it the cache starts again.
const MAX_CACHED_PATTERNS: usize = 512;

type Cache = Arc<Mutex<HashMap<String, Option<Arc<regex::Regex>>>>>;

/// Registers the agent's builtins with `engine`.
pub fn register(engine: &mut regorus::Engine) -> anyhow::Result<()> {
    let cache: Cache = Arc::default();
    engine.add_extension(
        "regex.match".to_string(),
        2,
        Box::new(move |args: Vec<Value>| regex_match(&cache, &args)),
    )
}

fn regex_match(cache: &Cache, args: &[Value]) -> anyhow::Result<Value> {
    let (Value::String(pattern), Value::String(value)) = (&args[0], &args[1]) else {
        return Ok(Value::Undefined);
    };
    let re = {
        let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
        match cache.get(pattern.as_ref()) {
            Some(re) => re.clone(),
            None => {
                let re = match regex::RegexBuilder::new(pattern)
                    .size_limit(REGEX_SIZE_LIMIT)
                    .build()
                {
                    Ok(re) => Some(Arc::new(re)),
                    Err(regex::Error::CompiledTooBig(_)) => anyhow::bail!(
                        "regex.match: the pattern exceeds the compiled size limit of {REGEX_SIZE_LIMIT} bytes"
                    ),
                    Err(_) => None,
                };
                if cache.len() >= MAX_CACHED_PATTERNS {
                    cache.clear();
                }
                cache.insert(pattern.to_string(), re.clone());
                re
            }
        }
    };
    Ok(match re {
        Some(re) => Value::Bool(re.is_match(value)),
        None => Value::Undefined,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(expr: &str) -> Value {
        let mut engine = regorus::Engine::new();
        register(&mut engine).unwrap();
        engine
            .add_policy(
                "t.rego".into(),
                format!("package t\nimport rego.v1\nx := {expr}\n"),
            )
            .unwrap();
        engine
            .eval_rule("data.t.x".into())
            .unwrap_or(Value::Undefined)
    }

    #[test]
    fn same_answers_as_the_builtin() {
        assert_eq!(eval(r#"regex.match("^a+b$", "aab")"#), Value::Bool(true));
        assert_eq!(eval(r#"regex.match("^a+b$", "aabc")"#), Value::Bool(false));
        // Reused from the cache within one evaluation.
        assert_eq!(
            eval(r#"[regex.match("^x", "xy"), regex.match("^x", "yx")]"#),
            Value::from_json_str("[true, false]").unwrap()
        );
        // Not a string, or not a pattern: undefined, as regorus' non-strict builtin.
        assert_eq!(eval(r#"regex.match(1, "a")"#), Value::Undefined);
        assert_eq!(eval(r#"regex.match("(", "a")"#), Value::Undefined);
    }

    #[test]
    fn oversized_pattern_is_an_error() {
        let mut engine = regorus::Engine::new();
        register(&mut engine).unwrap();
        engine
            .add_policy(
                "t.rego".into(),
                "package t\nimport rego.v1\nx := regex.match(\"\\\\w{1000}\\\\w{1000}\", \"a\")\n"
                    .into(),
            )
            .unwrap();
        assert!(engine.eval_rule("data.t.x".into()).is_err());
    }
}
