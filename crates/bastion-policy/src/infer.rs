//! The type of `context.arguments`, read off the policies.
//!
//! Cedar validates strictly: a policy may only read an attribute the schema
//! declares, with the type it declares. A call's arguments are arbitrary
//! JSON, so the schema cannot know them in advance; Cedar's open records
//! (`additionalAttributes`) are an experimental feature that strict
//! validation does not accept either. Instead, every argument attribute a
//! policy mentions is declared, as optional, with the type its uses give it:
//!
//! - `… like "…"`, `ip(…)`, `decimal(…)`, `datetime(…)`, `duration(…)`: `String`
//! - `<`, `<=`, `>`, `>=`, `+`, `-`, `*`: `Long`
//! - `&&`, `||`, `!`, `if …`, a whole condition: `Bool`
//! - `== x` or `!= x`: the type of `x` (a literal, a set literal,
//!   `principal.role`, `resource.name`, `context.now`…, or another argument
//!   whose type is known)
//! - `.contains(x)`, `.containsAll([…])`, `.containsAny([…])`,
//!   `.isEmpty()`: a set of the type of `x` (of strings when nothing tells)
//! - `x.contains(a)` with `x` a set literal: the type of its elements
//! - `has a`, `.a`: an object holding `a`
//! - only ever tested with `has`: present, type not examined (`{}`)
//!
//! A guess needs no proof: the declared schema is then checked by Cedar's
//! strict validation like every other, and the arguments of a call are
//! converted to exactly that schema (see `args`). What cannot be told (an
//! argument only compared with another whose type is unknown, or used as a
//! whole) is an error naming the policy; so is an argument used as two
//! different types.

use std::collections::BTreeMap;

use cedar_policy::pst::{BinaryOp, Clause, Expr, Literal, Policy, UnaryOp, Var};

use crate::args::{MAX_DEPTH, PathDisplay, Shape};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scalar {
    Bool,
    Long,
    String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ty {
    Scalar(Scalar),
    /// A set; `None` while the element type is unknown.
    Set(Option<Scalar>),
}

impl Ty {
    fn name(self) -> &'static str {
        match self {
            Ty::Scalar(Scalar::Bool) => "a Bool",
            Ty::Scalar(Scalar::Long) => "a Long",
            Ty::Scalar(Scalar::String) => "a String",
            Ty::Set(Some(Scalar::Bool)) => "a Set<Bool>",
            Ty::Set(Some(Scalar::Long)) => "a Set<Long>",
            Ty::Set(Some(Scalar::String)) => "a Set<String>",
            Ty::Set(None) => "a Set",
        }
    }

    /// The more precise of two compatible types, `None` if they conflict.
    fn unify(self, other: Ty) -> Option<Ty> {
        match (self, other) {
            (a, b) if a == b => Some(a),
            (Ty::Set(None), Ty::Set(b)) => Some(Ty::Set(b)),
            (Ty::Set(a), Ty::Set(None)) => Some(Ty::Set(a)),
            _ => None,
        }
    }

    fn shape(self) -> Shape {
        let scalar = |s| match s {
            Scalar::Bool => Shape::Bool,
            Scalar::Long => Shape::Long,
            Scalar::String => Shape::String,
        };
        match self {
            Ty::Scalar(s) => scalar(s),
            // a set whose elements nothing tells: a set of strings
            Ty::Set(elem) => Shape::Set(Box::new(scalar(elem.unwrap_or(Scalar::String)))),
        }
    }
}

const STRING: Ty = Ty::Scalar(Scalar::String);
const LONG: Ty = Ty::Scalar(Scalar::Long);
const BOOL: Ty = Ty::Scalar(Scalar::Bool);

enum Use {
    /// Tested with `has`.
    Present,
    Typed(Ty),
    /// Used where its type cannot be told.
    Opaque,
}

/// What the policies make of `context.arguments`.
pub struct Inferred {
    /// Its attributes, all optional.
    pub fields: BTreeMap<String, Shape>,
    /// Problems, by index of the policy.
    pub errors: Vec<(usize, String)>,
}

#[derive(Default)]
struct Node {
    ty: Option<(Ty, usize)>,
    present: bool,
    /// Policies using it where its type cannot be told.
    opaque: Vec<usize>,
    children: BTreeMap<String, Node>,
}

