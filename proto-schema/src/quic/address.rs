//! Addresses as the cluster writes them (`host:port`, the form Raft
//! members and client configurations use) and what dialling one needs:
//! a socket address, and the host name the peer's certificate must carry.

use std::net::SocketAddr;

/// The host an address names (without port or IPv6 brackets): the name
/// the certificate of whoever answers there must carry.
pub fn server_name(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Resolves an address to a socket address and a server name.
pub async fn resolve(address: &str) -> std::io::Result<(SocketAddr, String)> {
    let addr = tokio::net::lookup_host(address)
        .await?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("{address} resolves to no address")))?;
    Ok((addr, server_name(address).to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_name_is_the_host_of_the_address() {
        assert_eq!(server_name("127.0.0.1:7001"), "127.0.0.1");
        assert_eq!(server_name("coord-1.internal:7001"), "coord-1.internal");
        assert_eq!(server_name("[::1]:7001"), "::1");
    }
}
