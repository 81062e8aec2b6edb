//! IPv4/IPv6 networks: one parser for the configuration's checks and the sbc's matching (the
//! trusted sources of auth and guard, the sources of access and routing rules, the inside
//! networks), so a network the checks accept is always one the sbc can use.

use std::net::IpAddr;

/// A network: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: u128,
    mask: u128,
    v4: bool,
}

fn bits(ip: IpAddr) -> (u128, bool) {
    match ip {
        IpAddr::V4(a) => (u128::from(u32::from(a)), true),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => (u128::from(u32::from(v4)), true),
            None => (u128::from(a), false),
        },
    }
}

impl Cidr {
    /// Parses `10.0.0.0/8`, `2001:db8::/32` or a bare address (a /32 or /128); surrounding
    /// whitespace is ignored.
    pub fn parse(s: &str) -> Option<Cidr> {
        let s = s.trim();
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l.parse::<u32>().ok()?)),
            None => (s, None),
        };
        let (net, v4) = bits(addr.parse().ok()?);
        let width = if v4 { 32 } else { 128 };
        let len = len.unwrap_or(width);
        if len > width {
            return None;
        }
        let host_bits = width - len;
        let full = if v4 { u128::from(u32::MAX) } else { u128::MAX };
        let mask = full.checked_shl(host_bits).map_or(0, |m| m & full);
        Some(Cidr {
            net: net & mask,
            mask,
            v4,
        })
    }

    /// Whether `ip` is inside (an IPv4-mapped IPv6 address matches IPv4 networks).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let (b, v4) = bits(ip);
        v4 == self.v4 && b & self.mask == self.net
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_checks_accept_the_sbc_uses() {
        // An IPv4-mapped IPv6 network is an IPv4 one: its prefix counts IPv4 bits.
        assert!(Cidr::parse("::ffff:10.0.0.0/104").is_none());
        assert!(Cidr::parse("::ffff:10.0.0.0/8").is_some());
        assert!(Cidr::parse("10.0.0.0/8x").is_none());
    }

    #[test]
    fn matches_v4_v6_and_mapped() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains("10.1.200.3".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.0.1".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        let all = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(all.contains("192.0.2.1".parse().unwrap()));
        assert!(!all.contains("2001:db8::1".parse().unwrap()));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains("2001:db8:ffff::1".parse().unwrap()));
        assert!(!v6.contains("2001:db9::1".parse().unwrap()));
        let one = Cidr::parse("127.0.0.2").unwrap();
        assert!(one.contains("127.0.0.2".parse().unwrap()));
        assert!(!one.contains("127.0.0.3".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_none());
        assert!(Cidr::parse("nope/8").is_none());
        assert!(Cidr::parse("nope").is_none());
        assert!(Cidr::parse(" 10.0.0.0/8 ").is_some());
        assert!(
            Cidr::parse("::/0")
                .unwrap()
                .contains("::1".parse().unwrap())
        );
    }
}
