//! User agents: the header cut to a bounded length, parsed with woothee, behind a
//! bounded concurrent cache because a few thousand strings make up nearly all
//! traffic.
//!
//! Input: the raw `User-Agent` bytes. Output: an [`Arc`] of what the caller derives
//! from the parsed agent (the [`Client`] plus anything else that depends on the
//! string alone, such as its classification), shared by every request with the same
//! string. Invariants: a string is cut to `max_bytes` (on a character boundary,
//! invalid UTF-8 replaced) before it is parsed or used as a key, so neither the
//! parser nor the cache ever sees more; the cache holds at most `cache_entries`
//! strings ([`TwoGen`]) and counts hits, misses and evictions.

use std::borrow::Cow;
use std::sync::Arc;

use metrics::Counter;
use serde::Serialize;

use super::twogen::TwoGen;
use crate::metrics as m;

/// What woothee tells about an agent. Empty fields are left out of the event.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Client {
    #[serde(skip_serializing_if = "str::is_empty")]
    pub browser: Box<str>,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub version: Box<str>,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub os: Box<str>,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub os_version: Box<str>,
    /// woothee's category: pc, smartphone, mobilephone, appliance, crawler, misc.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub category: Box<str>,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub vendor: Box<str>,
}

impl Client {
    pub fn is_crawler(&self) -> bool {
        &*self.category == "crawler"
    }
}

fn known(value: &str) -> Box<str> {
    if value == woothee::woothee::VALUE_UNKNOWN {
        Box::from("")
    } else {
        Box::from(value)
    }
}

/// Parses one (already cut) agent string.
pub fn parse(ua: &str) -> Client {
    match woothee::parser::Parser::new().parse(ua) {
        Some(r) => Client {
            browser: known(r.name),
            version: known(r.version),
            os: known(r.os),
            os_version: known(&r.os_version),
            category: known(r.category),
            vendor: known(r.vendor),
        },
        None => Client::default(),
    }
}

/// At most `max` bytes of `raw` as text, cut on a character boundary, each invalid
/// UTF-8 sequence replaced by U+FFFD. A replacement takes three bytes where the
/// invalid one took one, so the text is cut back to `max` after replacing.
pub fn cut(raw: &[u8], max: usize) -> Cow<'_, str> {
    let head = &raw[..raw.len().min(max)];
    let valid = match std::str::from_utf8(head) {
        Ok(text) => return Cow::Borrowed(text),
        // Only the last character is incomplete: the cut split it.
        Err(err) if err.error_len().is_none() => err.valid_up_to(),
        Err(_) => head.len(),
    };
    let mut text = String::from_utf8_lossy(&head[..valid]);
    if text.len() > max {
        let end = (0..=max)
            .rev()
            .find(|end| text.is_char_boundary(*end))
            .unwrap_or(0);
        text.to_mut().truncate(end);
    }
    text
}

/// One cached agent: the cut string (shared with every event that carries it) and
/// what was derived from it.
#[derive(Debug)]
pub struct Parsed<T> {
    pub ua: Arc<str>,
    pub facts: T,
}

pub struct UaCache<T> {
    entries: TwoGen<Arc<str>, Arc<Parsed<T>>>,
    max_bytes: usize,
    hits: Counter,
    misses: Counter,
    evictions: Counter,
}

impl<T> UaCache<T> {
    pub fn new(entries: usize, max_bytes: usize) -> UaCache<T> {
        let lookup = |result: &'static str| metrics::counter!(m::ENRICH_UA_CACHE_LOOKUPS_TOTAL, "result" => result);
        let evictions = metrics::counter!(m::ENRICH_UA_CACHE_EVICTIONS_TOTAL);
        evictions.absolute(0);
        let (hits, misses) = (lookup("hit"), lookup("miss"));
        hits.absolute(0);
        misses.absolute(0);
        UaCache {
            entries: TwoGen::new(entries, None, 0),
            max_bytes,
            hits,
            misses,
            evictions,
        }
    }

    /// The cached facts for `raw`, computing them with `derive` on a miss.
    pub fn get(&self, raw: &[u8], derive: impl FnOnce(&str) -> T) -> Arc<Parsed<T>> {
        self.get_current(raw, |_| true, derive)
    }

    /// As [`UaCache::get`], but cached facts for which `current` is false (derived
    /// from rules since replaced) are derived again and replace the entry.
    pub fn get_current(
        &self,
        raw: &[u8],
        current: impl FnOnce(&T) -> bool,
        derive: impl FnOnce(&str) -> T,
    ) -> Arc<Parsed<T>> {
        let ua = cut(raw, self.max_bytes);
        if let Some(found) = self.entries.get(&*ua, |key: &str| Arc::from(key)) {
            // A hit in the previous generation copies the entry forward, which fills
            // the current one just as an insert does.
            self.rotate();
            if current(&found.facts) {
                self.hits.increment(1);
                return found;
            }
        }
        self.misses.increment(1);
        let ua: Arc<str> = Arc::from(ua);
        let parsed = Arc::new(Parsed {
            facts: derive(&ua),
            ua: ua.clone(),
        });
        self.entries.insert(ua, parsed.clone());
        self.rotate();
        parsed
    }

