//! The open question's form, generated from the wait's JSON schema (the console's run page).
//!
//! Native controls for a subset: `boolean` (yes/no radios), `string` (input; `enum` → select;
//! `format` email/uri/date → typed inputs; minLength/maxLength → attributes; `pattern` →
//! `data-pattern`, checked by console.js since HTML's `pattern` is anchored and uses the `v`
//! flag while JSON Schema's is an unanchored ECMA-262 search), `integer`/`number` (min/max,
//! exclusive bounds left to the server, `multipleOf` → step when it lines up with min), any
//! `enum`/`const` (the literal, JSON-encoded in the option), `array` of enum literals
//! (checkboxes), `array` of plain strings (a textarea, one per line), and `object` with
//! `properties` (a fieldset; `required` honoured; nested at any depth). Everything else
//! (`oneOf`/`anyOf`/`allOf`, `$ref`, type lists, `patternProperties`, arrays of objects…)
//! becomes a JSON textarea for that part alone. The server validates the whole payload with
//! the engine's `check_payload` whatever the browser did.
//!
//! Every control carries `data-path` (a JSON pointer into the payload) and `data-kind` (how
//! console.js reads it back): string, number, integer, literal, set, lines, json, object.

use maud::{Markup, html};
use serde_json::Value;

/// The form for `schema` (`None`: any JSON).
pub fn question_form(action: &str, schema: Option<&Value>) -> Markup {
    let mut schema = schema.map_or(Value::Bool(true), |s| inline_refs(s, s, &mut vec![]));
    if let Value::Object(root) = &mut schema {
        // Inlined where used; the schema shown in a JSON part need not repeat them.
        for definitions in ["$defs", "definitions", "$schema"] {
            root.remove(definitions);
        }
    }
    html! {
        form #question data-action=(action) {
            (field(&schema, "", "answer", Need::Required))
            div .actions { button type="submit" #send { "Send answer" } }
        }
    }
}

/// How deep definitions are inlined, at most.
const MAX_INLINE: usize = 8;

