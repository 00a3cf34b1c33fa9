//! Quotas on what a tenant keeps: bytes of stored state and pending timers
//! (`[tenants.<name>] max_state_bytes`, `max_timers`).
//!
//! Usage is counted only for tenants with such a quota, so a hub without them pays one check
//! of an empty map per write. The counts follow each write where it is made: a shard's state
//! cache and timer wheel, an erasure, a cluster's takeover of a partition. They start from a
//! scan of sled when the hub starts. A tenant's stored state is what sled holds under its actors:
//! plugin state and the arbiter's ledgers, each entry counted as its stored key (actor and key)
//! plus its value. Its pending timers include the arbiter's, which release held actions.
//!
//! A plugin call is checked before its writes apply (see `runtime::host`). A call that would
//! take its tenant past a quota is refused as a whole: its input is dead-lettered as `quota`,
//! nothing it wrote stays, and a replay once the tenant is below its quota applies it once. A
//! call that frees space always passes. Shards check at the same time, so a tenant may end past
//! its quota by at most one call per shard. In a cluster each instance checks what it holds.

use crate::metrics as m;
use rustc_hash::FxHashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// Which quota a call would break.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    StateBytes,
    Timers,
}

impl Kind {
    /// The configuration key and metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::StateBytes => "max_state_bytes",
            Kind::Timers => "max_timers",
        }
    }
}

/// A call refused because it would take a tenant past a quota.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "tenant {tenant:?} holds {used} of its quota ([tenants.{tenant}] {} = {max}); the call would add {adding}",
    kind.as_str()
)]
pub struct Exceeded {
    pub tenant: Arc<str>,
    pub kind: Kind,
    pub max: u64,
    pub used: i64,
    pub adding: i64,
}

/// What one call's writes would add: bytes of state and pending timers (negative: freed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Growth {
    pub state_bytes: i64,
    pub timers: i64,
}

/// One tenant's quotas and what it holds against them.
#[derive(Debug)]
pub struct Usage {
    tenant: Arc<str>,
    max_state_bytes: Option<u64>,
    max_timers: Option<u64>,
    state_bytes: AtomicI64,
    timers: AtomicI64,
    state_gauge: metrics::Gauge,
    timers_gauge: metrics::Gauge,
}

impl Usage {
    fn new(tenant: &str, max_state_bytes: Option<u64>, max_timers: Option<u64>) -> Usage {
        let label = tenant.to_owned();
        Usage {
            tenant: tenant.into(),
            max_state_bytes,
            max_timers,
            state_bytes: AtomicI64::new(0),
            timers: AtomicI64::new(0),
            state_gauge: metrics::gauge!(m::TENANT_STATE_BYTES, "tenant" => label.clone()),
            timers_gauge: metrics::gauge!(m::TENANT_TIMERS, "tenant" => label),
        }
    }

    pub fn state_bytes(&self) -> i64 {
        self.state_bytes.load(Ordering::Relaxed)
    }

    pub fn timers(&self) -> i64 {
        self.timers.load(Ordering::Relaxed)
    }

    pub fn add_state_bytes(&self, delta: i64) {
        if delta != 0 {
            let now = self.state_bytes.fetch_add(delta, Ordering::Relaxed) + delta;
            self.state_gauge.set(now as f64);
        }
    }

    pub fn add_timers(&self, delta: i64) {
        if delta != 0 {
            let now = self.timers.fetch_add(delta, Ordering::Relaxed) + delta;
            self.timers_gauge.set(now as f64);
        }
    }

    /// Whether a call that adds `growth` may apply; a refusal is counted in the metrics.
    pub fn admit(&self, growth: Growth) -> Result<(), Exceeded> {
        let checks = [
            (
                Kind::StateBytes,
                self.max_state_bytes,
                self.state_bytes(),
                growth.state_bytes,
            ),
            (Kind::Timers, self.max_timers, self.timers(), growth.timers),
        ];
        for (kind, max, used, adding) in checks {
            let Some(max) = max else { continue };
            if adding > 0 && used.saturating_add(adding) > i64::try_from(max).unwrap_or(i64::MAX) {
                metrics::counter!(m::TENANT_QUOTA_REFUSALS, "tenant" => self.tenant.to_string(), "quota" => kind.as_str())
                    .increment(1);
                return Err(Exceeded {
                    tenant: self.tenant.clone(),
                    kind,
                    max,
                    used,
                    adding,
                });
            }
        }
        Ok(())
    }
}

/// The usage of every tenant with a quota on stored state or timers, shared by the shards.
#[derive(Debug, Default)]
pub struct Quotas {
    tenants: FxHashMap<Box<str>, Arc<Usage>>,
}

impl Quotas {
    /// Usage counters for the declared tenants that have a stored-state or timer quota.
    pub fn new(tenants: &crate::tenant::Tenants) -> Quotas {
        let tenants = tenants
            .names()
            .filter_map(|name| {
                let config = tenants.config(name)?;
                (config.max_state_bytes.is_some() || config.max_timers.is_some()).then(|| {
                    let usage = Usage::new(name, config.max_state_bytes, config.max_timers);
                    (Box::from(name), Arc::new(usage))
                })
            })
            .collect();
        Quotas { tenants }
    }

