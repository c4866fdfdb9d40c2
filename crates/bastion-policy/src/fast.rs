//! The conditions of policies evaluated directly over the request, without
//! building Cedar's entity store and evaluator.
//!
//! Most conditions read a few attributes and compare them: `context.arguments
//! has path && context.arguments.path like "/srv/*"`, `principal.role !=
//! "admin"`, `principal in resource.server.groups`. Cedar's evaluator answers
//! them after the entities of the request are gathered into a store, with a
//! value made (and often allocated) at every step. Here the same expression
//! is walked over borrowed values: nothing is allocated for the common
//! forms.
//!
//! The rule is that this path is never wrong, only sometimes silent:
//! [`eval`] returns `Some(b)` only where Cedar's evaluator returns the
//! boolean `b` for the same request, and `None` for whatever it does not
//! handle exactly — every error (a missing attribute, a type error, an
//! overflow), extension values and functions, record literals, template
//! slots. On `None` the caller asks Cedar, which gives the answer and the
//! wording of its error. A property test compares both on random
//! expressions, well-typed and not, and random arguments.

use cedar_policy_core::ast::{
    BinaryOp, Context, Entity, EntityUID, Expr, ExprKind, Literal, PartialValue, UnaryOp, Value, ValueKind, Var,
};

/// What a condition reads: the request's entities (the principal, the
/// target, the target's server: the whole entity store of a decision),
/// action and context.
///
/// Without a context, a condition that reads it has no value here (`None`),
/// and one that has a value has it whatever the context: that is how a
/// plan tells the conditions it can decide before the request's arguments
/// and time are known.
pub(crate) struct Env<'a> {
    pub principal: &'a Entity,
    pub action: &'a EntityUID,
    pub resource: &'a Entity,
    pub server: &'a Entity,
    pub context: Option<&'a Context>,
}