/// `schema` with its local references (`#/$defs/X`, `#/definitions/X`, as schemars writes
/// enums and nested types) replaced by what they name, so that they get native controls. A
/// reference met again inside its own expansion (a recursive type) stays a reference (then
/// JSON), and so does any below `MAX_INLINE`; values (`enum`, `const`, `default`) are kept as
/// they are.
fn inline_refs(schema: &Value, root: &Value, expanding: &mut Vec<String>) -> Value {
    let Value::Object(map) = schema else {
        return schema.clone();
    };
    let reference = map.get("$ref").and_then(Value::as_str);
    let target = reference
        .filter(|r| expanding.len() < MAX_INLINE && !expanding.iter().any(|e| e == r))
        .and_then(|r| root.pointer(r.strip_prefix('#')?));
    if let (Some(reference), Some(target)) = (reference, target) {
        expanding.push(reference.to_owned());
        let mut merged = inline_refs(target, root, expanding);
        if let Value::Object(merged) = &mut merged {
            for (k, v) in map.iter().filter(|(k, _)| *k != "$ref") {
                merged.insert(k.clone(), inline_refs(v, root, expanding));
            }
        }
        expanding.pop();
        return merged;
    }
    map.iter()
        .map(|(k, v)| match k.as_str() {
            "enum" | "const" | "default" | "examples" => (k.clone(), v.clone()),
            // The keys of `properties` are names, not keywords: each value is a schema.
            "properties" | "$defs" | "definitions" => (k.clone(), inline_map(v, root, expanding)),
            _ => match v {
                Value::Array(items) => (
                    k.clone(),
                    items
                        .iter()
                        .map(|i| inline_refs(i, root, expanding))
                        .collect(),
                ),
                _ => (k.clone(), inline_refs(v, root, expanding)),
            },
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// A map of names to schemas (`properties`), each inlined.
fn inline_map(map: &Value, root: &Value, expanding: &mut Vec<String>) -> Value {
    match map {
        Value::Object(entries) => entries
            .iter()
            .map(|(name, schema)| (name.clone(), inline_refs(schema, root, expanding)))
            .collect::<serde_json::Map<_, _>>()
            .into(),
        other => other.clone(),
    }
}

fn kind_of(schema: &Value) -> Option<&str> {
    match schema.get("type") {
        Some(Value::String(t)) => Some(t.as_str()),
        // ["string", "null"] and the like: left to JSON.
        _ => None,
    }
}

fn has_any(schema: &Value, keys: &[&str]) -> bool {
    keys.iter().any(|k| schema.get(*k).is_some())
}

/// Keywords the native controls cannot honour: their presence sends the part to JSON.
const COMPOSITE: &[&str] = &[
    "oneOf",
    "anyOf",
    "allOf",
    "not",
    "$ref",
    "if",
    "patternProperties",
    "dependentSchemas",
    "dependentRequired",
    "prefixItems",
    "contains",
];

/// Whether a field must be filled: always (`required` here and in every enclosing object), only
/// when its optional enclosing object is given at all (console.js checks that), or not.
#[derive(Clone, Copy, PartialEq)]
enum Need {
    Required,
    IfParentGiven,
    Optional,
}

impl Need {
    /// The control's `required` flag, and its `data-needed` (checked by console.js).
    fn attributes(self) -> (bool, Option<&'static str>) {
        (
            self == Need::Required,
            (self == Need::IfParentGiven).then_some("true"),
        )
    }
}

/// One control's place in the payload, and its words.
struct Field<'a> {
    path: &'a str,
    id: String,
    label: &'a str,
    hint: Option<&'a str>,
    need: Need,
}

fn field(schema: &Value, path: &str, name: &str, need: Need) -> Markup {
    let (required, needed) = need.attributes();
    // schemars titles a bare primitive by its type ("boolean"): that says nothing to a person.
    let label = schema
        .get("title")
        .and_then(Value::as_str)
        .filter(|title| Some(*title) != kind_of(schema))
        .unwrap_or(name);
    let hint = schema.get("description").and_then(Value::as_str);
    let id = control_id(path);
    let this = Field {
        path,
        id: id.clone(),
        label,
        hint,
        need,
    };
    if has_any(schema, COMPOSITE) {
        return json_field(schema, &this);
    }
    if let Some(Value::Array(options)) = schema.get("enum") {
        return literal_select(options, schema.get("default"), &this);
    }
    if let Some(value) = schema.get("const") {
        return html! { input type="hidden" data-path=(path) data-kind="literal" value=(value.to_string()); };
    }
    match kind_of(schema) {
        Some("boolean") => {
            let default = schema.get("default").and_then(Value::as_bool);
            html! {
                fieldset .field .boolean data-path=(path) {
                    legend { (label) @if required { span .req { "*" } } }
                    @for (text, value) in [("yes", true), ("no", false)] {
                        label {
                            input type="radio" name=(id) value=(value) data-path=(path)
                                data-kind="literal" required[required] data-needed=[needed] checked[default == Some(value)];
                            " " (text)
                        }
                    }
                    (hint_of(hint))
                }
            }
        }
        Some("string") => string_field(schema, &this),
        Some(kind @ ("integer" | "number")) => number_field(schema, kind, &this),
        Some("array") => array_field(schema, &this),
        Some("object")
            if schema.get("properties").is_some_and(Value::is_object)
                && !schema
                    .get("additionalProperties")
                    .is_some_and(Value::is_object) =>
        {
            let props = schema["properties"].as_object().unwrap();
            let child_need = |key: &str, listed: &[&str]| match (listed.contains(&key), need) {
                (false, _) => Need::Optional,
                (true, Need::Required) => Need::Required,
                (true, _) => Need::IfParentGiven,
            };
            let listed: Vec<&str> = schema
                .get("required")
                .and_then(Value::as_array)
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            html! {
                fieldset .object data-path=(path) data-kind="object" data-required=(required) {
                    @if !path.is_empty() { legend { (label) } }
                    (hint_of(hint))
                    @for key in field_order(props, &listed) {
                        (field(&props[key], &format!("{path}/{}", escape_pointer(key)), key, child_need(key, &listed)))
                    }
                }
            }
        }
        _ => json_field(schema, &this),
    }
}

/// The order of an object's fields. Objects keep no key order here (serde_json without
/// `preserve_order`, and Postgres `jsonb` sorts keys), arrays do: the `required` fields in
/// that array's order, then the others by name.
fn field_order<'a>(
    props: &'a serde_json::Map<String, Value>,
    required: &[&'a str],
) -> Vec<&'a str> {
    let mut keys: Vec<&str> = required
        .iter()
        .copied()
        .filter(|k| props.contains_key(*k))
        .collect();
    keys.extend(
        props
            .keys()
            .map(String::as_str)
            .filter(|k| !required.contains(k)),
    );
    keys
}

/// A control's id from its JSON pointer, one `-` per level, other characters than letters,
/// digits and `_` spelled as `_XX`: distinct for distinct paths, and plain in CSS
/// (`/notes/summary` is `f-notes-summary`).
fn control_id(pointer: &str) -> String {
    let mut id = String::from("f");
    for segment in pointer.split('/').skip(1) {
        id.push('-');
        let segment = segment.replace("~1", "/").replace("~0", "~");
        for byte in segment.bytes() {
            match byte {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' => id.push(byte as char),
                _ => id.push_str(&format!("_{byte:02x}")),
            }
        }
    }
    id
}

fn escape_pointer(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn hint_of(hint: Option<&str>) -> Markup {
    html! { @if let Some(h) = hint { small .hint { (h) } } }
}

fn head(id: &str, label: &str, required: bool) -> Markup {
    html! { label for=(id) { (label) @if required { span .req { "*" } } } }
}

fn string_field(schema: &Value, f: &Field) -> Markup {
    let (path, id, label, hint, need) = (f.path, f.id.as_str(), f.label, f.hint, f.need);
    let (required, needed) = need.attributes();
    let n = |k: &str| schema.get(k).and_then(Value::as_u64);
    let input_type = match schema.get("format").and_then(Value::as_str) {
        Some("email") => "email",
        Some("uri") => "url",
        Some("date") => "date",
        _ => "text",
    };
    let default = schema.get("default").and_then(Value::as_str);
    let pattern = schema.get("pattern").and_then(Value::as_str);
    let long = n("maxLength").is_none_or(|m| m > 200) && input_type == "text";
    html! {
        div .field {
            (head(id, label, required))
            @if long {
                textarea #(id) data-path=(path) data-kind="string" required[required] data-needed=[needed]
                    minlength=[n("minLength")] maxlength=[n("maxLength")] data-pattern=[pattern] rows="3" { (default.unwrap_or("")) }
            } @else {
                input #(id) type=(input_type) data-path=(path) data-kind="string" required[required] data-needed=[needed]
                    minlength=[n("minLength")] maxlength=[n("maxLength")] data-pattern=[pattern] value=[default];
            }
            (hint_of(hint))
        }
    }
}

fn number_field(schema: &Value, kind: &str, f: &Field) -> Markup {
    let (path, id, label, hint, need) = (f.path, f.id.as_str(), f.label, f.hint, f.need);
    let (required, needed) = need.attributes();
    let f = |k: &str| schema.get(k).and_then(Value::as_f64);
    let min = f("minimum");
    // A step counts from min: multipleOf is a step only when min is one of its multiples.
    let step = match (f("multipleOf"), min) {
        (Some(m), None) => m.to_string(),
        (Some(m), Some(lo)) if (lo / m).fract() == 0.0 => m.to_string(),
        _ if kind == "integer" => "1".into(),
        _ => "any".into(),
    };
    html! {
        div .field {
            (head(id, label, required))
            input #(id) type="number" data-path=(path) data-kind=(kind) required[required] data-needed=[needed]
                min=[min] max=[f("maximum")] step=(step) value=[schema.get("default").map(Value::to_string)];
            (hint_of(hint))
        }
    }
}

fn literal_select(options: &[Value], default: Option<&Value>, f: &Field) -> Markup {
    let (path, id, label, hint, need) = (f.path, f.id.as_str(), f.label, f.hint, f.need);
    let (required, needed) = need.attributes();
    html! {
        div .field {
            (head(id, label, required))
            select #(id) data-path=(path) data-kind="literal" required[required] data-needed=[needed] {
                option value="" { "—" }
                @for o in options {
                    option value=(o.to_string()) selected[default == Some(o)] {
                        (o.as_str().map_or_else(|| o.to_string(), str::to_owned))
                    }
                }
            }
            (hint_of(hint))
        }
    }
}

fn array_field(schema: &Value, f: &Field) -> Markup {
    let (path, id, label, hint, need) = (f.path, f.id.as_str(), f.label, f.hint, f.need);
    let (required, needed) = need.attributes();
    let items = schema.get("items").unwrap_or(&Value::Null);
    if let Some(Value::Array(options)) = items.get("enum") {
        return html! {
            fieldset .field .set data-path=(path) data-kind="array" data-required=(required) {
                legend { (label) }
                @for o in options {
                    label { input type="checkbox" data-path=(path) data-kind="set" value=(o.to_string()); " " (o.as_str().map_or_else(|| o.to_string(), str::to_owned)) }
                }
                (hint_of(hint))
            }
        };
    }
    if kind_of(items) == Some("string") && !has_any(items, COMPOSITE) {
        return html! {
            div .field {
                (head(id, label, required))
                textarea #(id) data-path=(path) data-kind="lines" required[required] data-needed=[needed] rows="3" placeholder="one per line" {}
                (hint_of(hint.or(Some("one per line"))))
            }
        };
    }
    json_field(schema, f)
}

/// The fallback: this part of the payload as JSON, with its schema shown.
fn json_field(schema: &Value, f: &Field) -> Markup {
    let (path, id, label, hint, need) = (f.path, f.id.as_str(), f.label, f.hint, f.need);
    let (required, needed) = need.attributes();
    let shown = serde_json::to_string_pretty(schema).unwrap_or_default();
    html! {
        div .field .json {
            (head(id, label, required))
            textarea #(id) data-path=(path) data-kind="json" required[required] data-needed=[needed] rows="4" spellcheck="false"
                placeholder="JSON" { (schema.get("default").map(Value::to_string).unwrap_or_default()) }
            (hint_of(hint))
            details { summary { "schema (JSON)" } pre { (shown) } }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn form(schema: Value) -> String {
        question_form("/a", Some(&schema)).into_string()
    }

    #[test]
    fn a_bare_boolean_is_two_required_radios_at_the_root() {
        let f = form(json!({ "type": "boolean" }));
        assert_eq!(f.matches(r#"type="radio""#).count(), 2);
        assert!(
            f.contains(r#"data-path="" data-kind="literal" required"#),
            "{f}"
        );
    }

    #[test]
    fn local_definitions_get_native_controls_and_recursion_stops() {
        let f = form(json!({ "type": "object", "required": ["channel"],
            "properties": { "channel": { "$ref": "#/$defs/Channel" }, "tree": { "$ref": "#/$defs/Tree" } },
            "$defs": { "Channel": { "type": "string", "enum": ["email", "slack"] },
                       "Tree": { "type": "object", "properties": { "kid": { "$ref": "#/$defs/Tree" } } } } }));
        assert!(f.contains(r#"<select id="f-channel""#), "{f}");
        assert!(f.contains(r#"value="&quot;slack&quot;""#), "{f}");
        // The recursive type once, then its reference inside itself is left to JSON.
        assert_eq!(f.matches(r#"data-kind="object""#).count(), 2, "{f}");
        assert!(
            f.contains(r#"data-path="/tree/kid" data-kind="json""#),
            "{f}"
        );
    }

    #[test]
    fn names_are_not_keywords_and_ids_do_not_collide() {
        let f = form(
            json!({ "type": "object", "required": ["definitions", "a-b"], "properties": {
            "definitions": { "type": "string" }, "a-b": { "type": "boolean" },
            "a": { "type": "object", "properties": { "b": { "type": "boolean" } } } } }),
        );
        assert!(f.contains(r#"id="f-definitions""#), "{f}");
        assert!(
            f.contains(r#"name="f-a_2db""#) && f.contains(r#"name="f-a-b""#),
            "{f}"
        );
    }

    #[test]
    fn what_no_control_expresses_is_json() {
        let f = form(json!({ "anyOf": [{ "type": "string" }, { "type": "null" }] }));
        assert!(f.contains(r#"data-kind="json""#), "{f}");
        let f = form(json!({ "type": ["string", "null"] }));
        assert!(f.contains(r#"data-kind="json""#), "{f}");
    }

    #[test]
    fn required_fields_come_first_in_their_order_and_text_is_escaped() {
        let f = form(
            json!({ "type": "object", "required": ["z", "a"], "properties": {
            "a": { "type": "string" }, "m": { "type": "string", "title": "<script>x</script>" },
            "z": { "type": "integer", "minimum": 2, "multipleOf": 3 } } }),
        );
        let (z, a, m) = (
            f.find("f-z").unwrap(),
            f.find("f-a").unwrap(),
            f.find("f-m").unwrap(),
        );
        assert!(z < a && a < m, "{f}");
        assert!(f.contains("&lt;script&gt;") && !f.contains("<script>x"));
        // 2 is no multiple of 3: a step would count from it, so none but the integer's.
        assert!(f.contains(r#"min="2" step="1""#), "{f}");
    }
}
