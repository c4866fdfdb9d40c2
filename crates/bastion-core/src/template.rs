//! Templates in a server's `env` and `headers`: where a user's or a
//! server's secret, or a value of the gateway's own environment, goes.
//!
//! ```text
//! GITHUB_TOKEN: ${user.GITHUB_TOKEN}          # the calling user's secret
//! Authorization: Bearer ${server.API_KEY}     # the server's secret, shared by all users
//! HTTPS_PROXY: ${env.HTTPS_PROXY}             # the gateway's environment, named explicitly
//! PRICE: $${not a template}                   # `$${` is a literal `${`
//! ```
//!
//! A `$` not followed by `{` is literal, so values written for other tools
//! keep their meaning; `${…}` that is not one of the three forms is an
//! error rather than being passed on as text (a `${HOME}` written for
//! another tool would otherwise reach a server unexpanded, or be taken for
//! an expansion it is not). Rendering hands back a buffer that is zeroized
//! when dropped; errors name the reference, never a value.

use std::fmt;

use zeroize::Zeroizing;

/// Longest name a reference may carry.
pub const MAX_NAME: usize = 128;

/// Where a reference's value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    /// The calling user's secret in the vault.
    User,
    /// The server's own secret in the vault, the same for every user.
    Server,
    /// The gateway's own environment.
    Env,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::User => "user",
            Source::Server => "server",
            Source::Env => "env",
        }
    }
}

/// One `${source.NAME}`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ref {
    pub source: Source,
    pub name: String,
}

impl fmt::Display for Ref {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "${{{}.{}}}", self.source.as_str(), self.name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Ref(Ref),
}

/// A parsed value: text and references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

/// Why a value is not a valid template.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("`${{` at byte {at} is not closed by `}}`")]
    Unclosed { at: usize },
    #[error(
        "`${{{inner}}}` is not a reference: write `${{user.NAME}}`, `${{server.NAME}}` or `${{env.NAME}}` (or `$${{` for a literal `${{`)"
    )]
    NoSource { inner: String },
    #[error("`${{{origin}.…}}`: unknown source {origin:?}; the sources are `user`, `server` and `env`")]
    UnknownSource { origin: String },
    #[error(
        "`${{{origin}.{name}}}`: a name is letters, digits and `_`, not starting with a digit, at most {MAX_NAME} characters"
    )]
    BadName { origin: &'static str, name: String },
}

/// Whether `name` may name a secret or an environment variable.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= MAX_NAME
}

impl Template {
    /// Parses a value from the configuration.
    pub fn parse(s: &str) -> Result<Template, TemplateError> {
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut rest = s;
        let mut offset = 0;
        while let Some(i) = rest.find('$') {
            let after = &rest[i + 1..];
            if let Some(tail) = after.strip_prefix("${") {
                // `$${` is a literal `${`.
                text.push_str(&rest[..i]);
                text.push_str("${");
                offset += i + 3;
                rest = tail;
                continue;
            }
            let Some(body) = after.strip_prefix('{') else {
                text.push_str(&rest[..=i]);
                offset += i + 1;
                rest = after;
                continue;
            };
            let end = body.find('}').ok_or(TemplateError::Unclosed { at: offset + i })?;
            let inner = &body[..end];
            let r = parse_ref(inner)?;
            text.push_str(&rest[..i]);
            if !text.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut text)));
            }
            parts.push(Part::Ref(r));
            offset += i + 2 + end + 1;
            rest = &body[end + 1..];
        }
        text.push_str(rest);
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        Ok(Template { parts })
    }

    /// The references, in order (a reference used twice is listed twice).
    pub fn refs(&self) -> impl Iterator<Item = &Ref> {
        self.parts.iter().filter_map(|p| match p {
            Part::Ref(r) => Some(r),
            Part::Text(_) => None,
        })
    }

    /// Whether the value refers to a user's secret: a process or connection
    /// that carries it serves that user alone.
    pub fn per_user(&self) -> bool {
        self.refs().any(|r| r.source == Source::User)
    }

    /// The value with each reference replaced by what `lookup` gives; the
    /// first reference it cannot resolve is the error.
    pub fn render<E>(
        &self,
        mut lookup: impl FnMut(&Ref) -> Result<Zeroizing<String>, E>,
    ) -> Result<Zeroizing<String>, E> {
        let mut out = Zeroizing::new(String::new());
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Ref(r) => {
                    let v = lookup(r)?;
                    out.push_str(&v);
                }
            }
        }
        Ok(out)
    }

    /// The value when it has no reference (`$${` already unescaped).
    pub fn as_literal(&self) -> Option<String> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Ref(_) => return None,
            }
        }
        Some(out)
    }
}

