//! Tenants: one hub serving several clients, each with its own actors. The same actor id in two
//! tenants is two actors: their state, timers, ledgers and profiles never meet.
//!
//! An input names its tenant in its envelope (`"tenant"`), in a `Hub-Tenant` header, or through
//! the ingest rule that took it (a fixed name, or a token of its subject: `{2}`); one that names
//! none belongs to the default tenant, so a single-tenant hub notices nothing. Tenants other
//! than the default are declared in the configuration (`[tenants.<name>]`): an input naming an
//! unknown one is dead-lettered, so a typo never creates a tenant.
//!
//! Inside the hub an actor is a *qualified* key: the default tenant's actors are their id as
//! given (what a single-tenant hub always stored, so its data stays as it is); another
//! tenant's are `<tenant>` U+001F `<actor>`. Everything keyed by actor (shards, state, timers,
//! ledgers, profiles, a cluster's partitions) is thereby scoped by tenant without knowing of
//! tenants. Actor ids may not contain U+001F, so no default-tenant actor looks like another
//! tenant's. Plugins see the actor id as given, never the key; what leaves the hub (actions,
//! published events, dead letters, the API) carries the id and a `tenant` field.

use std::collections::BTreeMap;
use std::sync::Arc;

/// The header naming an input's tenant.
pub const HEADER: &str = "Hub-Tenant";
/// What separates a tenant from the actor id in a qualified key.
pub const SEPARATOR: char = '\u{1f}';
/// The tenant of inputs that name none, as metrics and the API call it.
pub const DEFAULT: &str = "default";
/// Longest tenant name, in bytes.
pub const MAX_NAME_BYTES: usize = 64;

/// A tenant's name is a NATS subject token and a metric label: 1 to 64 bytes of lowercase
/// ASCII letters, digits, `-` and `_`; `default` is the tenant of inputs that name none.
pub fn check_name(name: &str) -> Result<(), String> {
    let fits = !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !fits {
        return Err(format!(
            "tenant {name:?} must be 1 to {MAX_NAME_BYTES} bytes of lowercase letters, digits, '-' and '_'"
        ));
    }
    Ok(())
}

/// The key of `actor` in `tenant` (`None` or [`DEFAULT`]: the default tenant).
pub fn qualify(tenant: Option<&str>, actor: &str) -> String {
    match tenant.filter(|t| *t != DEFAULT) {
        Some(tenant) => {
            let mut key = String::with_capacity(tenant.len() + 1 + actor.len());
            key.push_str(tenant);
            key.push(SEPARATOR);
            key.push_str(actor);
            key
        }
        None => actor.to_owned(),
    }
}

/// A qualified key's tenant (`None`: the default) and actor id.
pub fn split(key: &str) -> (Option<&str>, &str) {
    match key.split_once(SEPARATOR) {
        Some((tenant, actor)) => (Some(tenant), actor),
        None => (None, key),
    }
}

/// The name of a qualified key's tenant, [`DEFAULT`] for the default one.
pub fn name_of(key: &str) -> &str {
    split(key).0.unwrap_or(DEFAULT)
}

/// The key of an actor a plugin named (an event it emitted): in the tenant of the actor whose
/// call emitted it, since a plugin can reach no other.
pub fn sibling(key: &str, actor: &str) -> String {
    qualify(split(key).0, actor)
}

/// Name the actor of `key` in headers: its id in `header`, its tenant (unless the default) in
/// `Hub-Tenant`, so whoever reads the message can send it back in as it came.
pub fn insert_actor(headers: &mut async_nats::HeaderMap, header: &str, key: &str, safe: impl Fn(&str) -> String) {
    let (tenant, actor) = split(key);
    headers.insert(header, safe(actor).as_str());
    if let Some(tenant) = tenant {
        headers.insert(HEADER, tenant);
    }
}

/// One metric counted per tenant, for one counting task: each tenant's counter is registered
/// once, at its first count, so no count allocates or asks the registry.
pub struct Counted {
    metric: &'static str,
    default: metrics::Counter,
    others: std::collections::HashMap<String, metrics::Counter>,
}

impl Counted {
    pub fn new(metric: &'static str) -> Counted {
        Counted {
            metric,
            default: metrics::counter!(metric, "tenant" => DEFAULT),
            others: Default::default(),
        }
    }

    /// Count one for the tenant of actor `key`.
    pub fn count(&mut self, key: &str) {
        let Some(tenant) = split(key).0 else {
            self.default.increment(1);
            return;
        };
        match self.others.get(tenant) {
            Some(counter) => counter.increment(1),
            None => {
                let counter = metrics::counter!(self.metric, "tenant" => tenant.to_owned());
                counter.increment(1);
                self.others.insert(tenant.to_owned(), counter);
            }
        }
    }
}

