//! Several hub instances sharing one event stream, the way Kafka Streams instances share a
//! topic's partitions — on what NATS already provides, with no protocol of our own:
//!
//! - **Partitions.** Actors are split into `partitions` (a stable hash of the actor, so each
//!   actor's events stay in one partition, in order). One instance at a time holds the `ingest`
//!   lease and reads the input stream: it decodes each input only to learn its actor and forwards
//!   it, as received, to `<subject>.<partition>` of the partition stream ([`repartition`]). An
//!   event a plugin emits for an actor of another partition is published there too, and so may
//!   producers that know their actor ([`partition_of`]), which spares the input a second store.
//! - **Ownership.** Each partition is read by the one instance that holds its lease, a key in a
//!   NATS key-value bucket whose entries expire `lease_ttl` after their last write ([`leases`]).
//!   Instances renew their leases with the revision they last wrote (a changed revision means
//!   the lease was lost), stop touching a partition whose lease they could not renew within half
//!   its life, and balance: each aims at an equal share and gives back what it holds above it.
//! - **Fencing.** A partition's consumer is named after the lease revision that created it, and
//!   a new owner deletes its predecessor's before it restores the partition's state, so
//!   acknowledgements of an instance that lost the lease reach nothing, and every input
//!   acknowledged before has its changes in what is restored.

pub mod changelog;
pub mod leases;
pub mod plugins;
pub mod policies;
pub mod repartition;
pub mod streams;
pub mod takeover;

use crate::router::Router;
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tokio::sync::watch;

/// Headers of a forwarded input on the partition stream.
pub mod headers {
    /// The subject the input arrived on (it is decoded as if it came from there).
    pub const SUBJECT: &str = "Hub-Subject";
    /// The input's place, `<seq>` in the input stream or `<tenant>.<seq>` in a tenant's own
    /// (see [`input_place`]), and when the server stored it (ms): its ids and time come from
    /// these, as in a single hub.
    pub const INPUT_SEQ: &str = "Hub-Input-Seq";
    pub const INPUT_STORED: &str = "Hub-Input-Stored";

    /// The value of [`INPUT_SEQ`] for sequence `seq` of the input stream (`tenant` None) or of
    /// a tenant's own stream. Tenant names have no dots, so the last one splits it.
    pub fn input_place(tenant: Option<&str>, seq: u64) -> String {
        match tenant {
            Some(tenant) => format!("{tenant}.{seq}"),
            None => seq.to_string(),
        }
    }

    /// The tenant whose own stream an [`INPUT_SEQ`] value counts in (None: the input stream)
    /// and the sequence; None if it is not one.
    pub fn parse_input_place(place: &str) -> Option<(Option<&str>, u64)> {
        match place.rsplit_once('.') {
            Some((tenant, seq)) => Some((Some(tenant).filter(|t| !t.is_empty()), seq.parse().ok()?)),
            None => Some((None, place.parse().ok()?)),
        }
    }
    /// How many plugin hops produced an emitted event.
    pub const HOPS: &str = "Hub-Hops";
}

/// The partition of `actor` among `partitions`: `xxh3_64(actor's UTF-8 bytes) % 4096 %
/// partitions` (XXH3, 64 bits, seed 0), where an actor of a tenant other than the default is
/// `<tenant>` U+001F `<id>` (see [`crate::tenant`]). A partition of the checkpoints' finer split, so each
/// checkpoint belongs to exactly one; and the contract for producers that publish to
/// `<subject>.<partition>` themselves, in any language with an XXH3 binding.
pub fn partition_of(actor: &str, partitions: u16) -> u16 {
    Router::partition_of(actor) % partitions.max(1)
}

/// The headers of an input a producer publishes to its actor's partition itself
/// (`<subject>.<partition_of(actor)>`), standing for `subject` (`events.<kind>` or an ingest
/// rule's subject): the partition's owner decodes it as if it had arrived there.
pub fn direct_input_headers(subject: &str) -> async_nats::HeaderMap {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(headers::SUBJECT, subject);
    headers
}

