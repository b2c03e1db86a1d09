//! Path patterns: literal segments, `{param}` segments and a trailing `{*rest}`.

use std::fmt;
use std::sync::Arc;

/// Path parameters captured by a route pattern.
///
/// `{param}` values are percent-decoded (kept raw when the decoding is not UTF-8);
/// a `{*rest}` value is the raw remainder of the path without its leading `/`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Params {
    items: Vec<(Arc<str>, String)>,
}

impl Params {
    /// The value of parameter `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.items
            .iter()
            .find(|(n, _)| &**n == name)
            .map(|(_, v)| v.as_str())
    }

    /// All parameters in pattern order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.items.iter().map(|(n, v)| (&**n, v.as_str()))
    }

    /// Number of parameters.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether there are no parameters.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

impl fmt::Debug for Params {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

#[derive(Debug, Clone)]
enum Segment {
    Literal(Box<str>),
    Param(Arc<str>),
    Rest(Arc<str>),
}

/// A parsed route pattern.
#[derive(Debug, Clone)]
pub(crate) struct Pattern {
    source: Box<str>,
    segments: Vec<Segment>,
    /// Specificity per segment (literal 2, param 1, rest 0); higher sorts first.
    rank: Vec<u8>,
}

/// Why a route pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PatternError {
    /// The pattern does not start with `/`.
    #[error("route pattern {0:?} must start with '/'")]
    NoLeadingSlash(String),
    /// The pattern has an empty segment (`//` or a trailing `/`).
    #[error("route pattern {0:?} has an empty segment")]
    EmptySegment(String),
    /// A `{…}` segment is malformed, or a literal contains `{` or `}`.
    #[error("route pattern {0:?} has a malformed parameter segment")]
    BadParam(String),
    /// `{*rest}` is not the last segment.
    #[error("route pattern {0:?} has a catch-all segment that is not last")]
    RestNotLast(String),
    /// Two parameters share a name.
    #[error("route pattern {0:?} repeats a parameter name")]
    DuplicateParam(String),
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl Pattern {
    pub(crate) fn parse(source: &str) -> Result<Self, PatternError> {
        let err = || source.to_owned();
        let Some(body) = source.strip_prefix('/') else {
            return Err(PatternError::NoLeadingSlash(err()));
        };
        let mut segments = Vec::new();
        if !body.is_empty() {
            let parts: Vec<&str> = body.split('/').collect();
            let last = parts.len() - 1;
            for (i, part) in parts.into_iter().enumerate() {
                if part.is_empty() {
                    return Err(PatternError::EmptySegment(err()));
                }
                let segment =
                    if let Some(inner) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                        if let Some(name) = inner.strip_prefix('*') {
                            if !valid_name(name) {
                                return Err(PatternError::BadParam(err()));
                            }
                            if i != last {
                                return Err(PatternError::RestNotLast(err()));
                            }
                            Segment::Rest(name.into())
                        } else if valid_name(inner) {
                            Segment::Param(inner.into())
                        } else {
                            return Err(PatternError::BadParam(err()));
                        }
                    } else if part.contains(['{', '}']) {
                        return Err(PatternError::BadParam(err()));
                    } else {
                        Segment::Literal(part.into())
                    };
                segments.push(segment);
            }
        }
        let mut names: Vec<&str> = segments
            .iter()
            .filter_map(|s| match s {
                Segment::Param(n) | Segment::Rest(n) => Some(&**n),
                Segment::Literal(_) => None,
            })
            .collect();
        let count = names.len();
        names.sort_unstable();
        names.dedup();
        if names.len() != count {
            return Err(PatternError::DuplicateParam(err()));
        }
        let rank = segments
            .iter()
            .map(|s| match s {
                Segment::Literal(_) => 2,
                Segment::Param(_) => 1,
                Segment::Rest(_) => 0,
            })
            .collect();
        Ok(Self {
            source: source.into(),
            segments,
            rank,
        })
    }

    pub(crate) fn source(&self) -> &str {
        &self.source
    }

    pub(crate) fn rank(&self) -> &[u8] {
        &self.rank
    }

    /// Matches a normalised path (leading `/`, no trailing `/` except the root).
    pub(crate) fn matches(&self, path: &str) -> Option<Params> {
        let mut remaining = path.strip_prefix('/').filter(|p| !p.is_empty());
        let mut items = Vec::new();
        for segment in &self.segments {
            let rest = remaining?;
            if let Segment::Rest(name) = segment {
                items.push((Arc::clone(name), rest.to_owned()));
                return Some(Params { items });
            }
            let (head, tail) = match rest.split_once('/') {
                Some((head, tail)) => (head, Some(tail)),
                None => (rest, None),
            };
            match segment {
                Segment::Literal(literal) => {
                    if head != &**literal {
                        return None;
                    }
                }
                Segment::Param(name) => {
                    if head.is_empty() {
                        return None;
                    }
                    items.push((Arc::clone(name), percent_decode(head)));
                }
                Segment::Rest(_) => return None,
            }
            remaining = tail;
        }
        match remaining {
            None => Some(Params { items }),
            Some(_) => None,
        }
    }
}

/// Percent-decodes a path segment (`iicp_proto::endpoint::decode_path_segment`).
fn percent_decode(segment: &str) -> String {
    iicp_proto::endpoint::decode_path_segment(segment)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_match() {
        let p = Pattern::parse("/v1/relay-for/{worker_id}/{*rest}").unwrap();
        let m = p.matches("/v1/relay-for/w-1/v1/task").unwrap();
        assert_eq!(m.get("worker_id"), Some("w-1"));
        assert_eq!(m.get("rest"), Some("v1/task"));
        assert!(p.matches("/v1/relay-for/w-1").is_none());
        assert!(p.matches("/v1/relay-for").is_none());

        let p = Pattern::parse("/v1/tasks/{task_id}").unwrap();
        assert_eq!(
            p.matches("/v1/tasks/a%20b").unwrap().get("task_id"),
            Some("a b")
        );
        assert_eq!(
            p.matches("/v1/tasks/%zz").unwrap().get("task_id"),
            Some("%zz")
        );
        assert_eq!(
            p.matches("/v1/tasks/%4").unwrap().get("task_id"),
            Some("%4")
        );
        assert!(p.matches("/v1/tasks").is_none());
        assert!(p.matches("/v1/tasks/a/b").is_none());

        let root = Pattern::parse("/").unwrap();
        assert!(root.matches("/").is_some());
        assert!(root.matches("/x").is_none());
    }

    #[test]
    fn bad_patterns() {
        for bad in [
            "v1",
            "/v1//x",
            "/v1/",
            "/{*rest}/x",
            "/{a}/{a}",
            "/{}",
            "/x{y}",
            "/{a b}",
        ] {
            assert!(Pattern::parse(bad).is_err(), "{bad}");
        }
    }
}