impl Node {
    fn at(&mut self, path: &[String]) -> &mut Node {
        let mut node = self;
        for part in path {
            node = node.children.entry(part.clone()).or_default();
        }
        node
    }
}

struct Collector<'a> {
    ids: &'a [String],
    root: Node,
    equal: Vec<(Vec<String>, Vec<String>, usize)>,
    errors: Vec<(usize, String)>,
    policy: usize,
}

/// Reads the type of `context.arguments` off `policies` (`None` for a policy
/// that could not be examined: Cedar's validation then judges it alone).
/// `ids` name the policies in messages, index for index.
pub fn infer(policies: &[Option<Policy>], ids: &[String]) -> Inferred {
    let mut c = Collector { ids, root: Node::default(), equal: Vec::new(), errors: Vec::new(), policy: 0 };
    for (i, policy) in policies.iter().enumerate() {
        let Some(policy) = policy else { continue };
        c.policy = i;
        for clause in policy.body().clauses() {
            match clause {
                Clause::When(e) | Clause::Unless(e) => c.walk(e, Some(BOOL)),
            }
        }
    }
    c.propagate_equalities();
    let mut fields = BTreeMap::new();
    let root = std::mem::take(&mut c.root);
    if root.ty.is_some() || !root.opaque.is_empty() {
        let at = root.ty.map(|(_, p)| p).into_iter().chain(root.opaque.iter().copied());
        for p in at {
            c.errors.push((
                p,
                "context.arguments can only be examined through its attributes (`has name`, `.name`), not as a whole"
                    .to_string(),
            ));
        }
    }
    let mut path = Vec::new();
    for (name, node) in root.children {
        path.push(name.clone());
        if let Some(shape) = c.shape(&node, &mut path) {
            fields.insert(name, shape);
        }
        path.pop();
    }
    c.errors.sort();
    c.errors.dedup();
    Inferred { fields, errors: c.errors }
}

/// `context.arguments.a.b` → `["a", "b"]`; `context.arguments` → `[]`.
fn arg_path(e: &Expr) -> Option<Vec<String>> {
    match e {
        Expr::GetAttr { expr, attr } => {
            if matches!(&**expr, Expr::Var(Var::Context)) {
                return (attr.as_str() == "arguments").then(Vec::new);
            }
            let mut path = arg_path(expr)?;
            path.push(attr.to_string());
            Some(path)
        }
        _ => None,
    }
}

/// The type of an expression that is not an argument, when it is plain.
fn static_type(e: &Expr) -> Option<Ty> {
    match e {
        Expr::Literal(Literal::Bool(_)) => Some(BOOL),
        Expr::Literal(Literal::Long(_)) => Some(LONG),
        Expr::Literal(Literal::String(_)) => Some(STRING),
        Expr::Set(elems) => Some(Ty::Set(elems.iter().find_map(|x| match static_type(x) {
            Some(Ty::Scalar(s)) => Some(s),
            _ => None,
        }))),
        Expr::UnaryOp { op: UnaryOp::Neg, .. } => Some(LONG),
        Expr::UnaryOp { op: UnaryOp::Not | UnaryOp::IsEmpty, .. } => Some(BOOL),
        Expr::BinaryOp { op, .. } => match op {
            BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul => Some(LONG),
            BinaryOp::Eq
            | BinaryOp::NotEq
            | BinaryOp::Less
            | BinaryOp::LessEq
            | BinaryOp::Greater
            | BinaryOp::GreaterEq
            | BinaryOp::And
            | BinaryOp::Or
            | BinaryOp::In
            | BinaryOp::Contains
            | BinaryOp::ContainsAll
            | BinaryOp::ContainsAny
            | BinaryOp::HasTag => Some(BOOL),
            _ => None,
        },
        Expr::Like { .. } | Expr::HasAttr { .. } | Expr::Is { .. } => Some(BOOL),
        Expr::GetAttr { expr, attr } => match (&**expr, attr.as_str()) {
            (Expr::Var(Var::Context), "now") => Some(LONG),
            (Expr::Var(Var::Principal), "role") => Some(STRING),
            (Expr::Var(Var::Resource), "name" | "uri") => Some(STRING),
            (Expr::GetAttr { expr: inner, attr: server }, "name")
                if server.as_str() == "server" && matches!(&**inner, Expr::Var(Var::Resource)) =>
            {
                Some(STRING)
            }
            _ => None,
        },
        Expr::IfThenElse { then_expr, else_expr, .. } => static_type(then_expr).or_else(|| static_type(else_expr)),
        _ => None,
    }
}