/// What every part of this instance may ask about the cluster: which partitions it processes.
pub struct Cluster {
    pub instance: String,
    pub partitions: u16,
    /// Partitions this instance processes now: set once its lease is taken, cleared as soon
    /// as it is lost or handed back.
    owned: Box<[AtomicBool]>,
    /// The revision of the lease each partition is processed under (its commits' epoch).
    revisions: Box<[AtomicU64]>,
    board: watch::Sender<Board>,
}

impl Cluster {
    pub fn new(instance: String, partitions: u16) -> Cluster {
        let partitions = partitions.clamp(1, crate::limits::PARTITIONS);
        let board = Board {
            instance: instance.clone(),
            partitions,
            ..Board::default()
        };
        Cluster {
            instance,
            partitions,
            owned: (0..partitions).map(|_| AtomicBool::new(false)).collect(),
            revisions: (0..partitions).map(|_| AtomicU64::new(0)).collect(),
            board: watch::channel(board).0,
        }
    }

    pub fn partition_of(&self, actor: &str) -> u16 {
        partition_of(actor, self.partitions)
    }

    pub fn owns(&self, partition: u16) -> bool {
        self.owned
            .get(usize::from(partition))
            .is_some_and(|o| o.load(Ordering::Acquire))
    }

    pub fn owns_actor(&self, actor: &str) -> bool {
        self.owns(self.partition_of(actor))
    }

    /// The revision of the lease `partition` is processed under.
    pub fn revision(&self, partition: u16) -> u64 {
        self.revisions
            .get(usize::from(partition))
            .map_or(0, |r| r.load(Ordering::Acquire))
    }

    /// The lease `partition` is (about to be) processed under.
    pub(crate) fn set_revision(&self, partition: u16, revision: u64) {
        if let Some(r) = self.revisions.get(usize::from(partition)) {
            r.store(revision, Ordering::Release);
        }
    }

    pub(crate) fn set_owned(&self, partition: u16, owned: bool) {
        if let Some(o) = self.owned.get(usize::from(partition)) {
            o.store(owned, Ordering::Release);
        }
        // The board shows it at once, not at the next lease tick.
        self.board.send_modify(|b| {
            b.owned.retain(|&p| p != partition);
            b.restoring.retain(|&p| p != partition);
            b.owners.retain(|o| o.partition != partition);
            if owned {
                b.owned.push(partition);
                b.owned.sort_unstable();
                b.owners.push(Owner {
                    partition,
                    instance: self.instance.clone(),
                });
                b.owners.sort_by_key(|o| o.partition);
            }
        });
    }

    /// Who processes what, as last seen.
    pub fn board(&self) -> Board {
        self.board.borrow().clone()
    }

    /// The live member that holds `partition`'s lease, as last seen (`None`: nobody now).
    pub fn owner_of(&self, partition: u16) -> Option<Member> {
        let board = self.board.borrow();
        let owner = board.owners.iter().find(|o| o.partition == partition)?;
        board.members.iter().find(|m| m.instance == owner.instance).cloned()
    }

    fn publish(&self, board: Board) {
        self.board.send_modify(|b| {
            let restores = std::mem::take(&mut b.restores);
            *b = board;
            b.restores = restores;
        });
    }

    /// Note a partition's restore (the last 32 are kept).
    pub(crate) fn restored(&self, restore: Restore) {
        self.board.send_modify(|b| {
            b.restores.push(restore);
            let over = b.restores.len().saturating_sub(32);
            b.restores.drain(..over);
        });
    }
}

