//! Instance scopes: globs over instance ids, `*` for any run of characters and
//! `?` for one character (`web-*`, `db-?`, `*`).

use cassette_model::InstanceId;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceGlob(String);

#[derive(Debug, thiserror::Error)]
#[error(
    "{0:?} is not a glob over instance ids: use a-z, 0-9, '-', '*' and '?', at most 63 characters"
)]
pub struct InvalidGlob(pub String);

impl InstanceGlob {
    pub fn parse(pattern: &str) -> Result<Self, InvalidGlob> {
        let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "-*?".contains(c);
        if pattern.is_empty()
            || pattern.len() > InstanceId::MAX_LEN
            || !pattern.chars().all(allowed)
        {
            return Err(InvalidGlob(pattern.to_owned()));
        }
        Ok(Self(pattern.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `instance` (any string: an unvalidated id simply does not match
    /// a narrower glob) is in scope.
    pub fn matches(&self, instance: &str) -> bool {
        matches(self.0.as_bytes(), instance.as_bytes())
    }
}

/// Iterative wildcard matching with one backtrack point: linear in practice,
/// never exponential.
fn matches(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn glob(p: &str) -> InstanceGlob {
        InstanceGlob::parse(p).unwrap()
    }

    #[test]
    fn stars_and_question_marks_match_as_globs_do() {
        assert!(glob("*").matches("db-1"));
        assert!(glob("web-*").matches("web-1"));
        assert!(glob("web-*").matches("web-"));
        assert!(!glob("web-*").matches("db-1"));
        assert!(!glob("web-*").matches("xweb-1"));
        assert!(glob("*-1").matches("web-1"));
        assert!(!glob("*-1").matches("web-12"));
        assert!(glob("db-?").matches("db-7"));
        assert!(!glob("db-?").matches("db-17"));
        assert!(glob("a*b*c").matches("axxbyyc"));
        assert!(!glob("a*b*c").matches("axxbyy"));
        assert!(glob("web-1").matches("web-1"));
        assert!(!glob("web-1").matches("web-10"));
    }

    #[test]
    fn patterns_outside_the_instance_alphabet_are_refused() {
        for bad in ["", "Web-*", "web_1", "web/*", "[ab]", &"a".repeat(64)] {
            assert!(InstanceGlob::parse(bad).is_err(), "{bad}");
        }
    }
}
