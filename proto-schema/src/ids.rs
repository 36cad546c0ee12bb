//! The identifiers that cross crates, each its own type so that a node id
//! can never be passed where a shard id is expected. On the wire and on
//! disk each is its inner integer (rkyv and serde see a transparent
//! newtype); the glossary in ARCHITECTURE.md says what each one names.

use rkyv::{Archive, Deserialize, Serialize};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident($inner:ty)) => {
        $(#[$doc])*
        #[derive(
            Archive, Serialize, Deserialize, serde::Serialize, serde::Deserialize,
            Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default,
        )]
        #[serde(transparent)]
        #[repr(transparent)]
        pub struct $name(pub $inner);

        impl $name {
            /// The inner integer, for keys and metrics labels.
            pub const fn get(self) -> $inner {
                self.0
            }

            /// The id after this one (ids are handed out in order).
            pub const fn next(self) -> Self {
                Self(self.0 + 1)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }

        impl From<$inner> for $name {
            fn from(value: $inner) -> Self {
                Self(value)
            }
        }

        impl From<$name> for $inner {
            fn from(id: $name) -> Self {
                id.0
            }
        }
    };
}

id_type!(
    /// A node of the cluster: the `N` of its certificate's name `node-N`.
    NodeId(u64)
);
id_type!(
    /// A shard of a job: a whole file or a byte range of a plain file,
    /// the unit a node leases and scans.
    ShardId(u64)
);
id_type!(
    /// A job: one submission of an inventory to a dataset, ingested and
    /// committed as one.
    JobId(u64)
);
id_type!(
    /// A lease or partition-map epoch: a newer one fences every holder of
    /// an older one.
    Epoch(u64)
);
id_type!(
    /// A partition of a dataset's key space (`partition_of`).
    PartitionId(u16)
);
id_type!(
    /// A dataset in a store's catalogue.
    DatasetId(u32)
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_its_integer_on_the_wire() {
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&NodeId(7)).unwrap();
        assert_eq!(&bytes[..], &7u64.to_le_bytes());
        assert_eq!(serde_json::to_string(&ShardId(9)).unwrap(), "9");
        assert_eq!(
            rkyv::from_bytes::<Epoch, rkyv::rancor::Error>(
                &rkyv::to_bytes::<rkyv::rancor::Error>(&Epoch(3)).unwrap()
            )
            .unwrap(),
            Epoch(3)
        );
    }
}