fn is_set(t: Option<Ty>) -> Option<Ty> {
    t.filter(|t| matches!(t, Ty::Set(_)))
}

impl Collector<'_> {
    fn record(&mut self, path: Vec<String>, what: Use) {
        if path.len() > MAX_DEPTH {
            self.errors.push((self.policy, format!("{} is deeper than {MAX_DEPTH} levels", PathDisplay(&path))));
            return;
        }
        let policy = self.policy;
        let node = self.root.at(&path);
        match what {
            Use::Present => node.present = true,
            Use::Opaque => node.opaque.push(policy),
            Use::Typed(t) => match node.ty {
                None => node.ty = Some((t, policy)),
                Some((old, first)) => match old.unify(t) {
                    Some(u) => node.ty = Some((u, first)),
                    None => {
                        let msg = format!(
                            "{} is used as {} here and as {} in {}",
                            PathDisplay(&path),
                            t.name(),
                            old.name(),
                            self.ids.get(first).map_or("another policy", String::as_str)
                        );
                        self.errors.push((policy, msg));
                    }
                },
            },
        }
    }

    fn walk(&mut self, e: &Expr, expect: Option<Ty>) {
        if let Some(path) = arg_path(e) {
            self.record(path, expect.map_or(Use::Opaque, Use::Typed));
            return;
        }
        match e {
            Expr::GetAttr { expr, .. } => self.walk(expr, None),
            Expr::HasAttr { expr, attrs } => match arg_path(expr) {
                Some(mut path) => {
                    path.extend(attrs.iter().map(|a| a.to_string()));
                    self.record(path, Use::Present);
                }
                None => self.walk(expr, None),
            },
            Expr::Like { expr, .. } => self.walk(expr, Some(STRING)),
            Expr::UnaryOp { op, expr } => {
                let t = match op {
                    UnaryOp::Not => Some(BOOL),
                    UnaryOp::Neg => Some(LONG),
                    UnaryOp::IsEmpty => Some(Ty::Set(None)),
                    UnaryOp::Decimal | UnaryOp::Ip | UnaryOp::Datetime | UnaryOp::Duration => Some(STRING),
                    _ => None,
                };
                self.walk(expr, t);
            }
            Expr::BinaryOp { op, left, right } => self.binary(*op, left, right),
            Expr::IfThenElse { cond, then_expr, else_expr } => {
                self.walk(cond, Some(BOOL));
                self.walk(then_expr, expect);
                self.walk(else_expr, expect);
            }
            Expr::Set(elems) => {
                let elem = match expect {
                    Some(Ty::Set(Some(s))) => Some(s),
                    _ => elems.iter().find_map(|x| match static_type(x) {
                        Some(Ty::Scalar(s)) => Some(s),
                        _ => None,
                    }),
                };
                for x in elems {
                    self.walk(x, elem.map(Ty::Scalar));
                }
            }
            Expr::Record(fields) => {
                for x in fields.values() {
                    self.walk(x, None);
                }
            }
            Expr::Is { expr, in_expr, .. } => {
                self.walk(expr, None);
                if let Some(x) = in_expr {
                    self.walk(x, None);
                }
            }
            _ => {}
        }
    }

    fn binary(&mut self, op: BinaryOp, left: &Expr, right: &Expr) {
        let (lt, rt) = (static_type(left), static_type(right));
        let (l, r) = match op {
            BinaryOp::Eq | BinaryOp::NotEq => {
                if let (Some(a), Some(b)) = (arg_path(left), arg_path(right)) {
                    self.equal.push((a, b, self.policy));
                }
                (rt, lt)
            }
            BinaryOp::Less
            | BinaryOp::LessEq
            | BinaryOp::Greater
            | BinaryOp::GreaterEq
            | BinaryOp::Add
            | BinaryOp::Sub
            | BinaryOp::Mul => (Some(LONG), Some(LONG)),
            BinaryOp::And | BinaryOp::Or => (Some(BOOL), Some(BOOL)),
            BinaryOp::Contains => {
                let set = match rt {
                    Some(Ty::Scalar(s)) => Ty::Set(Some(s)),
                    _ => Ty::Set(None),
                };
                let elem = match lt {
                    Some(Ty::Set(Some(s))) => Some(Ty::Scalar(s)),
                    _ => None,
                };
                (Some(set), elem)
            }
            BinaryOp::ContainsAll | BinaryOp::ContainsAny => {
                (is_set(rt).or(Some(Ty::Set(None))), is_set(lt).or(Some(Ty::Set(None))))
            }
            BinaryOp::GetTag | BinaryOp::HasTag => (None, Some(STRING)),
            _ => (None, None),
        };
        self.walk(left, l);
        self.walk(right, r);
    }

    fn type_at(&self, path: &[String]) -> Option<(Ty, usize)> {
        let mut node = &self.root;
        for part in path {
            node = node.children.get(part)?;
        }
        node.ty
    }

    /// `a == b` between two arguments: what one is, so is the other.
    fn propagate_equalities(&mut self) {
        for _ in 0..=self.equal.len() {
            let mut changed = false;
            for (a, b, policy) in std::mem::take(&mut self.equal) {
                let (ta, tb) = (self.type_at(&a), self.type_at(&b));
                self.policy = policy;
                match (ta, tb) {
                    (Some((t, _)), None) => {
                        self.record(b.clone(), Use::Typed(t));
                        changed = true;
                    }
                    (None, Some((t, _))) => {
                        self.record(a.clone(), Use::Typed(t));
                        changed = true;
                    }
                    (Some((x, _)), Some((y, _))) if x.unify(y).is_none() => {
                        self.errors.push((
                            policy,
                            format!(
                                "{} ({}) is compared with {} ({})",
                                PathDisplay(&a),
                                x.name(),
                                PathDisplay(&b),
                                y.name()
                            ),
                        ));
                    }
                    _ => {}
                }
                self.equal.push((a, b, policy));
            }
            if !changed {
                break;
            }
        }
    }

    fn shape(&mut self, node: &Node, path: &mut Vec<String>) -> Option<Shape> {
        if !node.children.is_empty() {
            if let Some((t, p)) = node.ty {
                let msg = format!(
                    "{} is used as {} and as an object (its attributes are examined)",
                    PathDisplay(path),
                    t.name()
                );
                self.errors.push((p, msg));
            }
            for p in &node.opaque {
                let msg =
                    format!("{} is an object: only its attributes can be examined, not the whole", PathDisplay(path));
                self.errors.push((*p, msg));
            }
            let mut fields = BTreeMap::new();
            for (name, child) in &node.children {
                path.push(name.clone());
                if let Some(shape) = self.shape(child, path) {
                    fields.insert(name.clone(), shape);
                }
                path.pop();
            }
            return Some(Shape::Record(fields));
        }
        if let Some((t, _)) = node.ty {
            return Some(t.shape());
        }
        if !node.opaque.is_empty() {
            for p in &node.opaque {
                let msg = format!(
                    "cannot tell the type of {} from how it is used: compare it with a literal (`== \"…\"`, `== 3`, \
                     `== true`), match it with `like`, compare it with `<` or `>`, or test it with `.contains(…)`",
                    PathDisplay(path)
                );
                self.errors.push((*p, msg));
            }
            return None;
        }
        node.present.then_some(Shape::Present)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    /// The inferred fields of one condition, and the errors.
    fn of(condition: &str) -> (BTreeMap<String, Shape>, Vec<String>) {
        let text = format!("permit (principal, action, resource) when {{ {condition} }};");
        let policy = match cedar_policy::Policy::from_str(&text) {
            Ok(p) => p,
            Err(e) => panic!("{e}: {text}"),
        };
        let inferred = infer(&[policy.to_pst().ok()], &["p".to_string()]);
        (inferred.fields, inferred.errors.into_iter().map(|(_, m)| m).collect())
    }

    fn shape_of(condition: &str, name: &str) -> Shape {
        let (fields, errors) = of(condition);
        assert!(errors.is_empty(), "{errors:?}");
        match fields.get(name) {
            Some(s) => s.clone(),
            None => panic!("{name} not in {fields:?}"),
        }
    }

    fn set(s: Shape) -> Shape {
        Shape::Set(Box::new(s))
    }

    #[test]
    fn types_from_uses() {
        let a = "context.arguments.a";
        for (cond, shape) in [
            (format!("{a} like \"x*\""), Shape::String),
            (format!("{a} == \"x\""), Shape::String),
            (format!("\"x\" != {a}"), Shape::String),
            (format!("{a} == principal.role"), Shape::String),
            (format!("{a} == resource.server.name"), Shape::String),
            (format!("{a} > 3"), Shape::Long),
            (format!("{a} + 1 == 2"), Shape::Long),
            (format!("-{a} == 2"), Shape::Long),
            (format!("{a} < context.now"), Shape::Long),
            (format!("{a} == 3"), Shape::Long),
            (a.to_string(), Shape::Bool),
            (format!("!{a}"), Shape::Bool),
            (format!("{a} || false"), Shape::Bool),
            (format!("{a} == true"), Shape::Bool),
            (format!("if {a} then true else false"), Shape::Bool),
            (format!("{a}.contains(\"x\")"), set(Shape::String)),
            (format!("{a}.contains(2)"), set(Shape::Long)),
            (format!("{a}.containsAll([1, 2])"), set(Shape::Long)),
            (format!("{a}.containsAny([\"x\"])"), set(Shape::String)),
            (format!("{a}.isEmpty()"), set(Shape::String)),
            (format!("{a} == [true]"), set(Shape::Bool)),
            (format!("[\"x\", \"y\"].contains({a})"), Shape::String),
            (format!("[1, 2].containsAll({a})"), set(Shape::Long)),
            (format!("ip({a}).isLoopback()"), Shape::String),
            (format!("decimal({a}).lessThan(decimal(\"1.0\"))"), Shape::String),
            (format!("principal.hasTag({a})"), Shape::String),
        ] {
            assert_eq!(shape_of(&cond, "a"), shape, "{cond}");
        }
    }

    #[test]
    fn records_and_presence() {
        let s = shape_of("context.arguments has o.p && context.arguments.o.q == 1 && context.arguments has f", "o");
        let expected: BTreeMap<String, Shape> =
            [("p".to_string(), Shape::Present), ("q".to_string(), Shape::Long)].into_iter().collect();
        assert_eq!(s, Shape::Record(expected));
        assert_eq!(shape_of("context.arguments has f", "f"), Shape::Present);
        // a presence and a type: the type
        assert_eq!(shape_of("context.arguments has f && context.arguments.f", "f"), Shape::Bool);
        assert_eq!(shape_of("context.arguments[\"a b\"] == \"x\"", "a b"), Shape::String);
    }

    #[test]
    fn equalities_carry_types() {
        let (f, e) = of("context.arguments.a == context.arguments.b && context.arguments.c == context.arguments.a && \
             context.arguments.b like \"x\"");
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(f.get("a"), Some(&Shape::String));
        assert_eq!(f.get("c"), Some(&Shape::String));
        let (_, e) = of("context.arguments.a == context.arguments.b && context.arguments.a like \"x\" && \
             context.arguments.b > 1");
        assert!(e.iter().any(|m| m.contains("(a String) is compared with context.arguments.b (a Long)")), "{e:?}");
    }

    #[test]
    fn what_cannot_be_told() {
        let (_, e) = of("context.arguments.a == context.arguments.b");
        assert_eq!(e.len(), 2, "{e:?}");
        let (_, e) = of("context.arguments == {}");
        assert!(e[0].contains("not as a whole"));
        let (_, e) = of("context.arguments.a > 1 && context.arguments.a.b == 1");
        assert!(e[0].contains("as a Long and as an object"), "{e:?}");
        let (_, e) = of("context.arguments.a like \"x\" && context.arguments.a > 1");
        assert!(e[0].contains("context.arguments.a is used as a Long here and as a String in p"), "{e:?}");
        let (f, e) = of("context has arguments");
        assert!(f.is_empty() && e.is_empty());
    }
}