    /// Whether any tenant has such a quota (otherwise nothing is counted).
    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty()
    }

    /// The usage of the tenant of `actor` (a qualified key), if it has a quota.
    pub fn of(&self, actor: &str) -> Option<&Arc<Usage>> {
        if self.tenants.is_empty() {
            return None;
        }
        self.tenants.get(crate::tenant::split(actor).0?)
    }

    /// Count a state entry written to sled directly (`stored`) or removed from it, by its
    /// stored key (actor ‖ user key), if its actor's tenant has a quota.
    pub fn count_state_entry(&self, key: &[u8], value_len: usize, stored: bool) {
        if self.tenants.is_empty() {
            return;
        }
        if let Some(usage) = crate::state::keys::state_actor(key).and_then(|actor| self.of(actor)) {
            let bytes = entry_bytes(key.len(), value_len);
            usage.add_state_bytes(if stored { bytes } else { -bytes });
        }
    }

    /// Count what sled holds already: every entry of the plugin-state and ledger trees under
    /// a tenant with a quota (timers are counted by the wheels that load them). A scan of those
    /// trees, done once at start and only when some tenant has a quota.
    pub fn count_stored(&self, db: &sled::Db) -> Result<(), sled::Error> {
        if self.is_empty() {
            return Ok(());
        }
        for name in db.tree_names() {
            if !crate::state::holds_actor_state(&String::from_utf8_lossy(&name)) {
                continue;
            }
            for entry in db.open_tree(&name)?.iter() {
                let (key, value) = entry?;
                self.count_state_entry(&key, value.len(), true);
            }
        }
        Ok(())
    }
}

/// The size a state entry counts for: its stored key (actor and user key) and its value.
fn entry_bytes(key_len: usize, value_len: usize) -> i64 {
    i64::try_from(key_len.saturating_add(value_len)).unwrap_or(i64::MAX)
}

/// The size of the entry of `key` of `actor` holding `value_len` bytes (see [`entry_bytes`]);
/// 0 for no entry.
pub fn state_entry_bytes(actor: &str, key: &str, value_len: Option<usize>) -> i64 {
    value_len.map_or(0, |len| entry_bytes(2 + actor.len() + key.len(), len))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::tenant::{TenantConfig, Tenants};
    use std::collections::BTreeMap;

    /// Tenant `capped` with these quotas, and `free` without any.
    pub(crate) fn quotas(max_state_bytes: Option<u64>, max_timers: Option<u64>) -> Quotas {
        let mut declared = BTreeMap::new();
        let config = TenantConfig {
            max_state_bytes,
            max_timers,
            ..TenantConfig::default()
        };
        declared.insert("capped".to_owned(), config);
        declared.insert("free".to_owned(), TenantConfig::default());
        Quotas::new(&Tenants::new(&declared).expect("valid tenants"))
    }

    #[test]
    fn only_tenants_with_a_quota_are_counted() {
        let quotas = quotas(Some(100), None);
        assert!(quotas.of("capped\u{1f}ann").is_some());
        assert!(quotas.of("free\u{1f}ann").is_none());
        assert!(quotas.of("ann").is_none(), "the default tenant has no quota");
        assert!(Quotas::default().of("capped\u{1f}ann").is_none());
    }

    #[test]
    fn a_call_that_would_pass_a_quota_is_refused_and_one_that_frees_space_is_not() {
        let quotas = quotas(Some(100), Some(2));
        let usage = quotas.of("capped\u{1f}ann").expect("counted");
        usage.add_state_bytes(90);
        usage.add_timers(2);
        let grow = |state_bytes, timers| usage.admit(Growth { state_bytes, timers });
        assert_eq!(grow(10, 0), Ok(()), "up to the quota exactly");
        let refused = grow(11, 0).expect_err("past the state quota");
        assert_eq!((refused.kind, refused.used, refused.adding), (Kind::StateBytes, 90, 11));
        assert!(
            refused.to_string().contains("[tenants.capped] max_state_bytes = 100"),
            "{refused}"
        );
        assert_eq!(grow(0, 1).expect_err("past the timer quota").kind, Kind::Timers);
        assert_eq!(grow(-50, -1), Ok(()));
        // Over the quota (as shards checking at once may leave it), freeing space still passes.
        usage.add_state_bytes(40);
        assert_eq!(grow(-10, 0), Ok(()));
        assert!(grow(1, 0).is_err());
    }

    #[test]
    fn sizes_count_the_stored_key_and_value() {
        let mut key = Vec::new();
        crate::state::keys::state_key(&mut key, "capped\u{1f}ann", "count");
        let quotas = quotas(Some(100), None);
        quotas.count_state_entry(&key, 3, true);
        let bytes = quotas.of("capped\u{1f}ann").expect("counted").state_bytes();
        assert_eq!(bytes, state_entry_bytes("capped\u{1f}ann", "count", Some(3)));
        assert_eq!(bytes, (key.len() + 3) as i64);
        assert_eq!(state_entry_bytes("capped\u{1f}ann", "count", None), 0);
    }
}
