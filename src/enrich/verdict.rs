//! The verdict's vocabulary: a class (`human | proxy_open:<who> | prefetch:<who> |
//! link_scanner:<who> | bot`) and the reason that decided it. Shared by the rules
//! (which name classes) and the classifier (which hands out verdicts).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Serialize, Serializer};

/// The kind of a class; `as_str` is also the metric label.
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

    pub fn index(self) -> usize {
        self as usize
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

impl FromStr for Class {
    type Err = String;

    fn from_str(text: &str) -> Result<Class, String> {
        let (kind, who) = match text.split_once(':') {
            Some((kind, who)) => (kind, Some(who)),
            None => (text, None),
        };
        let kind = ClassKind::ALL
            .into_iter()
            .find(|k| k.as_str() == kind)
            .ok_or_else(|| format!("unknown class {text:?}"))?;
        let needs_who = matches!(
            kind,
            ClassKind::ProxyOpen | ClassKind::Prefetch | ClassKind::LinkScanner
        );
        match who {
            None if needs_who => Err(format!("class {text:?} needs a `:<who>`")),
            Some(_) if kind == ClassKind::Human => Err("class \"human\" takes no `:<who>`".into()),
            Some(who) if !valid_who(who) => Err(format!(
                "{who:?} in {text:?} must be 1-32 characters of a-z, 0-9, _ - ."
            )),
            _ => Ok(Class {
                kind,
                who: who.map(Arc::from),
            }),
        }
    }
}

fn valid_who(who: &str) -> bool {
    (1..=32).contains(&who.len())
        && who
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.".contains(&b))
}

/// The class and the reason that decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub class: Class,
    pub reason: Arc<str>,
}
