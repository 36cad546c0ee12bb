//! The two types openraft carries for us: a command as it travels in the
//! log, and the response its application produced.
//!
//! A command is kept as the rkyv bytes a client sent, so the log stores and
//! replicates exactly what was validated, and every replica decodes the same
//! bytes. The response crosses no Raft RPC, but openraft's `serde` feature
//! requires it to be serializable: it is serialized as its rkyv bytes.
//! Both serialize as serde byte strings, which binary formats (the future
//! QUIC transport's) write as one length-prefixed block, not per byte.

use proto_schema::command::{CodecError, Command, Response};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An encoded `Command`, as stored in the Raft log.
#[derive(Clone, PartialEq, Eq)]
pub struct CommandBytes(pub Vec<u8>);

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

impl CommandBytes {
    pub fn encode(cmd: &Command) -> Self {
        Self(cmd.to_bytes().to_vec())
    }

    pub fn decode(&self) -> Result<Command, CodecError> {
        Command::from_bytes(&self.0)
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

/// What applying one log entry produced.
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

#[cfg(test)]
mod tests {
    use proto_schema::command::CommandError;

    use super::*;

    #[test]
    fn responses_serialize_as_validated_rkyv_bytes() {
        let applied = Applied(Response::Error(CommandError::UnknownNode { id: 4 }));
        let json = serde_json::to_vec(&applied).unwrap();
        assert_eq!(serde_json::from_slice::<Applied>(&json).unwrap(), applied);
        assert!(serde_json::from_slice::<Applied>(b"[1,2,3]").is_err());

        let cmd = Command::FinishSubmission {
            dataset: "d".into(),
            submission: 2,
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
