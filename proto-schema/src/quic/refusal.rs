//! What a failed handshake means, for the log and the metrics. A TLS
//! refusal travels as a QUIC CRYPTO_ERROR whose code is 0x100 + the TLS
//! alert. When our side raised it, we refused the peer (no certificate, or
//! one the cluster CA did not issue): that is logged as a warning naming
//! the peer and counted in `quern_tls_peer_refused_total`. When the peer
//! raised it, the peer refused us, which is logged too.

use std::net::SocketAddr;

use quinn::ConnectionError;

use super::RpcError;

/// Counter of peers refused during the TLS handshake (labels `reason`, a
/// TLS alert's meaning such as `no_certificate` or `unknown_ca`, and
/// `role`, ours: `server` or `client`).
pub const PEER_REFUSED_METRIC: &str = "quern_tls_peer_refused_total";

/// Which end of the connection we are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Server,
    Client,
}

impl Role {
    fn label(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Client => "client",
        }
    }
}

/// The TLS alert carried by a QUIC transport error code, if it is one.
fn tls_alert(code: quinn::TransportErrorCode) -> Option<u8> {
    let code = u64::from(code);
    (0x100..=0x1ff)
        .contains(&code)
        .then(|| (code - 0x100) as u8)
}

/// The metric label for a TLS alert (RFC 8446 codes, as rustls sends them).
fn alert_reason(alert: u8) -> &'static str {
    match alert {
        116 => "no_certificate",     // certificate_required
        48 => "unknown_ca",          // the chain does not lead to the cluster CA
        42 => "bad_certificate",     // malformed, or not valid for the name
        45 => "expired",             // expired or not yet valid
        51 => "bad_signature",       // decrypt_error: a signature did not verify
        43 => "wrong_purpose",       // unsupported_certificate: EKU lacks client/server auth
        120 => "no_common_protocol", // no_application_protocol: not a Quern peer
        _ => "handshake_failed",
    }
}

/// Logs (and, for refusals by us, counts) a handshake with `addr` that
/// failed, and says what happened as an error for the caller.
pub(super) fn handshake_failed(role: Role, addr: SocketAddr, error: ConnectionError) -> RpcError {
    match &error {
        ConnectionError::TransportError(e) if tls_alert(e.code).is_some() => {
            let reason = alert_reason(tls_alert(e.code).expect("checked"));
            tracing::warn!(
                remote = %addr,
                role = role.label(),
                reason,
                detail = %e.reason,
                "refused a peer without a certificate from the cluster CA"
            );
            metrics::counter!(PEER_REFUSED_METRIC, "reason" => reason, "role" => role.label())
                .increment(1);
            RpcError::PeerRefused {
                addr,
                reason: e.reason.clone(),
            }
        }
        ConnectionError::ConnectionClosed(close) if tls_alert(close.error_code).is_some() => {
            refused_by_peer(addr, close)
        }
        _ => {
            tracing::debug!(remote = %addr, role = role.label(), %error, "handshake failed");
            RpcError::Handshake { addr, error }
        }
    }
}

/// A connection that ended after the handshake. A client's handshake can
/// finish before the server has checked the client's certificate, so a
/// refusal of our certificate can also arrive here.
pub(super) fn connection_lost(addr: SocketAddr, error: ConnectionError) -> RpcError {
    match &error {
        ConnectionError::ConnectionClosed(close) if tls_alert(close.error_code).is_some() => {
            refused_by_peer(addr, close)
        }
        _ => RpcError::Connection { addr, error },
    }
}

fn refused_by_peer(addr: SocketAddr, close: &quinn::ConnectionClose) -> RpcError {
    let alert = tls_alert(close.error_code).expect("checked by the caller");
    let reason = format!(
        "{} ({})",
        alert_reason(alert),
        String::from_utf8_lossy(&close.reason)
    );
    tracing::warn!(remote = %addr, %reason, "the peer refused our certificate");
    RpcError::RefusedByPeer { addr, reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_crypto_codes_carry_alerts() {
        assert_eq!(tls_alert(quinn::TransportErrorCode::crypto(48)), Some(48));
        assert_eq!(
            tls_alert(quinn::TransportErrorCode::PROTOCOL_VIOLATION),
            None
        );
        assert_eq!(alert_reason(116), "no_certificate");
        assert_eq!(alert_reason(48), "unknown_ca");
        assert_eq!(alert_reason(80), "handshake_failed");
    }
}