/// The tenants a plugin runs for: every one, or those named (`PluginRecord::tenants`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scope(Option<Arc<[String]>>);

impl Scope {
    pub fn of(names: Option<&[String]>) -> Scope {
        Scope(names.map(Arc::from))
    }

    /// Whether the plugin takes the events of actor `key`.
    pub fn takes(&self, key: &str) -> bool {
        match &self.0 {
            None => true,
            Some(names) => {
                let tenant = name_of(key);
                names.iter().any(|n| n == tenant)
            }
        }
    }
}

/// What a tenant is given.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenantConfig {
    /// The tenant's own bearer token for the admin API: its actors, plugins and dead letters
    /// only (`HUB_TENANTS__<NAME>__TOKEN`).
    pub token: Option<String>,
    /// The tenant's weight when tenants compete for the shards: inputs of its own stream
    /// queued ahead of them at most, in units of `[input] tenant_window` (durable mode).
    pub share: u32,
    /// Inputs per second its own stream is read at, at most: beyond it they wait there, in
    /// order, nothing dropped (durable mode). None: as fast as its share allows.
    pub rate: Option<u32>,
    /// Plugins that run for it alone, at most: an upload or a move past it is refused (409).
    pub max_plugins: Option<u32>,
    /// Bytes of stored state (plugin state and ledgers) at most: a plugin call that would
    /// store more is refused and its input dead-lettered as `quota` (see `crate::quota`).
    pub max_state_bytes: Option<u64>,
    /// Pending timers at most, likewise.
    pub max_timers: Option<u64>,
}

impl Default for TenantConfig {
    fn default() -> Self {
        TenantConfig {
            token: None,
            share: 1,
            rate: None,
            max_plugins: None,
            max_state_bytes: None,
            max_timers: None,
        }
    }
}

/// An input published on a tenant's own subjects, `<prefix>.<tenant>.<subject>` (with the
/// prefix `[nats] tenants_subject`): its tenant and the subject it stands for. Such inputs go
/// to the tenant's own stream, where no other tenant's backlog is ahead of them.
pub fn on_own_subject<'a>(prefix: &str, subject: &'a str) -> Option<(&'a str, &'a str)> {
    let rest = subject.strip_prefix(prefix)?.strip_prefix('.')?;
    let (tenant, subject) = rest.split_once('.')?;
    (!tenant.is_empty() && !subject.is_empty()).then_some((tenant, subject))
}

/// The subjects of `tenant`'s own stream: each input subject under its prefix.
pub fn own_subjects(prefix: &str, tenant: &str, subjects: &[String]) -> Vec<String> {
    subjects.iter().map(|s| format!("{prefix}.{tenant}.{s}")).collect()
}

/// The declared tenants, shared by everything that takes inputs.
#[derive(Debug, Clone, Default)]
pub struct Tenants {
    declared: Arc<BTreeMap<String, TenantConfig>>,
    /// Every well-formed name is known (a plugin author's offline run, which has no hub
    /// configuration to declare them in).
    open: bool,
}

impl Tenants {
    /// Check every name; `default` is implied and may not be declared.
    pub fn new(declared: &BTreeMap<String, TenantConfig>) -> Result<Tenants, String> {
        for (name, config) in declared {
            check_name(name)?;
            if name == DEFAULT {
                return Err(format!(
                    "tenant {DEFAULT:?} is the tenant of inputs that name none; it is not declared"
                ));
            }
            if config.share == 0 {
                return Err(format!("tenant {name:?}: share must be at least 1"));
            }
            if config.rate == Some(0) {
                return Err(format!(
                    "tenant {name:?}: rate must be at least 1 input/s (leave it out for none)"
                ));
            }
        }
        Ok(Tenants {
            declared: Arc::new(declared.clone()),
            open: false,
        })
    }

    /// Tenants for a run without a configuration: every well-formed name is taken.
    pub fn open() -> Tenants {
        Tenants {
            open: true,
            ..Tenants::default()
        }
    }

    /// Whether inputs may name `tenant`.
    pub fn knows(&self, tenant: &str) -> bool {
        tenant == DEFAULT || self.declared.contains_key(tenant) || (self.open && check_name(tenant).is_ok())
    }

