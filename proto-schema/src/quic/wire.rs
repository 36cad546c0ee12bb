//! The bytes of one request/response exchange on a bidirectional QUIC
//! stream. Each request gets a stream of its own, so messages need no ids:
//!
//! ```text
//! request:  length u32 | payload                 (then the client finishes its side)
//! response: status u8 | length u32 | payload     (status 0: the handler's answer;
//!                                                  1: refused, payload is the reason)
//! ```
//! Integers are little-endian. No checksum: TLS authenticates every byte.
//! Readers learn a length before allocating, so the caller can refuse an
//! oversized message without reading it, and then allocate as the bytes
//! arrive, not as the length claims.

use quinn::{ReadExactError, RecvStream, SendStream, WriteError};

/// The response carries the handler's answer.
pub(super) const STATUS_OK: u8 = 0;
/// The server refused the request; the payload says why, in UTF-8.
pub(super) const STATUS_REFUSED: u8 = 1;

pub(super) async fn write_request(send: &mut SendStream, payload: &[u8]) -> Result<(), WriteError> {
    send.write_all(&length(payload)).await?;
    send.write_all(payload).await?;
    send.finish().map_err(|_| WriteError::ClosedStream)
}

pub(super) async fn write_response(
    send: &mut SendStream,
    status: u8,
    payload: &[u8],
) -> Result<(), WriteError> {
    let mut header = [status; 5];
    header[1..].copy_from_slice(&length(payload));
    send.write_all(&header).await?;
    send.write_all(payload).await?;
    send.finish().map_err(|_| WriteError::ClosedStream)
}

pub(super) async fn read_request_len(recv: &mut RecvStream) -> Result<u32, ReadExactError> {
    let mut len = [0u8; 4];
    recv.read_exact(&mut len).await?;
    Ok(u32::from_le_bytes(len))
}

/// The status and payload length of a response.
pub(super) async fn read_response_header(
    recv: &mut RecvStream,
) -> Result<(u8, u32), ReadExactError> {
    let mut header = [0u8; 5];
    recv.read_exact(&mut header).await?;
    let len = u32::from_le_bytes(header[1..].try_into().expect("4 bytes"));
    Ok((header[0], len))
}

/// What a payload's buffer starts at, whatever length its header claims.
const FIRST_CAPACITY: usize = 64 << 10;

/// Reads a payload whose length the caller has checked against its limit,
/// as its bytes arrive: the buffer grows with what was received (at most
/// twice that), not with the length the sender claimed, so a peer that
/// claims 16 MiB and sends nothing costs 64 KiB.
pub(super) async fn read_payload(
    recv: &mut RecvStream,
    len: u32,
) -> Result<Vec<u8>, ReadExactError> {
    let len = len as usize;
    let mut payload = Vec::with_capacity(len.min(FIRST_CAPACITY));
    while payload.len() < len {
        match recv.read_chunk(len - payload.len(), true).await {
            Ok(Some(chunk)) => payload.extend_from_slice(&chunk.bytes),
            Ok(None) => return Err(ReadExactError::FinishedEarly(payload.len())),
            Err(e) => return Err(ReadExactError::ReadError(e)),
        }
    }
    Ok(payload)
}

/// Callers check sizes against `RpcConfig::max_message`, a u32, first.
fn length(payload: &[u8]) -> [u8; 4] {
    u32::try_from(payload.len())
        .expect("message sizes are checked against a u32 limit")
        .to_le_bytes()
}
