//! Channel patterns: which topic names a rule or a token's claims cover.
//!
//! A topic name is split into segments at `:` (`news:sports:uk` has three). A pattern is
//! split the same way, and each of its segments is one of:
//!
//! | segment | matches |
//! | --- | --- |
//! | text without `*`, `{`, `}` | exactly that segment |
//! | text with `*` (e.g. `price-*`, `*`) | one segment; each `*` stands for one or more characters (never `:`) |
//! | `{sub}` | one segment equal to the connection's user id (never for an anonymous connection, nor for a user id that is empty or contains `:`) |
//! | `**` | one or more whole segments, of any content |
//!
//! So `news:*` matches `news:uk` but neither `news:` nor `news:uk:london`; `news:**`
//! matches both of the latter's kind; `user:{sub}` matches `user:alice` for alice only.
//! `{sub}` and `**` must be whole segments, and `{`, `}` appear nowhere else. Matching is
//! linear in practice (the classic wildcard walk, once over segments and once within
//! each), allocates nothing and cannot panic.

use std::fmt;

/// Longest pattern (and topic) accepted, in bytes.
pub const MAX_LEN: usize = 256;

/// A compiled pattern.
#[derive(Clone, PartialEq, Eq)]
pub struct Pattern {
    source: Box<str>,
    segments: Box<[Segment]>,
    /// The segment-level walk: each step and the segment it stands for.
    steps: Box<[(Step, u16)]>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// Bytes and wildcards within one segment.
    Glob(Box<[Step]>),
    /// `{sub}`.
    Subject,
    /// `**`.
    Rest,
}

/// One step of a glob walk. The same walk serves bytes within a segment and segments
/// within a topic; every step takes exactly one element except `ZeroOrMore`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// This byte (within a segment), or "ask the segment" (over segments).
    One(u8),
    /// Any one element (a `*` is `Any` then `ZeroOrMore`: one or more).
    Any,
    /// Any run of elements, none included.
    ZeroOrMore,
}

/// Whose view a topic is matched from: `{sub}` binds to the user id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who<'a> {
    /// An authenticated user.
    User(&'a str),
    /// A connection without an identity: `{sub}` matches nothing.
    Anonymous,
    /// Any user: `{sub}` matches any non-empty segment (which rule governs a topic).
    AnyUser,
}

/// Why a pattern does not compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// The pattern is empty.
    #[error("a channel pattern cannot be empty")]
    Empty,
    /// The pattern is longer than [`MAX_LEN`].
    #[error("a channel pattern is at most {MAX_LEN} bytes")]
    TooLong,
    /// A placeholder other than `{sub}`, or braces inside a segment.
    #[error("{0:?}: the only placeholder is {{sub}}, as a whole segment")]
    Placeholder(String),
    /// `**` inside a segment.
    #[error("{0:?}: ** must be a whole segment (one or more segments)")]
    Rest(String),
}