/// The cluster as this instance last saw it (for `/healthz`, the API and `hub status`).
#[derive(Debug, Clone, Default, Serialize, PartialEq, utoipa::ToSchema)]
pub struct Board {
    pub instance: String,
    pub partitions: u16,
    /// Live instances, by name.
    pub members: Vec<Member>,
    /// Partitions this instance processes.
    pub owned: Vec<u16>,
    /// Partitions whose lease this instance took, whose state it is restoring.
    pub restoring: Vec<u16>,
    /// Partitions being handed back (finishing what they have in flight).
    pub releasing: Vec<u16>,
    /// The owner of each partition (absent: none at the moment).
    pub owners: Vec<Owner>,
    /// The instance that reads the input stream and partitions it.
    pub ingest: Option<String>,
    /// How long the last partitions taken took to restore, newest last (ms).
    pub restores: Vec<Restore>,
    /// Leases this instance took, handed back, and lost since it started.
    pub taken: u64,
    pub released: u64,
    pub lost: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Member {
    pub instance: String,
    /// Where its HTTP API listens.
    pub http: String,
    /// When it started (ms since the epoch).
    pub started: i64,
}

/// A partition's state rebuilt from the changelog when this instance took it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Restore {
    pub partition: u16,
    /// Keys restored, and changelog messages read.
    pub keys: u64,
    pub records: u64,
    pub ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Owner {
    pub partition: u16,
    pub instance: String,
}

/// Open the key-value bucket `bucket`, creating it first if needed: as its stream, because the
/// client's `create_key_value` first reads account limits in a form the 2.9 server does not
/// answer in. Entries live `max_age` after their last write (zero: for ever).
pub(crate) async fn open_bucket(
    js: &async_nats::jetstream::Context,
    bucket: &str,
    description: &str,
    max_age: std::time::Duration,
) -> Result<async_nats::jetstream::kv::Store, String> {
    use async_nats::jetstream::stream;
    if let Ok(kv) = js.get_key_value(bucket).await {
        return Ok(kv);
    }
    js.create_stream(stream::Config {
        name: format!("KV_{bucket}"),
        description: Some(description.to_owned()),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_age,
        // The server refuses a deduplication window longer than the entries live.
        duplicate_window: if max_age.is_zero() {
            std::time::Duration::ZERO
        } else {
            max_age.min(std::time::Duration::from_secs(120))
        },
        storage: stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    })
    .await
    .map_err(|e| format!("create: {e}"))?;
    js.get_key_value(bucket).await.map_err(|e| format!("open: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// A forward's place reads back as written, for the input stream and every tenant's.
        #[test]
        fn an_inputs_place_reads_back_with_its_stream(
            tenant in proptest::option::of("[a-z0-9_-]{1,64}"),
            seq in any::<u64>(),
        ) {
            let place = headers::input_place(tenant.as_deref(), seq);
            prop_assert_eq!(headers::parse_input_place(&place), Some((tenant.as_deref(), seq)));
        }
    }

    #[test]
    fn a_place_that_is_not_one_reads_as_none() {
        for place in ["", "x", "acme.", "acme.x", "-1", "1.2.x"] {
            assert_eq!(headers::parse_input_place(place), None, "{place:?}");
        }
        // An earlier version's forward: the input stream's sequence alone.
        assert_eq!(headers::parse_input_place("42"), Some((None, 42)));
    }

    #[test]
    fn each_checkpoint_partition_lies_in_one_cluster_partition() {
        let cluster = Cluster::new("a".into(), 7);
        for actor in ["ann", "bob", "cid", "", "ü"] {
            let fine = Router::partition_of(actor);
            assert_eq!(cluster.partition_of(actor), fine % 7);
        }
    }

    #[test]
    fn ownership_is_per_partition_and_out_of_range_is_never_owned() {
        let cluster = Cluster::new("a".into(), 4);
        cluster.set_owned(2, true);
        assert!(cluster.owns(2));
        assert!(!cluster.owns(1));
        assert!(!cluster.owns(9));
        cluster.set_owned(2, false);
        assert!(!cluster.owns(2));
    }
}