    /// The declared names, without the default.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.declared.keys().map(String::as_str)
    }

    /// A tenant's share (1 for the default tenant and undeclared ones).
    pub fn share(&self, tenant: &str) -> u32 {
        self.declared.get(tenant).map_or(1, |c| c.share)
    }

    /// The most plugins of its own a tenant may have, if it is limited.
    pub fn max_plugins(&self, tenant: &str) -> Option<u32> {
        self.declared.get(tenant).and_then(|c| c.max_plugins)
    }

    /// A declared tenant's configuration.
    pub fn config(&self, tenant: &str) -> Option<&TenantConfig> {
        self.declared.get(tenant)
    }

    /// A tenant's rate of inputs per second from its own stream, if it has one.
    pub fn rate(&self, tenant: &str) -> Option<u32> {
        self.declared.get(tenant).and_then(|c| c.rate)
    }

    /// The tenant an input names, from its envelope or ingest rule (`claimed`) and its
    /// `Hub-Tenant` header: both may name it, but not differently, and it must be declared.
    pub fn resolve<'a>(
        &self,
        claimed: Option<&'a str>,
        headers: Option<&'a async_nats::HeaderMap>,
    ) -> Result<Option<&'a str>, String> {
        let header = headers.and_then(|h| h.get(HEADER)).map(|v| v.as_str());
        let tenant = match (claimed, header) {
            (Some(a), Some(b)) if a != b => {
                return Err(format!(
                    "the input names two tenants: {a:?}, and {b:?} in its {HEADER} header"
                ));
            }
            (Some(t), _) | (None, Some(t)) => t,
            (None, None) => return Ok(None),
        };
        if !self.knows(tenant) {
            check_name(tenant)?;
            let declared: Vec<&str> = self.names().collect();
            return Err(format!(
                "unknown tenant {tenant:?} (declared: {}); declare it under [tenants.{tenant}]",
                if declared.is_empty() {
                    "none".to_owned()
                } else {
                    declared.join(", ")
                }
            ));
        }
        Ok(Some(tenant).filter(|t| *t != DEFAULT))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn qualified_keys_split_back_into_tenant_and_actor(
            tenant in proptest::option::of("[a-z0-9_-]{1,64}"),
            actor in "[^\u{1f}]{1,40}",
        ) {
            let key = qualify(tenant.as_deref(), &actor);
            let tenant = tenant.filter(|t| t != DEFAULT);
            prop_assert_eq!(split(&key), (tenant.as_deref(), actor.as_str()));
        }
    }

    #[test]
    fn the_default_tenants_actors_keep_their_id_as_key() {
        assert_eq!(qualify(None, "alice"), "alice");
        assert_eq!(qualify(Some(DEFAULT), "alice"), "alice");
        assert_eq!(split("alice"), (None, "alice"));
        assert_eq!(name_of("alice"), DEFAULT);
        assert_eq!(name_of(&qualify(Some("acme"), "alice")), "acme");
        assert_eq!(
            sibling(&qualify(Some("acme"), "alice"), "bob"),
            qualify(Some("acme"), "bob")
        );
    }

    #[test]
    fn inputs_name_a_declared_tenant_once() {
        let declared = BTreeMap::from([("acme".to_owned(), TenantConfig::default())]);
        let tenants = Tenants::new(&declared).expect("valid");
        let mut acme = async_nats::HeaderMap::new();
        acme.insert(HEADER, "acme");
        assert_eq!(tenants.resolve(None, None), Ok(None));
        assert_eq!(tenants.resolve(Some("acme"), None), Ok(Some("acme")));
        assert_eq!(tenants.resolve(None, Some(&acme)), Ok(Some("acme")));
        assert_eq!(tenants.resolve(Some("acme"), Some(&acme)), Ok(Some("acme")));
        assert_eq!(tenants.resolve(Some(DEFAULT), None), Ok(None));
        let twice = tenants.resolve(Some(DEFAULT), Some(&acme)).expect_err("two tenants");
        assert!(twice.contains("two tenants"), "{twice}");
        let unknown = tenants.resolve(Some("globex"), None).expect_err("undeclared");
        assert!(
            unknown.contains("unknown tenant \"globex\"") && unknown.contains("acme"),
            "{unknown}"
        );
        let bad = tenants.resolve(Some("Acme Corp"), None).expect_err("not a name");
        assert!(bad.contains("lowercase"), "{bad}");
    }

    #[test]
    fn the_default_tenant_and_bad_names_cannot_be_declared() {
        for name in [DEFAULT, "", "Acme", "a.b", "a b"] {
            let declared = BTreeMap::from([(name.to_owned(), TenantConfig::default())]);
            assert!(Tenants::new(&declared).is_err(), "{name:?}");
        }
    }
}
