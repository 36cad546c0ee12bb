//! Payloads an envelope carries as opaque bytes, each written as one serde
//! byte string (one length and the bytes in binary formats, not a
//! sequence of single bytes).
//!
//! A command is kept as the rkyv bytes a client sent, so the Raft log
//! stores and replicates exactly what was validated and every replica
//! decodes the same bytes; its response is serialized as its rkyv bytes
//! too. A Raft RPC is the coordinator's own encoding of openraft's types.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::command::{CodecError, Command, Response};

/// An encoded `Command`, as the client API and the Raft log carry it.
#[derive(Clone, PartialEq, Eq)]
pub struct CommandBytes(pub Vec<u8>);

impl CommandBytes {
    pub fn encode(cmd: &Command) -> Self {
        Self(cmd.to_bytes().to_vec())
    }

    pub fn decode(&self) -> Result<Command, CodecError> {
        Command::from_bytes(&self.0)
    }
}

impl Serialize for CommandBytes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for CommandBytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_byte_buf(ByteBuf).map(CommandBytes)
    }
}

impl std::fmt::Debug for CommandBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CommandBytes({} bytes)", self.0.len())
    }
}

impl std::fmt::Display for CommandBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// What applying one command produced, serialized as its rkyv bytes and
/// validated when read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied(pub Response);

impl Serialize for Applied {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0.to_bytes())
    }
}

impl<'de> Deserialize<'de> for Applied {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let bytes = deserializer.deserialize_byte_buf(ByteBuf)?;
        Response::from_bytes(&bytes)
            .map(Applied)
            .map_err(serde::de::Error::custom)
    }
}

/// A Raft RPC or its reply between replicas, as the coordinator encodes
/// it; opaque here.
#[derive(Clone, PartialEq, Eq)]
pub struct RaftMessage(pub Vec<u8>);

impl Serialize for RaftMessage {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for RaftMessage {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_byte_buf(ByteBuf).map(RaftMessage)
    }
}

impl std::fmt::Debug for RaftMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RaftMessage({} bytes)", self.0.len())
    }
}

/// Accepts a byte string, or a sequence of bytes (text formats).
struct ByteBuf;

impl<'de> serde::de::Visitor<'de> for ByteBuf {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a byte string")
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        Ok(v.to_vec())
    }

    fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(v)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
        while let Some(b) = seq.next_element()? {
            out.push(b);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::CommandError;
    use crate::ids::{JobId, NodeId};

    #[test]
    fn responses_serialize_as_validated_rkyv_bytes() {
        let applied = Applied(Response::Error(CommandError::UnknownNode { id: NodeId(4) }));
        let json = serde_json::to_vec(&applied).unwrap();
        assert_eq!(serde_json::from_slice::<Applied>(&json).unwrap(), applied);
        assert!(serde_json::from_slice::<Applied>(b"[1,2,3]").is_err());

        let cmd = Command::FinishSubmission {
            dataset: "d".into(),
            submission: JobId(2),
        };
        let bytes = CommandBytes::encode(&cmd);
        assert_eq!(bytes.decode().unwrap(), cmd);
        let json = serde_json::to_vec(&bytes).unwrap();
        assert_eq!(
            serde_json::from_slice::<CommandBytes>(&json).unwrap(),
            bytes
        );
        assert!(CommandBytes(vec![0xff; 3]).decode().is_err());
    }
}