    fn rotate(&self) {
        if let Some(rotated) = self.entries.maybe_rotate(0) {
            self.evictions.increment(rotated.dropped as u64);
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_browser_os_and_category() {
        let c = parse("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36");
        assert_eq!(&*c.browser, "Chrome");
        assert_eq!(&*c.version, "124.0.0.0");
        assert_eq!(&*c.os, "Windows 10");
        assert_eq!(&*c.category, "pc");
        assert_eq!(&*c.vendor, "Google");
        assert!(!c.is_crawler());
        let bot = parse("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)");
        assert!(bot.is_crawler());
        assert_eq!(parse(""), Client::default());
    }

    #[test]
    fn cache_hits_after_the_first_parse_and_stays_bounded() {
        let cache: UaCache<Client> = UaCache::new(64, 512);
        let ua = b"Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15";
        let mut parses = 0;
        let first = cache.get(ua, |s| {
            parses += 1;
            parse(s)
        });
        let again = cache.get(ua, |_| unreachable!("cached"));
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(parses, 1);
        for n in 0..10_000 {
            cache.get(format!("agent {n}").as_bytes(), parse);
        }
        assert!(cache.len() <= 66, "{}", cache.len());
    }

    #[test]
    fn hits_that_copy_entries_forward_keep_the_cache_within_its_size() {
        // The fuzz input (ua_cache, minimized from crash-ad897614): agents a, b, c, a,
        // b in a cache of 4 held 5, the hits on a and b having copied them forward
        // into a generation that only a miss would rotate.
        let cache: UaCache<()> = UaCache::new(4, 9);
        for raw in [
            &b"\xff\xff\xff"[..],
            b"curl/8.",
            b"",
            b"\xff\xff\xff",
            b"curl/8.",
        ] {
            cache.get(raw, |_| ());
            assert!(cache.len() <= 4, "{} entries", cache.len());
        }
        // A growing working set that is hit again and again: without rotations on
        // hits, every agent stayed.
        let cache: UaCache<()> = UaCache::new(64, 512);
        for n in 0..500 {
            for m in 0..=n {
                cache.get(format!("agent {m}").as_bytes(), |_| ());
            }
            assert!(cache.len() <= 64, "{} entries after {n}", cache.len());
        }
    }

    #[test]
    fn stale_facts_are_derived_again_in_place() {
        let cache: UaCache<u32> = UaCache::new(64, 512);
        assert_eq!(cache.get(b"agent", |_| 1).facts, 1);
        assert_eq!(cache.get_current(b"agent", |v| *v == 1, |_| 2).facts, 1);
        assert_eq!(cache.get_current(b"agent", |v| *v == 2, |_| 2).facts, 2);
        assert_eq!(cache.get(b"agent", |_| unreachable!("cached")).facts, 2);
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn oversized_agents_are_cut_before_parsing_and_caching() {
        let cache: UaCache<usize> = UaCache::new(64, 512);
        let huge = vec![b'a'; 64 * 1024];
        let parsed = cache.get(&huge, |s| s.len());
        assert_eq!(parsed.facts, 512);
        assert_eq!(parsed.ua.len(), 512);
        let multi = format!("a{}", "é".repeat(1000));
        let parsed = cache.get(multi.as_bytes(), |s| s.len());
        assert_eq!(parsed.ua.len(), 511, "cut before the split character");
        assert!(parsed.ua.ends_with('é'));
    }

    #[test]
    fn invalid_bytes_are_replaced_without_passing_the_limit() {
        // The start of the fuzz input (ua_cache, crash-0c7ead20) whose cut came out
        // as "Mozil\u{fffd}a/5": 11 bytes for a limit of 9.
        let raw = b"Mozil\xffa/5.0 (iPhone; CPU iPione OS 17_k 5lke Mac OS X)";
        assert_eq!(cut(raw, 9), "Mozil\u{fffd}a");
        // Every byte invalid: three bytes of text for each, cut back to the limit.
        let raw = [0xff; 512];
        let text = cut(&raw, 512);
        assert_eq!(text.len(), 510);
        assert!(text.chars().all(|c| c == '\u{fffd}'));
        // Valid text is borrowed, cut on a character boundary.
        assert!(matches!(cut("añb".as_bytes(), 2), Cow::Borrowed("a")));
        assert_eq!(cut(b"", 9), "");
        assert_eq!(cut("😀".as_bytes(), 3), "");
    }
}