impl Pattern {
    /// Compiles `source`.
    pub fn parse(source: &str) -> Result<Pattern, PatternError> {
        if source.is_empty() {
            return Err(PatternError::Empty);
        }
        if source.len() > MAX_LEN {
            return Err(PatternError::TooLong);
        }
        let segments = source
            .split(':')
            .map(|segment| match segment {
                "**" => Ok(Segment::Rest),
                "{sub}" => Ok(Segment::Subject),
                _ if segment.contains(['{', '}']) => Err(PatternError::Placeholder(source.to_owned())),
                _ if segment.contains("**") => Err(PatternError::Rest(source.to_owned())),
                _ => Ok(Segment::Glob(glob_steps(segment))),
            })
            .collect::<Result<Box<[Segment]>, PatternError>>()?;
        let mut steps = Vec::with_capacity(segments.len() + 1);
        for (index, segment) in segments.iter().enumerate() {
            // At most 129 segments in 256 bytes.
            let index = index as u16;
            match segment {
                Segment::Rest => steps.extend([(Step::Any, index), (Step::ZeroOrMore, index)]),
                _ => steps.push((Step::One(0), index)),
            }
        }
        Ok(Pattern { source: source.into(), segments, steps: steps.into_boxed_slice() })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the pattern uses `{sub}`.
    pub fn has_subject(&self) -> bool {
        self.segments.contains(&Segment::Subject)
    }

    /// Whether `topic` matches, with `{sub}` bound as `who` says.
    pub fn matches(&self, topic: &str, who: Who<'_>) -> bool {
        if topic.len() > MAX_LEN {
            return false;
        }
        // Where each of the topic's segments starts (one past its ':'), and the end.
        let mut starts = [0u16; MAX_LEN + 2];
        let mut count = 1;
        for (at, byte) in topic.bytes().enumerate() {
            if byte == b':' {
                starts[count] = at as u16 + 1;
                count += 1;
            }
        }
        starts[count] = topic.len() as u16 + 1;
        let segment = |j: usize| &topic[usize::from(starts[j])..usize::from(starts[j + 1]) - 1];
        let subject = match who {
            Who::User(user) if !user.is_empty() && !user.contains(':') => Some(Some(user)),
            Who::User(_) | Who::Anonymous => None,
            Who::AnyUser => Some(None),
        };
        walk(
            self.steps.len(),
            count,
            |i| self.steps[i].0,
            |i, j| match &self.segments[usize::from(self.steps[i].1)] {
                Segment::Glob(steps) => {
                    let text = segment(j).as_bytes();
                    walk(steps.len(), text.len(), |k| steps[k], |k, l| steps[k] == Step::One(text[l]))
                }
                Segment::Subject => match subject {
                    Some(Some(user)) => segment(j) == user,
                    Some(None) => !segment(j).is_empty(),
                    None => false,
                },
                Segment::Rest => true,
            },
        )
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({:?})", self.source)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl<'de> serde::Deserialize<'de> for Pattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Pattern::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// `*` → any one byte, then any number more.
fn glob_steps(segment: &str) -> Box<[Step]> {
    let mut steps = Vec::with_capacity(segment.len() + 1);
    for &byte in segment.as_bytes() {
        if byte == b'*' {
            steps.extend([Step::Any, Step::ZeroOrMore]);
        } else {
            steps.push(Step::One(byte));
        }
    }
    steps.into_boxed_slice()
}

/// The classic wildcard walk over `steps` pattern steps and `len` elements: `kind(i)` is
/// step `i`, and `one(i, j)` whether the `One` step `i` takes element `j` (`Any` takes
/// any element, `ZeroOrMore` any run). Remembering only the last `ZeroOrMore` is enough
/// because every other step takes exactly one element: a later run can always absorb
/// what an earlier one would have. At most `steps × len` calls of `one`.
fn walk(steps: usize, len: usize, kind: impl Fn(usize) -> Step, one: impl Fn(usize, usize) -> bool) -> bool {
    let (mut i, mut j) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while j < len {
        match (i < steps).then(|| kind(i)) {
            Some(Step::ZeroOrMore) => {
                star = Some((i, j));
                i += 1;
            }
            Some(Step::Any) => {
                i += 1;
                j += 1;
            }
            Some(Step::One(_)) if one(i, j) => {
                i += 1;
                j += 1;
            }
            _ => match star {
                Some((star_i, star_j)) => {
                    i = star_i + 1;
                    j = star_j + 1;
                    star = Some((star_i, star_j + 1));
                }
                None => return false,
            },
        }
    }
    while i < steps && kind(i) == Step::ZeroOrMore {
        i += 1;
    }
    i == steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(source: &str) -> Pattern {
        Pattern::parse(source).unwrap()
    }

    #[test]
    fn the_documented_examples() {
        let news = p("news:*");
        assert!(news.matches("news:uk", Who::Anonymous));
        assert!(!news.matches("news:", Who::Anonymous), "* is one or more characters");
        assert!(!news.matches("news:uk:london", Who::Anonymous), "* stays within a segment");
        assert!(!news.matches("news", Who::Anonymous));
        assert!(!news.matches("newsx:uk", Who::Anonymous));
        let deep = p("news:**");
        assert!(deep.matches("news:uk", Who::Anonymous) && deep.matches("news:uk:london", Who::Anonymous));
        assert!(deep.matches("news:", Who::Anonymous), "** is whole segments, an empty one included");
        assert!(!deep.matches("news", Who::Anonymous), "** is at least one segment");
        let inbox = p("user:{sub}");
        assert!(inbox.has_subject() && !news.has_subject());
        assert!(inbox.matches("user:alice", Who::User("alice")));
        assert!(!inbox.matches("user:bob", Who::User("alice")));
        assert!(!inbox.matches("user:alice", Who::Anonymous));
        assert!(inbox.matches("user:bob", Who::AnyUser));
        assert!(!inbox.matches("user:", Who::AnyUser));
        assert!(!inbox.matches("user:a:b", Who::User("a:b")), "a user id with ':' binds to nothing");
        assert!(!inbox.matches("user:", Who::User("")));
        let mid = p("a*b*c");
        assert!(mid.matches("axbyc", Who::Anonymous) && mid.matches("axxbyyc", Who::Anonymous));
        assert!(!mid.matches("abc", Who::Anonymous) && !mid.matches("axbc", Who::Anonymous));
        assert!(p("**").matches("anything:at:all", Who::Anonymous));
        assert!(p("a::b").matches("a::b", Who::Anonymous) && !p("a::b").matches("a:x:b", Who::Anonymous));
        assert!(p("é*").matches("éé", Who::Anonymous) && !p("é*").matches("é", Who::Anonymous));
        assert!(p("**:end").matches("a:b:end", Who::Anonymous) && !p("**:end").matches("end", Who::Anonymous));
        assert!(!news.matches(&format!("news:{}", "x".repeat(MAX_LEN)), Who::Anonymous));
    }

    #[test]
    fn malformed_patterns_are_errors() {
        assert_eq!(Pattern::parse(""), Err(PatternError::Empty));
        assert_eq!(Pattern::parse(&"a".repeat(MAX_LEN + 1)), Err(PatternError::TooLong));
        for bad in ["{user}", "user:{sub}x", "x{sub}", "{", "a}", "{sub"] {
            assert!(matches!(Pattern::parse(bad), Err(PatternError::Placeholder(_))), "{bad}");
        }
        for bad in ["a**", "**b", "a:x**y", "***"] {
            assert!(matches!(Pattern::parse(bad), Err(PatternError::Rest(_))), "{bad}");
        }
        let error = Pattern::parse("a:{subject}").unwrap_err().to_string();
        assert!(error.contains("{sub}"), "{error}");
    }

    /// The specification, written as directly as possible (exponential, for small inputs).
    fn spec(pattern: &str, topic: &str, who: Who<'_>) -> bool {
        fn segments(pattern: &[&str], topic: &[&str], who: Who<'_>) -> bool {
            match (pattern.split_first(), topic.split_first()) {
                (None, None) => true,
                (None, Some(_)) | (Some(_), None) => false,
                (Some((&"**", rest)), Some(_)) => (1..=topic.len()).any(|n| segments(rest, &topic[n..], who)),
                (Some((&"{sub}", rest)), Some((segment, more))) => {
                    let bound = match who {
                        Who::User(user) => !user.is_empty() && !user.contains(':') && *segment == user,
                        Who::Anonymous => false,
                        Who::AnyUser => !segment.is_empty(),
                    };
                    bound && segments(rest, more, who)
                }
                (Some((glob, rest)), Some((segment, more))) => {
                    within(glob.as_bytes(), segment.as_bytes()) && segments(rest, more, who)
                }
            }
        }
        fn within(glob: &[u8], text: &[u8]) -> bool {
            match glob.split_first() {
                None => text.is_empty(),
                Some((b'*', rest)) => (1..=text.len()).any(|n| within(rest, &text[n..])),
                Some((byte, rest)) => text.first() == Some(byte) && within(rest, &text[1..]),
            }
        }
        let pattern: Vec<&str> = pattern.split(':').collect();
        let topic: Vec<&str> = topic.split(':').collect();
        segments(&pattern, &topic, who)
    }

    /// Pattern-ish and topic-ish strings over a small alphabet, so that matches happen:
    /// half built segment by segment (mostly valid), half from loose pieces (often not).
    fn pattern_text() -> impl Strategy<Value = String> {
        const SEGMENTS: &[&str] = &["a", "b", "*", "a*", "*b", "a*b", "**", "{sub}", "alice", "é*", ""];
        const PIECES: &[&str] = &["a", "b", ":", "*", "**", "{sub}", "ab", "é"];
        prop_oneof![
            proptest::collection::vec(proptest::sample::select(SEGMENTS), 1..6).prop_map(|s| s.join(":")),
            proptest::collection::vec(proptest::sample::select(PIECES), 1..10).prop_map(|p| p.concat()),
        ]
    }

    fn topic_text() -> impl Strategy<Value = String> {
        const SEGMENTS: &[&str] = &["a", "b", "ab", "aab", "abb", "alice", "bob", "é", "éé", "*", ""];
        const PIECES: &[&str] = &["a", "b", ":", "*", "ab", "é", "alice", "bob"];
        prop_oneof![
            proptest::collection::vec(proptest::sample::select(SEGMENTS), 1..7).prop_map(|s| s.join(":")),
            proptest::collection::vec(proptest::sample::select(PIECES), 0..12).prop_map(|p| p.concat()),
        ]
    }

    fn who() -> impl Strategy<Value = Who<'static>> {
        prop_oneof![
            Just(Who::Anonymous),
            Just(Who::AnyUser),
            Just(Who::User("alice")),
            Just(Who::User("bob")),
            Just(Who::User("a")),
            Just(Who::User("")),
            Just(Who::User("a:b")),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

        /// The matcher agrees with the specification everywhere: `*`, `**` and `{sub}`
        /// mean exactly what the table says.
        #[test]
        fn agrees_with_the_specification(pattern in pattern_text(), topic in topic_text(), who in who()) {
            if let Ok(compiled) = Pattern::parse(&pattern) {
                prop_assert_eq!(compiled.matches(&topic, who), spec(&pattern, &topic, who), "{} vs {:?} as {:?}", pattern, topic, who);
            }
        }

        /// Arbitrary input never panics, whether it compiles or not.
        #[test]
        fn arbitrary_input_never_panics(pattern in any::<String>(), topic in any::<String>(), user in any::<String>()) {
            if let Ok(compiled) = Pattern::parse(&pattern) {
                let _ = compiled.matches(&topic, Who::User(&user));
                let _ = compiled.matches(&topic, Who::AnyUser);
                let _ = compiled.matches(&topic, Who::Anonymous);
            }
        }

        /// `user:{sub}` never opens another user's channel: bound to any user id (one
        /// with `:` included), it matches the channel of a user `other` only if that is
        /// the same id.
        #[test]
        fn a_subject_channel_is_its_owners_only(me in "[a-z:@.]{0,6}", other in "[a-z@.*]{0,6}", suffix in prop_oneof![Just(""), Just(":inbox"), Just(":a:b")]) {
            for pattern in ["user:{sub}", "user:{sub}:*", "user:{sub}:**"] {
                let compiled = Pattern::parse(pattern).unwrap();
                let topic = format!("user:{other}{suffix}");
                if compiled.matches(&topic, Who::User(&me)) {
                    prop_assert_eq!(&me, &other, "{} bound to {:?} opened {:?}", pattern, me, topic);
                    prop_assert!(!me.is_empty() && !me.contains(':'));
                }
                prop_assert!(!compiled.matches(&topic, Who::Anonymous));
            }
        }

        /// A pattern without wildcards or placeholders matches exactly its own text.
        #[test]
        fn literal_patterns_match_only_themselves(pattern in "[a-c:]{1,8}", topic in "[a-c:]{0,8}") {
            let compiled = Pattern::parse(&pattern).unwrap();
            prop_assert_eq!(compiled.matches(&topic, Who::AnyUser), pattern == topic);
        }

        /// `*` never crosses a segment: a match without `**` keeps the segment count.
        #[test]
        fn single_star_keeps_the_segment_count(pattern in "[ab*:]{1,8}", topic in "[ab:]{0,10}") {
            if let Ok(compiled) = Pattern::parse(&pattern) {
                if !pattern.contains("**") && compiled.matches(&topic, Who::Anonymous) {
                    prop_assert_eq!(pattern.split(':').count(), topic.split(':').count());
                }
            }
        }
    }
}
