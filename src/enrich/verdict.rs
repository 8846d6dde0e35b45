//! What classification answers: a class family, whose traffic it is, the reason that
//! decided it and how sure the edge is.
//!
//! Used by [`super::rules`] (a rule carries the verdict it gives), by
//! [`super::classify`] (which picks one per hit) and by the event. Kept apart from
//! both so that the rules do not import the classifier that uses them. A verdict is
//! a plain value: relabelling an event later (a burst, a trap) means building a new
//! one with [`Verdict::new`], never patching one in place.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use metrics::Counter;
use serde::{Serialize, Serializer};

/// The family of a class; `as_str` is also the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClassKind {
    Human,
    ProxyOpen,
    Prefetch,
    LinkScanner,
    Bot,
}

impl ClassKind {
    pub const ALL: [ClassKind; 5] = [
        ClassKind::Human,
        ClassKind::ProxyOpen,
        ClassKind::Prefetch,
        ClassKind::LinkScanner,
        ClassKind::Bot,
    ];

    /// Also the `class` metric label (without the `<who>`, which is unbounded).
    pub fn as_str(self) -> &'static str {
        match self {
            ClassKind::Human => "human",
            ClassKind::ProxyOpen => "proxy_open",
            ClassKind::Prefetch => "prefetch",
            ClassKind::LinkScanner => "link_scanner",
            ClassKind::Bot => "bot",
        }
    }

    pub fn parse(name: &str) -> Option<ClassKind> {
        ClassKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// Proxies, prefetchers and scanners always say whose they are.
    pub fn needs_who(self) -> bool {
        matches!(
            self,
            ClassKind::ProxyOpen | ClassKind::Prefetch | ClassKind::LinkScanner
        )
    }
}

/// How sure the edge is of a verdict. `certain`: the request names its origin beyond
/// reasonable doubt (a vendor's published network and agent, a self-declared crawler,
/// a HEAD or a missing agent, which no person's client sends). `probable`: strong
/// evidence that a person could, rarely, produce too (timing, an agent that only looks
/// odd, a person's browser recognised by its agent alone).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Certainty {
    Certain,
    Probable,
}

impl Certainty {
    pub const ALL: [Certainty; 2] = [Certainty::Certain, Certainty::Probable];

    /// Also the `certainty` metric label and the event field.
    pub fn as_str(self) -> &'static str {
        match self {
            Certainty::Certain => "certain",
            Certainty::Probable => "probable",
        }
    }

    pub fn parse(name: &str) -> Option<Certainty> {
        Certainty::ALL.into_iter().find(|c| c.as_str() == name)
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

impl Serialize for Certainty {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// A class and, for proxies, prefetchers and scanners, whose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Class {
    pub kind: ClassKind,
    pub who: Option<Arc<str>>,
}

impl Class {
    pub const HUMAN: Class = Class {
        kind: ClassKind::Human,
        who: None,
    };
    pub const BOT: Class = Class {
        kind: ClassKind::Bot,
        who: None,
    };

    pub fn new(kind: ClassKind, who: &str) -> Class {
        Class {
            kind,
            who: Some(Arc::from(who)),
        }
    }

    /// A family and an optional `who`, checked as a rule file's `class` and `who`.
    pub fn checked(kind: ClassKind, who: Option<&str>) -> Result<Class, String> {
        match who {
            None if kind.needs_who() => Err(format!("class {:?} needs a `who`", kind.as_str())),
            Some(_) if kind == ClassKind::Human => Err("class \"human\" takes no `who`".into()),
            Some(who) if !valid_who(who) => Err(format!(
                "who {who:?} must be 1-32 characters of a-z, 0-9, _ - ."
            )),
            _ => Ok(Class {
                kind,
                who: who.map(Arc::from),
            }),
        }
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind.as_str())?;
        if let Some(who) = &self.who {
            write!(f, ":{who}")?;
        }
        Ok(())
    }
}

impl Serialize for Class {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// The event's form, `<family>` or `<family>:<who>`.
impl FromStr for Class {
    type Err = String;

    fn from_str(text: &str) -> Result<Class, String> {
        let (kind, who) = match text.split_once(':') {
            Some((kind, who)) => (kind, Some(who)),
            None => (text, None),
        };
        let kind = ClassKind::parse(kind).ok_or_else(|| format!("unknown class {text:?}"))?;
        Class::checked(kind, who)
    }
}

/// Slugs and reasons: short, lower-case, safe as a metric label and in a class.
pub fn valid_who(who: &str) -> bool {
    valid_name(who, 32)
}

/// 1..=`max` characters of a-z, 0-9, `_`, `-`, `.`.
pub fn valid_name(name: &str, max: usize) -> bool {
    (1..=max).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.".contains(&b))
}

/// The class, the reason that decided it (a rule's name or one of the engine's own)
/// and the certainty. `hits` counts the reason in
/// `trackedge_classify_rule_hits_total`; it is registered when the reason is (at
/// compile time), so counting a hit never touches the registry.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub class: Class,
    pub reason: Arc<str>,
    pub certainty: Certainty,
    pub hits: Counter,
}

impl Verdict {
    pub fn new(class: Class, reason: &str, certainty: Certainty) -> Verdict {
        Verdict {
            hits: metrics::counter!(crate::metrics::CLASSIFY_RULE_HITS_TOTAL, "reason" => reason.to_owned()),
            class,
            reason: Arc::from(reason),
            certainty,
        }
    }
}

impl PartialEq for Verdict {
    fn eq(&self, other: &Verdict) -> bool {
        (&self.class, &self.reason, self.certainty)
            == (&other.class, &other.reason, other.certainty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_print_and_parse() {
        for text in [
            "human",
            "bot",
            "bot:spider",
            "proxy_open:gmail",
            "link_scanner:a.b-c_1",
        ] {
            assert_eq!(text.parse::<Class>().unwrap().to_string(), text);
        }
        for bad in ["human:x", "proxy_open", "robot", "prefetch:Big Co", ""] {
            assert!(bad.parse::<Class>().is_err(), "{bad}");
        }
    }

    #[test]
    fn names_are_short_lower_case_slugs() {
        assert!(valid_name("apple-mpp_v2.1", 64));
        for bad in ["", "Apple", "a b", "ä", &"x".repeat(65)] {
            assert!(!valid_name(bad, 64), "{bad}");
        }
    }
}