fn parse_ref(inner: &str) -> Result<Ref, TemplateError> {
    let Some((source, name)) = inner.split_once('.') else {
        return Err(TemplateError::NoSource { inner: inner.chars().take(MAX_NAME).collect() });
    };
    let source = match source.trim() {
        "user" => Source::User,
        "server" => Source::Server,
        "env" => Source::Env,
        other => return Err(TemplateError::UnknownSource { origin: other.chars().take(MAX_NAME).collect() }),
    };
    if !valid_name(name) {
        return Err(TemplateError::BadName { origin: source.as_str(), name: name.chars().take(MAX_NAME).collect() });
    }
    Ok(Ref { source, name: name.to_string() })
}

/// Whether a value contains anything that looks like a reference, escaped
/// or not, valid or not: what `args` may not hold, since a process's
/// arguments are visible to every user of the machine.
pub fn mentions_reference(s: &str) -> bool {
    s.contains("${")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(source: Source, name: &str) -> Ref {
        Ref { source, name: name.into() }
    }

    fn render(t: &Template) -> String {
        t.render(|r| Ok::<_, ()>(Zeroizing::new(format!("<{}:{}>", r.source.as_str(), r.name)))).unwrap().to_string()
    }

    #[test]
    fn references_and_text() {
        let t = Template::parse("Bearer ${user.GITHUB_TOKEN} and ${server.K}${env.HOME}!").unwrap();
        assert_eq!(
            t.refs().cloned().collect::<Vec<_>>(),
            vec![r(Source::User, "GITHUB_TOKEN"), r(Source::Server, "K"), r(Source::Env, "HOME")]
        );
        assert!(t.per_user());
        assert_eq!(render(&t), "Bearer <user:GITHUB_TOKEN> and <server:K><env:HOME>!");
        assert_eq!(t.as_literal(), None);
    }

    #[test]
    fn literal_dollars() {
        for (input, out) in [
            ("plain", "plain"),
            ("", ""),
            ("$", "$"),
            ("a$b", "a$b"),
            ("cost $5", "cost $5"),
            ("$$", "$$"),
            ("$${x}", "${x}"),
            ("a$${user.X}b", "a${user.X}b"),
            ("$$$", "$$$"),
            ("ends with $", "ends with $"),
        ] {
            let t = Template::parse(input).unwrap();
            assert_eq!(t.as_literal().as_deref(), Some(out), "{input}");
            assert!(!t.per_user());
            assert_eq!(render(&t), out);
        }
    }

    #[test]
    fn errors_name_the_problem() {
        assert_eq!(Template::parse("x ${user.A").unwrap_err(), TemplateError::Unclosed { at: 2 });
        assert!(matches!(Template::parse("${HOME}").unwrap_err(), TemplateError::NoSource { .. }));
        assert!(Template::parse("${HOME}").unwrap_err().to_string().contains("${env.NAME}"));
        assert!(matches!(Template::parse("${vault.A}").unwrap_err(), TemplateError::UnknownSource { .. }));
        for bad in ["${user.}", "${user.1A}", "${user.A-B}", "${user.A B}", "${env.A.B}"] {
            assert!(matches!(Template::parse(bad).unwrap_err(), TemplateError::BadName { .. }), "{bad}");
        }
        let long = format!("${{user.{}}}", "A".repeat(MAX_NAME + 1));
        assert!(matches!(Template::parse(&long).unwrap_err(), TemplateError::BadName { .. }));
        assert!(Template::parse(&format!("${{user.{}}}", "A".repeat(MAX_NAME))).is_ok());
    }

    #[test]
    fn a_failed_lookup_is_the_error() {
        let t = Template::parse("${server.A}-${user.B}").unwrap();
        let e = t
            .render(|r| match r.source {
                Source::User => Err(r.to_string()),
                _ => Ok(Zeroizing::new("a".into())),
            })
            .unwrap_err();
        assert_eq!(e, "${user.B}");
    }

    #[test]
    fn names() {
        assert!(valid_name("GITHUB_TOKEN"));
        assert!(valid_name("_x1"));
        assert!(!valid_name(""));
        assert!(!valid_name("1x"));
        assert!(!valid_name("é"));
        assert!(mentions_reference("--token=${user.T}"));
        assert!(mentions_reference("$${x}"));
        assert!(!mentions_reference("$HOME"));
    }

    proptest::proptest! {
        #[test]
        fn parsing_never_panics(s in "[a-z${}._A-Z0-9 ]{0,40}") {
            let _ = Template::parse(&s);
        }

        #[test]
        fn escaped_text_is_literal(s in "[a-z${}._A-Z0-9 ]{0,40}") {
            let t = Template::parse(&s.replace("${", "$${")).unwrap();
            proptest::prop_assert_eq!(t.as_literal(), Some(s));
        }

        #[test]
        fn references_render_back(s in "[a-z${}._A-Z0-9 ]{0,40}") {
            if let Ok(t) = Template::parse(&s) {
                // Each reference rendered as itself, escaped text, parses
                // to the same template.
                let mut again = String::new();
                for p in &t.parts {
                    match p {
                        Part::Text(x) => again.push_str(&x.replace("${", "$${")),
                        Part::Ref(r) => again.push_str(&r.to_string()),
                    }
                }
                proptest::prop_assert_eq!(Template::parse(&again).unwrap(), t);
            }
        }
    }
}
