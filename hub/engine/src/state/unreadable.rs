//! Records the hub stored but can no longer read are never silently replaced: before a reader
//! falls back (to an empty ledger, the config file's policies, …) it copies the record into the
//! `unreadable` tree, counts it in `hub_unreadable_records_total{tree}` and logs it with its key.
//! An operator can then inspect or repair it; nothing is lost to a decoder bug.
//!
//! Key: `[len: u8][tree name]` ‖ original key. Value: the record's bytes, unchanged. Keeping the
//! same record aside twice (a reader that meets it again before it is replaced) counts it once.

use crate::metrics as m;

/// The tree that holds records kept aside.
pub const TREE: &str = "unreadable";

/// Copy an unreadable record of `tree` aside, count it and log it. Never fails: an error while
/// keeping it aside is logged too, since the caller's fallback must go on either way.
pub fn keep_aside(db: &sled::Db, tree: &str, key: &[u8], bytes: &[u8], error: &dyn std::fmt::Display) {
    let shown = String::from_utf8_lossy(key);
    let kept = db.open_tree(TREE).and_then(|aside| {
        let mut full = Vec::with_capacity(1 + tree.len() + key.len());
        let name = &tree.as_bytes()[..tree.len().min(usize::from(u8::MAX))];
        full.push(name.len() as u8);
        full.extend_from_slice(name);
        full.extend_from_slice(key);
        aside.insert(full, bytes)
    });
    match kept {
        Ok(Some(previous)) if previous == bytes => {
            // Already kept aside and counted.
        }
        Ok(_) => {
            metrics::counter!(m::UNREADABLE_RECORDS, "tree" => tree.to_owned()).increment(1);
            tracing::error!(tree, key = %shown, %error, "stored record unreadable; kept aside in the `unreadable` tree");
        }
        Err(e) => {
            metrics::counter!(m::UNREADABLE_RECORDS, "tree" => tree.to_owned()).increment(1);
            tracing::error!(tree, key = %shown, %error, aside_error = %e, "stored record unreadable, and it could not be kept aside");
        }
    }
}

/// A record kept aside: (tree, key, bytes).
pub type KeptAside = (String, Vec<u8>, Vec<u8>);

/// Every record kept aside. For operators and tests.
pub fn list(db: &sled::Db) -> Result<Vec<KeptAside>, sled::Error> {
    let aside = db.open_tree(TREE)?;
    let mut out = Vec::new();
    for item in aside.iter() {
        let (key, value) = item?;
        let Some((&len, rest)) = key.split_first() else {
            continue;
        };
        let Some((tree, original)) = rest.split_at_checked(usize::from(len)) else {
            continue;
        };
        out.push((
            String::from_utf8_lossy(tree).into_owned(),
            original.to_vec(),
            value.to_vec(),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_kept_aside_twice_is_kept_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = sled::Config::new().path(dir.path()).open().expect("db");
        keep_aside(&db, "actions", b"c1", b"\x01\x02", &"bad");
        keep_aside(&db, "actions", b"c1", b"\x01\x02", &"bad");
        keep_aside(&db, "policies", b"policies", b"{", &"eof");
        let kept = list(&db).expect("list");
        assert_eq!(
            kept,
            vec![
                ("actions".to_owned(), b"c1".to_vec(), b"\x01\x02".to_vec()),
                ("policies".to_owned(), b"policies".to_vec(), b"{".to_vec()),
            ]
        );
    }
}
