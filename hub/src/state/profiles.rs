//! Actor profiles: what is known about an actor (name, segment, thresholds…), kept in sled as a
//! MessagePack map, which is what plugins read through the `profile` import.
//!
//! Updates are JSON merge patches (RFC 7386: a key set to `null` is removed, objects merge), from
//! NATS `profiles.<actor>` and the admin API. Each update is an atomic compare-and-swap on the
//! actor's key, so concurrent updates never lose one another.

use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("a profile update must be a JSON object")]
    NotAnObject,
    #[error("the stored profile of {actor:?} is unreadable: {detail}")]
    Corrupt { actor: String, detail: String },
    #[error("profile storage: {0}")]
    Sled(#[from] sled::Error),
}

#[derive(Clone)]
pub struct Profiles {
    tree: sled::Tree,
}

impl Profiles {
    pub fn new(tree: sled::Tree) -> Profiles {
        Profiles { tree }
    }

    pub fn get(&self, actor: &str) -> Result<Option<Value>, ProfileError> {
        match self.tree.get(actor.as_bytes())? {
            Some(bytes) => decode(actor, &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Merge `patch` into the actor's profile and return the result.
    pub fn merge(&self, actor: &str, patch: &Value) -> Result<Value, ProfileError> {
        self.update(actor, |profile| json_patch::merge(profile, patch), patch)
    }

    /// Replace the actor's profile with `profile`.
    pub fn replace(&self, actor: &str, profile: &Value) -> Result<Value, ProfileError> {
        self.update(actor, |current| *current = profile.clone(), profile)
    }

    /// Erase the profile; true if there was one.
    pub fn remove(&self, actor: &str) -> Result<bool, ProfileError> {
        Ok(self.tree.remove(actor.as_bytes())?.is_some())
    }

    fn update(&self, actor: &str, change: impl Fn(&mut Value), input: &Value) -> Result<Value, ProfileError> {
        if !input.is_object() {
            return Err(ProfileError::NotAnObject);
        }
        loop {
            let old = self.tree.get(actor.as_bytes())?;
            let mut profile = match &old {
                Some(bytes) => decode(actor, bytes)?,
                None => Value::Object(Default::default()),
            };
            change(&mut profile);
            let encoded = rmp_serde::to_vec_named(&profile).map_err(|e| ProfileError::Corrupt {
                actor: actor.to_owned(),
                detail: e.to_string(),
            })?;
            if self
                .tree
                .compare_and_swap(actor.as_bytes(), old, Some(encoded))?
                .is_ok()
            {
                return Ok(profile);
            }
        }
    }
}

fn decode(actor: &str, bytes: &[u8]) -> Result<Value, ProfileError> {
    rmp_serde::from_slice(bytes).map_err(|e| ProfileError::Corrupt {
        actor: actor.to_owned(),
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn updates_merge_and_null_removes() {
        let db = sled::Config::new().temporary(true).open().expect("sled");
        let p = Profiles::new(db.open_tree("profiles").expect("tree"));
        p.merge(
            "a",
            &json!({"name": "Ann", "segment": "vip", "address": {"city": "Oslo"}}),
        )
        .expect("merge");
        let merged = p
            .merge("a", &json!({"segment": null, "address": {"zip": "0150"}}))
            .expect("merge");
        assert_eq!(
            merged,
            json!({"name": "Ann", "address": {"city": "Oslo", "zip": "0150"}})
        );
        assert_eq!(p.get("a").expect("get"), Some(merged));
        assert!(matches!(p.merge("a", &json!([1])), Err(ProfileError::NotAnObject)));
        assert!(p.remove("a").expect("remove"));
        assert_eq!(p.get("a").expect("get"), None);
    }
}
