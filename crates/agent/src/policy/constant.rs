//! Request rules that only a `default` defines.
//!
//! Most rules of a genpolicy policy (and every rule of the kata-opa samples) are nothing but
//! `default <Request> := true` or `false`: their value never depends on the input or the state.
//! They are found once, when the policy is loaded, from the parsed modules, and decided without
//! the interpreter. That is the same answer regorus would give (a default with no other
//! definition is the rule's value, and a default prints nothing), for none of its per-evaluation
//! cost: the interpreter walks and allocates for every evaluation, and after an idle spell that
//! costs tens of microseconds of cache misses even for a constant.
//!
//! A rule counts as constant only when, across every module, the one definition of
//! `data.agent_policy.<name>` is a `default` whose value is a literal scalar. Anything else (another
//! body, a function of that name, a package below `agent_policy.<name>`, a computed default) leaves
//! the rule to the interpreter.

use std::collections::{HashMap, HashSet};

use regorus::unstable::{Expr, Rule, RuleHead};
use regorus::Value;

use super::engine::PACKAGE;

/// `name → value` of the rules of [`PACKAGE`] that only a literal default defines.
pub fn constant_rules(engine: &mut regorus::Engine) -> HashMap<String, Value> {
    let package = format!("data.{PACKAGE}");
    let below = format!("{package}.");
    let mut defaults: HashMap<String, Vec<Option<Value>>> = HashMap::new();
    let mut defined_otherwise: HashSet<String> = HashSet::new();
    for module in engine.get_modules() {
        let Ok(path) = regorus::utils::get_path_string(&module.package.refr, Some("data")) else {
            // A package we cannot name could be anything: decide nothing here.
            return HashMap::new();
        };
        if let Some(rest) = path.strip_prefix(&below) {
            let first = rest.split('.').next().unwrap_or(rest);
            defined_otherwise.insert(first.to_string());
            continue;
        }
        if path != package {
            continue;
        }
        for rule in &module.policy {
            match rule.as_ref() {
                Rule::Default {
                    refr, args, value, ..
                } => {
                    let Some(name) = root_name(refr) else {
                        return HashMap::new();
                    };
                    let literal = if args.is_empty() {
                        literal(value)
                    } else {
                        None
                    };
                    defaults.entry(name).or_default().push(literal);
                }
                Rule::Spec { head, .. } => {
                    let refr = match head {
                        RuleHead::Compr { refr, .. }
                        | RuleHead::Set { refr, .. }
                        | RuleHead::Func { refr, .. } => refr,
                    };
                    let Some(name) = root_name(refr) else {
                        return HashMap::new();
                    };
                    defined_otherwise.insert(name);
                }
            }
        }
    }
    defaults
        .into_iter()
        .filter(|(name, _)| !defined_otherwise.contains(name))
        .filter_map(|(name, values)| match values.as_slice() {
            [Some(v)] => Some((name, v.clone())),
            _ => None,
        })
        .collect()
}

/// The variable a rule head starts with (`X` of `X`, `X.y`, `X[k]`).
fn root_name(refr: &Expr) -> Option<String> {
    match refr {
        Expr::Var { span, .. } => Some(span.text().to_string()),
        Expr::RefDot { refr, .. } | Expr::RefBrack { refr, .. } => root_name(refr),
        _ => None,
    }
}

/// The value of a literal scalar expression.
fn literal(expr: &Expr) -> Option<Value> {
    match expr {
        Expr::Bool { value, .. }
        | Expr::Null { value, .. }
        | Expr::Number { value, .. }
        | Expr::String { value, .. }
        | Expr::RawString { value, .. } => Some(value.clone()),
        _ => None,
    }
}
