//! A call's JSON arguments as the Cedar record `context.arguments`.
//!
//! Only the attributes the policies examine are taken over, each only when
//! its value has the type the policies use it as (the [`Shape`] read off the
//! policies by `infer`). Anything else is left out, so the record always
//! conforms to the schema the policies were validated against, and no policy
//! meets an argument of a type it did not expect:
//!
//! | shape     | taken from                                           |
//! |-----------|------------------------------------------------------|
//! | `String`  | a JSON string                                        |
//! | `Long`    | a JSON integer in the 64-bit signed range            |
//! | `Bool`    | `true` or `false`                                    |
//! | `Set<T>`  | an array whose every element is a `T` (at most [`MAX_SET`]) |
//! | record    | an object; its attributes one by one, the same way    |
//! | `{}`      | any value but `null` (only `has` examines it)         |
//!
//! A float is never a `Long` (`1.5`, and `1.0` too: JSON does not tell them
//! apart from what a client meant) and is left out, as are integers beyond
//! the 64-bit range; `null` is absent. Arrays are sets: order and duplicates
//! are lost. The depth of what is converted is the depth of the shapes,
//! bounded by [`MAX_DEPTH`], whatever the depth of the JSON.

use std::collections::BTreeMap;
use std::fmt;

use cedar_policy_core::ast::Value as CedarValue;
use serde_json::Value;

/// The deepest argument path a policy may examine
/// (`context.arguments.a.b.c` is 3 deep).
pub const MAX_DEPTH: usize = 32;
/// The longest array taken over as a set; a longer one is left out.
pub const MAX_SET: usize = 4096;
/// The most values converted for one decision; past it, attributes are left
/// out.
pub const MAX_VALUES: usize = 16384;

/// The type the policies give an argument attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    /// Only ever tested with `has`: declared as the empty record `{}` and
    /// given as `{}` whatever the value.
    Present,
    Bool,
    Long,
    String,
    Set(Box<Shape>),
    Record(BTreeMap<String, Shape>),
}

impl Shape {
    /// The Cedar schema type, as written in a `.cedarschema` file.
    pub fn cedar_type(&self, indent: usize, out: &mut String) {
        match self {
            Shape::Present => out.push_str("{}"),
            Shape::Bool => out.push_str("Bool"),
            Shape::Long => out.push_str("Long"),
            Shape::String => out.push_str("String"),
            Shape::Set(elem) => {
                out.push_str("Set<");
                elem.cedar_type(indent, out);
                out.push('>');
            }
            Shape::Record(fields) => record_type(fields, indent, out),
        }
    }

    /// Words for a shape, for the notes of what was left out.
    fn describe(&self) -> &'static str {
        match self {
            Shape::Present => "any value",
            Shape::Bool => "a boolean",
            Shape::Long => "an integer",
            Shape::String => "a string",
            Shape::Set(_) => "an array",
            Shape::Record(_) => "an object",
        }
    }
}

/// A record type whose attributes are all optional, one per line.
pub fn record_type(fields: &BTreeMap<String, Shape>, indent: usize, out: &mut String) {
    if fields.is_empty() {
        out.push_str("{}");
        return;
    }
    out.push_str("{\n");
    for (i, (name, shape)) in fields.iter().enumerate() {
        out.push_str(&"  ".repeat(indent + 1));
        quoted(name, out);
        out.push_str("?: ");
        shape.cedar_type(indent + 1, out);
        if i + 1 < fields.len() {
            out.push(',');
        }
        if *shape == Shape::Present {
            out.push_str(" // tested with `has` only");
        }
        out.push('\n');
    }
    out.push_str(&"  ".repeat(indent));
    out.push('}');
}

