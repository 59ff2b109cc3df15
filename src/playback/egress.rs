//! PlayAudio's egress policy: which servers the bridge may fetch audio from.
//!
//! A PlayAudio URL is chosen by the caller, and the bridge sits inside the operator's network,
//! so by default it refuses any URL whose host is, or resolves to, an address that is not on
//! the public internet: loopback, private (RFC 1918), shared (100.64/10), link-local
//! (169.254/16, where cloud metadata services answer), unique-local and link-local IPv6,
//! unspecified, multicast, broadcast, reserved and documentation ranges, and IPv4 addresses
//! carried inside IPv6 (mapped, NAT64) for the same. Deployments that serve audio internally
//! open it with `PLAYBACK_ALLOW_HOSTS` (names, or `*.suffix`) and `PLAYBACK_ALLOW_NETS` (CIDRs).
//!
//! Where it is enforced, so that no request reaches a refused address:
//! - names are resolved by [`PolicyResolver`], the HTTP client's only resolver: **every**
//!   address a name resolves to must be allowed, and the client connects to exactly the
//!   addresses that were checked (no second lookup, so no DNS-rebinding gap);
//! - IP literals, which the client does not resolve, are checked before the first request and
//!   on every redirect hop ([`EgressPolicy::check_url`]), as are redirects to names (through
//!   the resolver).
//!
//! Through a proxy (`PLAYBACK_PROXY`) the bridge connects to the proxy only, and the proxy
//! resolves the names in URLs: the bridge never learns where a name leads, so it cannot check
//! it without a second lookup that the proxy would not share. There, IP literals are still
//! checked on every hop, allowed names pass as before, and other names are the proxy's to
//! refuse: its access list is the egress policy. The resolver then only ever resolves the
//! proxy's own name, which it lets through (a proxy normally lives on a private network).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Where a fetch was refused, and why; found in a failed request's error chain.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "refused by the egress policy: {0} (open it with PLAYBACK_ALLOW_HOSTS or PLAYBACK_ALLOW_NETS)"
)]
pub struct Refused(pub String);

/// Hosts and networks PlayAudio may fetch from beyond the public internet.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    /// Lowercase host names; `*.example.com` allows every name under example.com.
    hosts: Vec<String>,
    nets: Vec<IpNet>,
}

impl EgressPolicy {
    /// A policy from comma-separated host names and CIDR networks; why not, for a bad entry.
    pub fn parse(hosts: &str, nets: &str) -> Result<Self, String> {
        let hosts = hosts
            .split(',')
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect();
        let nets = nets
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(|n| {
                n.parse::<IpNet>()
                    .or_else(|_| n.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("{n:?} is not a network (e.g. 10.0.0.0/8) or an address"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { hosts, nets })
    }

    /// Whether `host` (a name, or an IP literal as written in a URL) is allowed by name.
    pub fn allows_host(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.hosts
            .iter()
            .any(|allowed| match allowed.strip_prefix("*.") {
                Some(suffix) => host.ends_with(&format!(".{suffix}")),
                None => *allowed == host,
            })
    }

    /// Whether the bridge may connect to `ip`: public, or in an allowed network.
    pub fn allows_ip(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|n| n.contains(&ip)) || not_public(ip).is_none()
    }

    /// Checks a URL whose host is an IP literal (names are checked when resolved).
    pub fn check_url(&self, url: &Url) -> Result<(), Refused> {
        let ip = match url.host() {
            Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
            Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
            _ => return Ok(()),
        };
        let written = url.host_str().unwrap_or_default();
        if self.allows_host(written) || self.allows_ip(ip) {
            return Ok(());
        }
        Err(Refused(format!(
            "{ip} is {}",
            not_public(ip).unwrap_or("refused")
        )))
    }
}

/// What kind of non-public address `ip` is, or None for a public one.
pub fn not_public(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => not_public_v4(v4),
        IpAddr::V6(v6) => not_public_v6(v6),
    }
}

fn not_public_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        _ if ip.is_loopback() => "a loopback address",
        _ if ip.is_private() => "a private address",
        _ if ip.is_link_local() => "a link-local address (cloud metadata lives there)",
        _ if ip.is_broadcast() => "the broadcast address",
        _ if ip.is_multicast() => "a multicast address",
        _ if ip.is_documentation() => "a documentation address",
        (0, _, _) => "an unspecified address",
        (100, 64..=127, _) => "a shared (carrier-grade NAT) address",
        (192, 0, 0) => "an IETF protocol address",
        (198, 18..=19, _) => "a benchmarking address",
        (240..=255, _, _) => "a reserved address",
        _ => return None,
    })
}

