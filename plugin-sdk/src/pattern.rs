//! Subscription patterns: which event kinds a plugin receives.
//!
//! The grammar is NATS's subject grammar applied to dot-separated kinds, so operators read one
//! rule everywhere: `*` matches exactly one token, a final `>` matches one or more tokens.

/// Whether `pattern` matches the event kind `kind`.
pub fn kind_matches(pattern: &str, kind: &str) -> bool {
    let mut kind_tokens = kind.split('.');
    for p in pattern.split('.') {
        match (p, kind_tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (p, Some(k)) if p == k => {}
            _ => return false,
        }
    }
    kind_tokens.next().is_none()
}

/// Why a pattern is not valid, if it is not.
pub fn pattern_error(pattern: &str) -> Option<String> {
    if pattern.is_empty() {
        return Some("empty subscription pattern".into());
    }
    let tokens: Vec<&str> = pattern.split('.').collect();
    for (i, t) in tokens.iter().enumerate() {
        if t.is_empty() {
            return Some(format!("empty token in subscription pattern {pattern:?}"));
        }
        if *t == ">" && i + 1 != tokens.len() {
            return Some(format!("'>' must be the last token in {pattern:?}"));
        }
        if t.len() > 1 && (t.contains('*') || t.contains('>')) {
            return Some(format!("wildcards must be whole tokens in {pattern:?}"));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::{kind_matches, pattern_error};

    #[test]
    fn wildcards_match_like_nats_subjects() {
        assert!(kind_matches("cart.updated", "cart.updated"));
        assert!(kind_matches("cart.*", "cart.updated"));
        assert!(!kind_matches("cart.*", "cart.updated.more"));
        assert!(kind_matches("web.>", "web.page_view"));
        assert!(kind_matches("web.>", "web.a.b"));
        assert!(!kind_matches("web.>", "web"));
        assert!(!kind_matches("cart.updated", "cart"));
        assert!(!kind_matches("cart", "cart.updated"));
        assert!(kind_matches(">", "anything.at.all"));
    }

    #[test]
    fn malformed_patterns_are_explained() {
        assert!(pattern_error("cart.*").is_none());
        assert!(pattern_error("a.>.b").is_some());
        assert!(pattern_error("a..b").is_some());
        assert!(pattern_error("ca*").is_some());
        assert!(pattern_error("").is_some());
    }
}
