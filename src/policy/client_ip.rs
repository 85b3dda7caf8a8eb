//! The client's IP address: the peer of the connection, unless that peer is a
//! configured trusted proxy, in which case `X-Forwarded-For` is read from the
//! right, skipping trusted proxies, and the first other address is the client.
//! `X-Forwarded-For` is never trusted by default.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::extract::ConnectInfo;
use http::{Extensions, HeaderMap};
use ipnet::IpNet;

/// Resolves client addresses with the configured trusted proxy networks.
#[derive(Debug, Clone, Default)]
pub struct ClientIp {
    trusted: Box<[IpNet]>,
}

impl ClientIp {
    pub fn new(trusted: Vec<IpNet>) -> Self {
        Self {
            trusted: trusted.into_boxed_slice(),
        }
    }

    /// The client of a request; the unspecified address when the server did
    /// not record a peer (in-process `oneshot` calls).
    pub fn of(&self, extensions: &Extensions, headers: &HeaderMap) -> IpAddr {
        let peer = extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |info| info.0.ip());
        self.resolve(peer, headers)
    }

    fn resolve(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.is_trusted(peer) {
            return peer;
        }
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .collect();
        let mut client = peer;
        for hop in hops.iter().rev() {
            // A hop that is not an address ends the trusted chain: the last good one stands.
            let Ok(addr) = hop.parse::<IpAddr>() else {
                break;
            };
            client = addr;
            if !self.is_trusted(addr) {
                break;
            }
        }
        client
    }

    fn is_trusted(&self, addr: IpAddr) -> bool {
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
            v4 => v4,
        };
        self.trusted.iter().any(|net| net.contains(&addr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in xff {
            headers.append("x-forwarded-for", value.parse().unwrap());
        }
        headers
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_forwards() {
        let resolver = ClientIp::new(vec!["10.0.0.0/8".parse().unwrap()]);
        assert_eq!(
            resolver.resolve(ip("203.0.113.9"), &headers(&["1.2.3.4"])),
            ip("203.0.113.9")
        );
        assert_eq!(
            ClientIp::default().resolve(ip("10.0.0.1"), &headers(&["1.2.3.4"])),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn trusted_hops_are_skipped_from_the_right() {
        let resolver = ClientIp::new(vec!["10.0.0.0/8".parse().unwrap()]);
        let forwarded = headers(&["6.6.6.6, 198.51.100.7", "10.1.1.1"]);
        assert_eq!(
            resolver.resolve(ip("10.0.0.1"), &forwarded),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn garbage_ends_the_chain_and_no_header_means_the_peer() {
        let resolver = ClientIp::new(vec!["10.0.0.0/8".parse().unwrap()]);
        assert_eq!(
            resolver.resolve(ip("10.0.0.1"), &headers(&["junk, 10.2.2.2"])),
            ip("10.2.2.2")
        );
        assert_eq!(
            resolver.resolve(ip("10.0.0.1"), &headers(&[])),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn ipv4_mapped_peers_match_ipv4_networks() {
        let resolver = ClientIp::new(vec!["127.0.0.0/8".parse().unwrap()]);
        assert_eq!(
            resolver.resolve(ip("::ffff:127.0.0.1"), &headers(&["192.0.2.1"])),
            ip("192.0.2.1")
        );
    }
}