fn not_public_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return not_public_v4(v4);
    }
    let s = ip.segments();
    // NAT64 (64:ff9b::/96) carries an IPv4 address in its last 32 bits.
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [a, b] = s[6].to_be_bytes();
        let [c, d] = s[7].to_be_bytes();
        return not_public_v4(Ipv4Addr::new(a, b, c, d));
    }
    Some(match s[0] {
        _ if ip.is_loopback() => "a loopback address",
        _ if ip.is_unspecified() => "an unspecified address",
        _ if ip.is_multicast() => "a multicast address",
        x if x & 0xfe00 == 0xfc00 => "a unique-local address",
        x if x & 0xffc0 == 0xfe80 => "a link-local address",
        x if x & 0xffc0 == 0xfec0 => "a site-local address",
        0x2001 if s[1] == 0x0db8 => "a documentation address",
        // IPv4-compatible (::a.b.c.d, deprecated) and the rest of ::/8.
        0 => "a reserved address",
        _ => return None,
    })
}

/// The HTTP client's resolver: a name's addresses, every one checked against the policy.
pub struct PolicyResolver {
    policy: Arc<EgressPolicy>,
    /// The proxy's host name, resolved without a check (the operator chose it).
    proxy: Option<String>,
}

impl PolicyResolver {
    pub fn new(policy: Arc<EgressPolicy>) -> Self {
        Self {
            policy,
            proxy: None,
        }
    }

    /// Lets the proxy's own name resolve to whatever it resolves to.
    pub fn exempting_proxy(mut self, host: &str) -> Self {
        self.proxy = Some(host.trim_end_matches('.').to_ascii_lowercase());
        self
    }
}

impl Resolve for PolicyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        let exempt = self.proxy.as_deref() == Some(name.as_str().trim_end_matches('.'));
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if !exempt
                && !policy.allows_host(&host)
                && let Some(bad) = addrs.iter().find(|a| !policy.allows_ip(a.ip()))
            {
                let ip = bad.ip();
                let why = format!(
                    "{host} resolves to {ip}, {}",
                    not_public(ip).unwrap_or("refused")
                );
                return Err(Box::new(Refused(why)) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an address")
    }

    #[test]
    fn only_public_addresses_pass_by_default() {
        let p = EgressPolicy::default();
        for refused in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "240.0.0.1",
            "192.0.2.1",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "2001:db8::1",
        ] {
            assert!(!p.allows_ip(ip(refused)), "{refused} allowed");
        }
        for public in [
            "1.1.1.1",
            "8.8.8.8",
            "151.101.1.1",
            "2606:4700::1111",
            "64:ff9b::808:808",
        ] {
            assert!(p.allows_ip(ip(public)), "{public} refused");
        }
    }

    #[test]
    fn allowed_hosts_and_nets_open_the_policy() {
        let p = EgressPolicy::parse("audio.internal, *.cdn.corp", "10.0.0.0/8,127.0.0.1")
            .expect("valid");
        assert!(p.allows_host("audio.internal"));
        assert!(p.allows_host("AUDIO.internal."));
        assert!(p.allows_host("eu.cdn.corp"));
        assert!(!p.allows_host("cdn.corp"));
        assert!(!p.allows_host("evilcdn.corp"));
        assert!(p.allows_ip(ip("10.9.8.7")));
        assert!(p.allows_ip(ip("127.0.0.1")));
        assert!(!p.allows_ip(ip("127.0.0.2")));
        assert!(EgressPolicy::parse("", "10.0.0.0/33").is_err());
        assert!(EgressPolicy::parse("", "intranet").is_err());
    }

    #[test]
    fn ip_literal_urls_are_checked_and_names_are_left_to_the_resolver() {
        let p = EgressPolicy::default();
        let url = |s: &str| Url::parse(s).expect("url");
        let refused = p
            .check_url(&url("http://169.254.169.254/latest/meta-data"))
            .unwrap_err();
        assert!(refused.to_string().contains("link-local"), "{refused}");
        assert!(p.check_url(&url("http://[::1]:8080/a.wav")).is_err());
        assert!(p.check_url(&url("http://1.1.1.1/a.wav")).is_ok());
        assert!(p.check_url(&url("http://localhost/a.wav")).is_ok());
    }

    #[tokio::test]
    async fn the_resolver_refuses_a_name_that_resolves_to_loopback() {
        let name = || "localhost".parse::<Name>().expect("a name");
        let resolver = PolicyResolver::new(Arc::new(EgressPolicy::default()));
        let err = resolver.resolve(name()).await.err().expect("refused");
        assert!(err.to_string().contains("loopback"), "{err}");
        let open = PolicyResolver::new(Arc::new(
            EgressPolicy::parse("localhost", "").expect("valid"),
        ));
        assert!(open.resolve(name()).await.is_ok());
        let proxy =
            PolicyResolver::new(Arc::new(EgressPolicy::default())).exempting_proxy("LocalHost.");
        assert!(proxy.resolve(name()).await.is_ok());
        let other = PolicyResolver::new(Arc::new(EgressPolicy::default())).exempting_proxy("proxy");
        assert!(other.resolve(name()).await.is_err());
    }
}
