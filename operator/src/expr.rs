//! CEL expressions in Cairn's resources, as Kubernetes users write them in CRD rules: a Flow's
//! concurrency key (over `input`). Errors are sentences for a condition or a refusal.

use serde_json::Value;

/// Longest expression accepted: they are written by people, and CEL has no cost limit.
pub const MAX_SOURCE: usize = 1024;
/// Longest key kept: it is stored with the run and shown in its status.
pub const MAX_KEY: usize = 256;

/// A compiled expression.
pub struct Expression {
    source: String,
    program: cel::Program,
}

impl Expression {
    pub fn compile(source: &str) -> Result<Expression, String> {
        if source.len() > MAX_SOURCE {
            return Err(format!(
                "the expression is {} bytes; at most {MAX_SOURCE} are accepted",
                source.len()
            ));
        }
        let program = cel::Program::compile(source)
            .map_err(|e| format!("`{source}` is not a CEL expression: {}", one_line(&e)))?;
        Ok(Expression {
            source: source.to_owned(),
            program,
        })
    }

    /// Its value with these variables bound, as JSON.
    pub fn eval(&self, variables: &[(&str, &Value)]) -> Result<Value, String> {
        let mut context = cel::Context::default();
        for (name, value) in variables {
            context
                .add_variable(*name, *value)
                .map_err(|e| format!("cannot bind `{name}`: {e}"))?;
        }
        let value = self
            .program
            .execute(&context)
            .map_err(|e| format!("`{}` failed: {e}", self.source))?;
        value
            .json()
            .map_err(|e| format!("`{}` gave a value JSON cannot hold: {e:?}", self.source))
    }

    /// Its value as a key: a string as is, a number or a boolean written out.
    pub fn eval_key(&self, variables: &[(&str, &Value)]) -> Result<String, String> {
        let key = match self.eval(variables)? {
            Value::String(s) => s,
            value @ (Value::Number(_) | Value::Bool(_)) => value.to_string(),
            other => {
                return Err(format!(
                    "`{}` gave {}; a key must be a string, a number or a boolean",
                    self.source,
                    kind_of(&other)
                ));
            }
        };
        match key.len() > MAX_KEY {
            true => Err(format!(
                "`{}` gave a key of {} bytes; at most {MAX_KEY} are kept",
                self.source,
                key.len()
            )),
            false => Ok(key),
        }
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Array(_) => "a list",
        Value::Object(_) => "a map",
        _ => "a scalar",
    }
}

/// The parser's message, which points at the column over several lines, on one.
fn one_line(error: &impl std::fmt::Display) -> String {
    error
        .to_string()
        .lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("ERROR: <input>:")
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(source: &str, input: Value) -> Result<String, String> {
        Expression::compile(source)?.eval_key(&[("input", &input)])
    }

    #[test]
    fn keys_come_from_the_input() {
        assert_eq!(
            key("input.customer", json!({"customer": "a"})).unwrap(),
            "a"
        );
        assert_eq!(key("input.tier", json!({"tier": 3})).unwrap(), "3");
        assert_eq!(key("input.vip", json!({"vip": true})).unwrap(), "true");
        let built = key(
            "input.org + '/' + input.team",
            json!({"org": "o", "team": "t"}),
        );
        assert_eq!(built.unwrap(), "o/t");
    }

    #[test]
    fn a_bad_expression_or_input_says_what_is_wrong() {
        let not_cel = key("input.(", json!({})).unwrap_err();
        assert!(
            not_cel.starts_with("`input.(` is not a CEL expression: 1:7"),
            "{not_cel}"
        );
        let missing = key("input.customer", json!({"user": "a"})).unwrap_err();
        assert!(missing.contains("No such key: customer"), "{missing}");
        let map = key("input", json!({"a": 1})).unwrap_err();
        assert!(map.contains("gave a map; a key must be"), "{map}");
        let null = key("input.customer", json!({"customer": null})).unwrap_err();
        assert!(null.contains("gave null"), "{null}");
        let long = key("input.c", json!({"c": "x".repeat(MAX_KEY + 1)})).unwrap_err();
        assert!(long.contains("at most 256 are kept"), "{long}");
        let huge = Expression::compile(&"a".repeat(MAX_SOURCE + 1))
            .err()
            .unwrap();
        assert!(huge.contains("at most 1024"), "{huge}");
    }
}
