//! A shard's answers about one of its actors: what the hub holds about it, and erasing it. They
//! read through the shard's state cache, so they see writes not yet committed.

use super::{ActionRecord, ActorState, Erased, PendingTimer, decode_value};
use crate::arbiter::Ledger;
use crate::runtime::ShardStores;
use crate::state::{Db, PluginSlot, keys};
use rustc_hash::FxHashMap;
use std::sync::Arc;

/// State cache slots by plugin name: the plugins the shard has run.
type Slots = FxHashMap<Arc<str>, PluginSlot>;

/// Each plugin's state (as the plugin would read it now), the pending timers and the ledger of
/// `actor`.
pub(crate) fn inspect(db: &Db, stores: &mut ShardStores, slots: &Slots, ledger: &Ledger, actor: &str) -> ActorState {
    let mut view = ActorState::default();
    for plugin in db.state_plugins() {
        let entries = match slots.get(plugin.as_str()).copied() {
            Some(slot) => stores.state.actor_entries(slot, actor).map_err(|e| e.to_string()),
            None => db
                .state_tree(&plugin)
                .map_err(|e| e.to_string())
                .and_then(|tree| scan_actor(&tree, actor).map_err(|e| e.to_string())),
        };
        match entries {
            Ok(entries) if entries.is_empty() => {}
            Ok(entries) => {
                let values = entries.into_iter().map(|(k, v)| (k, decode_value(&v))).collect();
                view.state.insert(plugin, values);
            }
            Err(e) => view.errors.push(format!("state of plugin {plugin}: {e}")),
        }
    }
    view.timers = stores
        .timers
        .of_actor(actor)
        .into_iter()
        .map(|t| PendingTimer {
            plugin: t.owner,
            id: t.id,
            due: crate::event::rfc3339(t.due),
            payload: decode_value(&t.payload),
        })
        .collect();
    view.actions = ledger.entries.iter().map(ActionRecord::from).collect();
    view
}

/// Erase the actor's state in every plugin (loaded or not) and its pending timers; the caller
/// erases the ledger and commits. Deletions through the cache are committed like any write;
/// state of plugins this shard does not run is removed from sled directly (no cache holds it).
pub(crate) fn erase(db: &Db, stores: &mut ShardStores, slots: &Slots, actor: &str) -> Result<Erased, String> {
    let mut erased = Erased::default();
    for plugin in db.state_plugins() {
        match slots.get(plugin.as_str()).copied() {
            Some(slot) => {
                let entries = stores.state.actor_entries(slot, actor).map_err(|e| e.to_string())?;
                erased.state_keys += entries.len();
                for (key, _) in entries {
                    stores.state.set(slot, actor, &key, None);
                }
            }
            None => {
                let tree = db.state_tree(&plugin).map_err(|e| e.to_string())?;
                for (key, value) in scan_actor(&tree, actor).map_err(|e| e.to_string())? {
                    let mut full = Vec::new();
                    keys::state_key(&mut full, actor, &key);
                    tree.remove(&full).map_err(|e| e.to_string())?;
                    erased.state_keys += 1;
                    stores.state.quotas().count_state_entry(&full, value.len(), false);
                }
            }
        }
    }
    erased.timers = stores.timers.erase_actor(actor);
    Ok(erased)
}

/// The state entries of `actor` in a plugin tree no shard cache holds.
fn scan_actor(tree: &sled::Tree, actor: &str) -> Result<Vec<(String, Vec<u8>)>, sled::Error> {
    let mut prefix = Vec::new();
    keys::push_actor(&mut prefix, actor);
    tree.scan_prefix(&prefix)
        .map(|item| {
            let (key, value) = item?;
            Ok((
                String::from_utf8_lossy(&key[prefix.len()..]).into_owned(),
                value.to_vec(),
            ))
        })
        .collect()
}