/// A value during evaluation, borrowed from the policy or the request.
#[derive(Clone, Copy)]
enum V<'a> {
    Bool(bool),
    Long(i64),
    Str(&'a str),
    Uid(&'a EntityUID),
    /// A set or a record value.
    Value(&'a Value),
    /// The context record.
    Context(&'a Context),
}

impl<'a> V<'a> {
    fn of_literal(l: &'a Literal) -> V<'a> {
        match l {
            Literal::Bool(b) => V::Bool(*b),
            Literal::Long(n) => V::Long(*n),
            Literal::String(s) => V::Str(s.as_str()),
            Literal::EntityUID(u) => V::Uid(u),
        }
    }

    /// `None` for an extension value (left to Cedar).
    fn of_value(v: &'a Value) -> Option<V<'a>> {
        match &v.value {
            ValueKind::Lit(l) => Some(V::of_literal(l)),
            ValueKind::Set(_) | ValueKind::Record(_) => Some(V::Value(v)),
            ValueKind::ExtensionValue(_) => None,
        }
    }

    fn bool(self) -> Option<bool> {
        match self {
            V::Bool(b) => Some(b),
            _ => None,
        }
    }

    fn long(self) -> Option<i64> {
        match self {
            V::Long(n) => Some(n),
            _ => None,
        }
    }

    /// Cedar's `==`: equal values of the same type; values of different
    /// types are not equal. `None` where a side is the context (which no
    /// policy can compare: Cedar would build a record).
    fn equals(self, other: V<'_>) -> Option<bool> {
        Some(match (self, other) {
            (V::Bool(a), V::Bool(b)) => a == b,
            (V::Long(a), V::Long(b)) => a == b,
            (V::Str(a), V::Str(b)) => a == b,
            (V::Uid(a), V::Uid(b)) => a == b,
            (V::Value(a), V::Value(b)) => a == b,
            (V::Context(_), _) | (_, V::Context(_)) => return None,
            _ => false,
        })
    }

    /// Does this value equal the element `x` of a set? Extension values
    /// never equal what this path handles.
    fn equals_value(self, x: &Value) -> Option<bool> {
        match V::of_value(x) {
            Some(v) => self.equals(v),
            None => Some(false),
        }
    }
}

/// The condition's value for the request, or `None` where Cedar is to be
/// asked (see the module's documentation).
pub(crate) fn eval(expr: &Expr, env: &Env) -> Option<bool> {
    value(expr, env)?.bool()
}

/// Nesting beyond this is left to Cedar (loading bounds it anyway).
const MAX_DEPTH: u32 = 64;

fn value<'a>(expr: &'a Expr, env: &Env<'a>) -> Option<V<'a>> {
    eval_at(expr, env, 0)
}

fn eval_at<'a>(expr: &'a Expr, env: &Env<'a>, depth: u32) -> Option<V<'a>> {
    if depth > MAX_DEPTH {
        return None;
    }
    let sub = |e: &'a Expr| eval_at(e, env, depth + 1);
    match expr.expr_kind() {
        ExprKind::Lit(l) => Some(V::of_literal(l)),
        ExprKind::Var(Var::Principal) => Some(V::Uid(env.principal.uid())),
        ExprKind::Var(Var::Resource) => Some(V::Uid(env.resource.uid())),
        ExprKind::Var(Var::Action) => Some(V::Uid(env.action)),
        ExprKind::Var(Var::Context) => Some(V::Context(env.context?)),
        ExprKind::If { test_expr, then_expr, else_expr } => {
            if sub(test_expr)?.bool()? {
                sub(then_expr)
            } else {
                sub(else_expr)
            }
        }
        ExprKind::And { left, right } => {
            if !sub(left)?.bool()? {
                return Some(V::Bool(false));
            }
            Some(V::Bool(sub(right)?.bool()?))
        }
        ExprKind::Or { left, right } => {
            if sub(left)?.bool()? {
                return Some(V::Bool(true));
            }
            Some(V::Bool(sub(right)?.bool()?))
        }
        ExprKind::UnaryApp { op, arg } => {
            let v = sub(arg)?;
            match op {
                UnaryOp::Not => Some(V::Bool(!v.bool()?)),
                UnaryOp::Neg => Some(V::Long(v.long()?.checked_neg()?)),
                UnaryOp::IsEmpty => match v {
                    V::Value(Value { value: ValueKind::Set(s), .. }) => Some(V::Bool(s.is_empty())),
                    _ => None,
                },
            }
        }
        ExprKind::BinaryApp { op, arg1, arg2 } => binary(*op, arg1, arg2, env, depth),
        ExprKind::GetAttr { expr, attr } => match sub(expr)? {
            V::Value(Value { value: ValueKind::Record(r), .. }) => V::of_value(r.get(attr)?),
            V::Context(Context::Value(r)) => V::of_value(r.get(attr)?),
            V::Uid(uid) => match env.entity(uid)?.get(attr)? {
                PartialValue::Value(v) => V::of_value(v),
                PartialValue::Residual(_) => None,
            },
            _ => None,
        },
        ExprKind::HasAttr { expr, attr } => match sub(expr)? {
            V::Value(Value { value: ValueKind::Record(r), .. }) => Some(V::Bool(r.contains_key(attr))),
            V::Context(Context::Value(r)) => Some(V::Bool(r.contains_key(attr))),
            // an entity the request does not hold has no attributes
            V::Uid(uid) => Some(V::Bool(env.entity(uid).is_some_and(|e| e.get(attr).is_some()))),
            _ => None,
        },
        ExprKind::Like { expr, pattern } => match sub(expr)? {
            V::Str(s) => Some(V::Bool(pattern.wildcard_match(s))),
            _ => None,
        },
        ExprKind::Is { expr, entity_type } => match sub(expr)? {
            V::Uid(uid) => Some(V::Bool(uid.entity_type() == entity_type)),
            _ => None,
        },
        // set literals only as operands of `in` and `contains…` (below);
        // records, extension functions, slots, unknowns: Cedar's
        _ => None,
    }
}

/// The elements of a set: a set value, or a set literal of the policy
/// evaluated element by element.
enum Elements<'a> {
    Value(&'a cedar_policy_core::ast::Set),
    Literal(Vec<V<'a>>),
}

impl<'a> Elements<'a> {
    fn of(expr: &'a Expr, env: &Env<'a>, depth: u32) -> Option<Elements<'a>> {
        match expr.expr_kind() {
            ExprKind::Set(items) => {
                let mut out = Vec::with_capacity(items.len());
                for e in items.iter() {
                    out.push(eval_at(e, env, depth + 1)?);
                }
                Some(Elements::Literal(out))
            }
            _ => match eval_at(expr, env, depth + 1)? {
                V::Value(Value { value: ValueKind::Set(s), .. }) => Some(Elements::Value(s)),
                _ => None,
            },
        }
    }

    /// Calls `f` on every element; stops at the first `Some(true)`, or at
    /// `None` (which it returns).
    fn any(&self, mut f: impl FnMut(Element<'_, 'a>) -> Option<bool>) -> Option<bool> {
        match self {
            Elements::Value(s) => {
                for x in s.iter() {
                    if f(Element::Value(x))? {
                        return Some(true);
                    }
                }
            }
            Elements::Literal(items) => {
                for v in items {
                    if f(Element::V(*v))? {
                        return Some(true);
                    }
                }
            }
        }
        Some(false)
    }

    /// Does the set hold a value equal to `v`?
    fn contains(&self, v: V<'_>) -> Option<bool> {
        self.any(|x| x.equals(v))
    }
}

/// One element of [`Elements`].
enum Element<'s, 'a> {
    Value(&'s Value),
    V(V<'a>),
}

impl Element<'_, '_> {
    fn equals(&self, v: V<'_>) -> Option<bool> {
        match self {
            Element::Value(x) => v.equals_value(x),
            Element::V(x) => x.equals(v),
        }
    }

    fn uid(&self) -> Option<&EntityUID> {
        match self {
            Element::Value(Value { value: ValueKind::Lit(Literal::EntityUID(u)), .. }) => Some(u),
            Element::V(V::Uid(u)) => Some(u),
            _ => None,
        }
    }

    fn as_v(&self) -> Option<V<'_>> {
        match self {
            Element::Value(x) => V::of_value(x),
            Element::V(v) => Some(*v),
        }
    }
}

fn binary<'a>(op: BinaryOp, arg1: &'a Expr, arg2: &'a Expr, env: &Env<'a>, depth: u32) -> Option<V<'a>> {
    let sub = |e: &'a Expr| eval_at(e, env, depth + 1);
    match op {
        BinaryOp::Eq => Some(V::Bool(sub(arg1)?.equals(sub(arg2)?)?)),
        BinaryOp::Less => Some(V::Bool(sub(arg1)?.long()? < sub(arg2)?.long()?)),
        BinaryOp::LessEq => Some(V::Bool(sub(arg1)?.long()? <= sub(arg2)?.long()?)),
        BinaryOp::Add => Some(V::Long(sub(arg1)?.long()?.checked_add(sub(arg2)?.long()?)?)),
        BinaryOp::Sub => Some(V::Long(sub(arg1)?.long()?.checked_sub(sub(arg2)?.long()?)?)),
        BinaryOp::Mul => Some(V::Long(sub(arg1)?.long()?.checked_mul(sub(arg2)?.long()?)?)),
        BinaryOp::In => {
            let V::Uid(uid1) = sub(arg1)? else { return None };
            // an entity the request does not hold has no ancestors
            let entity1 = env.entity(uid1);
            let within = |uid2: &EntityUID| uid1 == uid2 || entity1.is_some_and(|e| e.is_descendant_of(uid2));
            let set = match arg2.expr_kind() {
                ExprKind::Set(_) => Elements::of(arg2, env, depth)?,
                _ => match sub(arg2)? {
                    V::Uid(uid2) => return Some(V::Bool(within(uid2))),
                    V::Value(Value { value: ValueKind::Set(s), .. }) => Elements::Value(s),
                    _ => return None,
                },
            };
            // Cedar refuses a set with anything but entities in it, even
            // after an element that matches
            if set.any(|x| Some(x.uid().is_none()))? {
                return None;
            }
            set.any(|x| Some(within(x.uid()?))).map(V::Bool)
        }
        BinaryOp::Contains => {
            let set = match sub(arg1)? {
                V::Value(Value { value: ValueKind::Set(s), .. }) => Elements::Value(s),
                _ => return None,
            };
            let v = sub(arg2)?;
            Some(V::Bool(set.contains(v)?))
        }
        BinaryOp::ContainsAll | BinaryOp::ContainsAny => {
            let whole = Elements::of(arg1, env, depth)?;
            let part = Elements::of(arg2, env, depth)?;
            let all = op == BinaryOp::ContainsAll;
            // containsAll: no element of `part` missing from `whole`;
            // containsAny: some element of `part` in `whole`
            let found = part.any(|x| {
                let held = whole.contains(x.as_v()?)?;
                Some(if all { !held } else { held })
            })?;
            Some(V::Bool(if all { !found } else { found }))
        }
        // entity tags, and whatever a later Cedar adds: Cedar's
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

impl<'a> Env<'a> {
    /// The entity with this UID in the request, if it holds one.
    fn entity(&self, uid: &EntityUID) -> Option<&'a Entity> {
        [self.principal, self.resource, self.server].into_iter().find(|e| e.uid() == uid)
    }
}
