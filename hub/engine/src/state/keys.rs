//! Byte layouts of sled keys. Strings are length-prefixed so that no actor or timer id, whatever
//! bytes it holds, can make two keys collide or one actor's prefix cover another's.

/// Append `actor` as `[len: u16 BE][bytes]`.
pub fn push_actor(buf: &mut Vec<u8>, actor: &str) {
    let len = u16::try_from(actor.len()).unwrap_or(u16::MAX);
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(&actor.as_bytes()[..usize::from(len)]);
}

/// Key of a state entry in a plugin's tree: actor ‖ user key.
pub fn state_key(buf: &mut Vec<u8>, actor: &str, key: &str) {
    push_actor(buf, actor);
    buf.extend_from_slice(key.as_bytes());
}

/// Key of a timer: `[len: u8][plugin]` ‖ actor ‖ timer id.
pub fn timer_key(buf: &mut Vec<u8>, plugin: &str, actor: &str, id: &str) {
    let len = u8::try_from(plugin.len()).unwrap_or(u8::MAX);
    buf.push(len);
    buf.extend_from_slice(&plugin.as_bytes()[..usize::from(len)]);
    push_actor(buf, actor);
    buf.extend_from_slice(id.as_bytes());
}

/// Split a timer key into (plugin, actor, id).
pub fn split_timer_key(key: &[u8]) -> Option<(&str, &str, &str)> {
    let (&plen, rest) = key.split_first()?;
    let (plugin, rest) = rest.split_at_checked(usize::from(plen))?;
    let (alen, rest) = rest.split_at_checked(2)?;
    let alen = usize::from(u16::from_be_bytes([alen[0], alen[1]]));
    let (actor, id) = rest.split_at_checked(alen)?;
    Some((
        std::str::from_utf8(plugin).ok()?,
        std::str::from_utf8(actor).ok()?,
        std::str::from_utf8(id).ok()?,
    ))
}

/// The actor of a state key (see [`state_key`]).
pub fn state_actor(key: &[u8]) -> Option<&str> {
    let (len, rest) = key.split_at_checked(2)?;
    let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
    std::str::from_utf8(rest.get(..len)?).ok()
}

pub fn timer_actor(key: &[u8]) -> Option<&str> {
    split_timer_key(key).map(|(_, actor, _)| actor)
}

/// A timer as one value: `[due: i64 BE]` ‖ payload. The form of the `timers` tree of versions
/// before the timer log (read once at start, to migrate: see `timer_log::restore`), and of a
/// timer in a cluster's state changelog.
pub fn timer_value(due: i64, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + payload.len());
    v.extend_from_slice(&due.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

pub fn split_timer_value(value: &[u8]) -> Option<(i64, &[u8])> {
    let (due, payload) = value.split_at_checked(8)?;
    Some((i64::from_be_bytes(due.try_into().ok()?), payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timer_keys_round_trip() {
        let mut buf = Vec::new();
        timer_key(&mut buf, "cart", "user.1", "abandoned");
        assert_eq!(split_timer_key(&buf), Some(("cart", "user.1", "abandoned")));
        let v = timer_value(-5, b"xy");
        assert_eq!(split_timer_value(&v), Some((-5, &b"xy"[..])));
    }

    #[test]
    fn actor_prefixes_do_not_overlap() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        state_key(&mut a, "ab", "c");
        state_key(&mut b, "a", "bc");
        assert_ne!(a, b);
    }

    mod formats {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            /// Timer keys outlive the process (the timer log): any plugin name up to 255 bytes,
            /// any actor the hub accepts and any timer id read back as written.
            #[test]
            fn timer_keys_round_trip(
                plugin in "\\PC{0,40}",
                actor in "\\PC{1,60}",
                id in "\\PC{0,40}",
                due in any::<i64>(),
                payload in proptest::collection::vec(any::<u8>(), 0..32),
            ) {
                let mut key = Vec::new();
                timer_key(&mut key, &plugin, &actor, &id);
                prop_assert_eq!(split_timer_key(&key), Some((plugin.as_str(), actor.as_str(), id.as_str())));
                prop_assert_eq!(timer_actor(&key), Some(actor.as_str()));
                let value = timer_value(due, &payload);
                prop_assert_eq!(split_timer_value(&value), Some((due, &payload[..])));
            }

            /// No two (actor, key) pairs share a state key.
            #[test]
            fn state_keys_never_collide(a in "\\PC{1,8}", k in "\\PC{0,8}", b in "\\PC{1,8}", l in "\\PC{0,8}") {
                let (mut x, mut y) = (Vec::new(), Vec::new());
                state_key(&mut x, &a, &k);
                state_key(&mut y, &b, &l);
                prop_assert_eq!(x == y, a == b && k == l);
            }
        }
    }
}