/// A Cedar string literal: quotes, backslashes and control and invisible
/// characters escaped.
pub fn quoted(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || (!c.is_ascii() && c.escape_debug().nth(1) == Some('u')) => {
                out.push_str(&format!("\\u{{{:x}}}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A dotted path for messages: `path`, `opts.mode`, `opts["a b"]`.
pub struct PathDisplay<'a>(pub &'a [String]);

impl fmt::Display for PathDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("context.arguments")?;
        for part in self.0 {
            if is_identifier(part) {
                write!(f, ".{part}")?;
            } else {
                let mut s = String::new();
                quoted(part, &mut s);
                write!(f, "[{s}]")?;
            }
        }
        Ok(())
    }
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !matches!(
            s,
            "true"
                | "false"
                | "if"
                | "then"
                | "else"
                | "in"
                | "is"
                | "like"
                | "has"
                | "principal"
                | "action"
                | "resource"
                | "context"
                | "permit"
                | "forbid"
                | "when"
                | "unless"
                | "__cedar"
        )
}

/// What became of the arguments: the record and the notes of what was left
/// out.
pub struct Converted {
    pub record: CedarValue,
    pub omitted: Vec<String>,
}

/// Builds `context.arguments` from a call's arguments: the declared
/// attributes (`fields`) only, each only when its value fits.
pub fn convert(fields: &BTreeMap<String, Shape>, arguments: Option<&Value>) -> Converted {
    let mut conv = Converter { budget: MAX_VALUES, omitted: Vec::new(), path: Vec::new() };
    let record = match arguments {
        None | Some(Value::Null) => empty_record(),
        Some(Value::Object(map)) => conv.record(fields, map),
        Some(_) => {
            if !fields.is_empty() {
                conv.omitted.push("arguments: not an object".to_string());
            }
            empty_record()
        }
    };
    Converted { record, omitted: conv.omitted }
}

pub fn empty_record() -> CedarValue {
    CedarValue::empty_record(None)
}

struct Converter {
    budget: usize,
    omitted: Vec<String>,
    path: Vec<String>,
}

impl Converter {
    fn record(&mut self, fields: &BTreeMap<String, Shape>, map: &serde_json::Map<String, Value>) -> CedarValue {
        let mut pairs = Vec::new();
        for (name, shape) in fields {
            let Some(value) = map.get(name) else { continue };
            if value.is_null() {
                continue;
            }
            self.path.push(name.clone());
            match self.value(shape, value) {
                Ok(expr) => pairs.push((name.clone(), expr)),
                Err(why) => self.omitted.push(format!("{}: {why}", PathDisplay(&self.path))),
            }
            self.path.pop();
        }
        CedarValue::record(pairs, None)
    }

    fn take(&mut self, n: usize) -> Result<(), String> {
        if self.budget < n {
            return Err("too many values in the arguments".to_string());
        }
        self.budget -= n;
        Ok(())
    }

    fn value(&mut self, shape: &Shape, value: &Value) -> Result<CedarValue, String> {
        self.take(1)?;
        let mismatch = || format!("expected {}, got {}", shape.describe(), json_kind(value));
        match (shape, value) {
            (Shape::Present, _) => Ok(empty_record()),
            (Shape::Bool, Value::Bool(b)) => Ok(CedarValue::from(*b)),
            (Shape::Long, Value::Number(n)) => match n.as_i64() {
                Some(i) => Ok(CedarValue::from(i)),
                None if n.is_f64() => Err("expected an integer, got a float".to_string()),
                None => Err("expected an integer, got one beyond 64 bits".to_string()),
            },
            (Shape::String, Value::String(s)) => Ok(CedarValue::from(s.as_str())),
            (Shape::Set(elem), Value::Array(items)) => {
                if items.len() > MAX_SET {
                    return Err(format!("an array of more than {MAX_SET} elements"));
                }
                self.take(items.len())?;
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    match self.element(elem, item) {
                        Some(e) => out.push(e),
                        None => {
                            return Err(format!("element {i}: expected {}, got {}", elem.describe(), json_kind(item)));
                        }
                    }
                }
                Ok(CedarValue::set(out, None))
            }
            (Shape::Record(fields), Value::Object(map)) => Ok(self.record(fields, map)),
            _ => Err(mismatch()),
        }
    }

    /// A set's element: scalars only (the shapes `infer` gives sets).
    fn element(&mut self, shape: &Shape, value: &Value) -> Option<CedarValue> {
        match (shape, value) {
            (Shape::Bool, Value::Bool(b)) => Some(CedarValue::from(*b)),
            (Shape::Long, Value::Number(n)) => n.as_i64().map(CedarValue::from),
            (Shape::String, Value::String(s)) => Some(CedarValue::from(s.as_str())),
            _ => None,
        }
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a float",
        Value::Number(n) if n.as_i64().is_none() => "an integer beyond 64 bits",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cedar_policy_core::ast::ValueKind;
    use serde_json::json;

    fn fields(pairs: &[(&str, Shape)]) -> BTreeMap<String, Shape> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    }

    /// The converted record's attributes in Cedar syntax, and the notes.
    fn eval(fields: &BTreeMap<String, Shape>, args: &Value) -> (BTreeMap<String, String>, Vec<String>) {
        let c = convert(fields, Some(args));
        let record = match &c.record.value {
            ValueKind::Record(r) => r.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            other => panic!("{other:?}"),
        };
        (record, c.omitted)
    }

    #[test]
    fn scalars_of_the_declared_type_only() {
        let f = fields(&[("s", Shape::String), ("n", Shape::Long), ("b", Shape::Bool)]);
        let (r, omitted) = eval(&f, &json!({"s": "x", "n": -3, "b": true, "other": 1}));
        assert_eq!(r.len(), 3);
        assert_eq!(r["s"], "\"x\"");
        assert_eq!(r["n"], "-3");
        assert_eq!(r["b"], "true");
        assert!(omitted.is_empty());
        let (r, omitted) = eval(&f, &json!({"s": 1, "n": "3", "b": "true"}));
        assert!(r.is_empty());
        assert_eq!(omitted.len(), 3);
    }

    #[test]
    fn numbers() {
        let f = fields(&[("n", Shape::Long)]);
        for ok in [json!(0), json!(i64::MAX), json!(i64::MIN), json!(-1)] {
            let (r, _) = eval(&f, &json!({ "n": ok }));
            assert_eq!(r.len(), 1, "{ok}");
        }
        for (bad, why) in [
            (json!(u64::MAX), "beyond 64 bits"),
            (json!(i64::MAX as u64 + 1), "beyond 64 bits"),
            (json!(1.5), "float"),
            (json!(1.0), "float"),
            (json!(-0.0), "float"),
            (json!(1e300), "float"),
        ] {
            let (r, omitted) = eval(&f, &json!({ "n": bad }));
            assert!(r.is_empty(), "{bad}");
            assert!(omitted[0].contains(why), "{bad}: {omitted:?}");
        }
        // a float is not coerced to a string either
        let (r, _) = eval(&fields(&[("s", Shape::String)]), &json!({"s": 2.5}));
        assert!(r.is_empty());
    }

    #[test]
    fn nulls_are_absent() {
        let f = fields(&[("a", Shape::Present), ("s", Shape::String)]);
        let (r, omitted) = eval(&f, &json!({"a": null, "s": null}));
        assert!(r.is_empty());
        assert!(omitted.is_empty());
        let (r, _) = eval(&f, &json!({"a": false}));
        assert_eq!(r.len(), 1);
        for args in [json!(null), json!([]), json!(3), json!("x")] {
            let (r, _) = eval(&f, &args);
            assert!(r.is_empty());
        }
        assert!(convert(&f, None).omitted.is_empty());
    }

    #[test]
    fn sets() {
        let f = fields(&[("l", Shape::Set(Box::new(Shape::String)))]);
        let (r, _) = eval(&f, &json!({"l": ["a", "b", "a"]}));
        assert_eq!(r["l"], "[\"a\", \"b\"]");
        // one element of another type: the whole set is left out
        let (r, omitted) = eval(&f, &json!({"l": ["a", 1]}));
        assert!(r.is_empty());
        assert_eq!(omitted, ["context.arguments.l: element 1: expected a string, got an integer"]);
        let (r, _) = eval(&f, &json!({"l": ["a", null]}));
        assert!(r.is_empty());
        let (r, _) = eval(&f, &json!({"l": []}));
        assert_eq!(r.len(), 1);
        let long: Vec<String> = (0..=MAX_SET).map(|i| i.to_string()).collect();
        let (r, omitted) = eval(&f, &json!({ "l": long }));
        assert!(r.is_empty());
        assert!(omitted[0].contains("more than"));
    }

    #[test]
    fn records_and_odd_keys() {
        let inner = fields(&[("mode", Shape::String), ("", Shape::Long), ("a b", Shape::Bool)]);
        let f = fields(&[("o", Shape::Record(inner)), ("", Shape::String), ("é\u{200d}", Shape::Long)]);
        let (r, omitted) =
            eval(&f, &json!({"o": {"mode": "x", "": 1, "a b": "no", "z": 1}, "": "empty key", "é\u{200d}": 5, "é": 6}));
        assert_eq!(r.len(), 3);
        assert_eq!(r[""], "\"empty key\"");
        assert_eq!(r["é\u{200d}"], "5");
        assert_eq!(r["o"], "{\"\": 1, mode: \"x\"}");
        assert_eq!(omitted, [r#"context.arguments.o["a b"]: expected a boolean, got a string"#]);
    }

    #[test]
    fn depth_follows_the_shapes_not_the_json() {
        // 5 000 levels of JSON: only what the shapes declare is visited
        let mut deep = json!(1);
        for _ in 0..5_000 {
            let mut map = serde_json::Map::new();
            map.insert("a".to_string(), deep);
            deep = Value::Object(map);
        }
        let mut shape = Shape::Long;
        for _ in 0..MAX_DEPTH {
            shape = Shape::Record(fields(&[("a", shape)]));
        }
        let f = fields(&[("a", shape)]);
        let c = convert(&f, Some(&deep));
        assert!(matches!(c.record.value, ValueKind::Record(_)));
        assert!(c.omitted.len() == 1 && c.omitted[0].contains("expected an integer, got an object"), "{:?}", c.omitted);
        // serde_json drops a deep value recursively: leak it rather than
        // overflow the test's stack
        std::mem::forget(deep);
    }

    #[test]
    fn the_budget_bounds_the_work() {
        let f = fields(&[("a", Shape::Set(Box::new(Shape::Long))), ("b", Shape::Set(Box::new(Shape::Long)))]);
        let many: Vec<i64> = (0..MAX_SET as i64).collect();
        let args = json!({"a": many, "b": many});
        let (r, _) = eval(&f, &args);
        // 2 × 4096 elements fit in the budget
        assert_eq!(r.len(), 2);
        let g: BTreeMap<String, Shape> = (0..5).map(|i| (format!("k{i}"), Shape::Set(Box::new(Shape::Long)))).collect();
        let args = json!({"k0": many, "k1": many, "k2": many, "k3": many, "k4": many});
        let (r, omitted) = eval(&g, &args);
        assert_eq!(r.len(), 3);
        assert!(omitted.iter().all(|o| o.contains("too many values")), "{omitted:?}");
    }

    #[test]
    fn quoting() {
        let mut s = String::new();
        quoted("a\"b\\c\nd\u{200d}é\u{0}", &mut s);
        assert_eq!(s, r#""a\"b\\c\nd\u{200d}é\u{0}""#);
        assert_eq!(
            PathDisplay(&["a".into(), "b c".into(), "in".into()]).to_string(),
            r#"context.arguments.a["b c"]["in"]"#
        );
    }
}
