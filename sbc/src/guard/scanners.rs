//! The built-in scanner defence: requests whose User-Agent names a known SIP scanner are
//! dropped (or refused with 403), with no AccessList needed. The list is the one Kamailio
//! users put in their `request_route` (`$ua =~ "friendly-scanner|sipcli|..."`): the tools
//! that sweep the Internet for open PBXs and weak passwords, never a real phone. Sources the
//! guard trusts are exempt; `scanners.enabled: false` switches it off.

use kubesbc_crds::config::{ScannerAction, ScannerDefence};

use crate::sip::{HeaderName, Message};

/// The built-in patterns: lowercase substrings of the User-Agent, and what each matches.
/// Kept to tools whose only use is scanning or brute-forcing (sipsak, sipp or pjsua are
/// test tools operators use themselves and are not here).
pub const BUILT_IN: &[(&str, &str)] = &[
    (
        "friendly-scanner",
        "SIPVicious svmap (its default User-Agent)",
    ),
    ("friendly-request", "SIPVicious svwar/svcrack"),
    ("sipvicious", "SIPVicious, any tool of the suite"),
    ("sipcli", "sipcli, the brute-force dialer"),
    (
        "vaxsipuseragent",
        "VaxSIP-based dialers used for toll fraud",
    ),
    ("sundayddr", "sundayddr scanner"),
    ("sip-scan", "sip-scan"),
    ("iwar", "iWar war dialer"),
    ("sivus", "SiVuS vulnerability scanner"),
];

/// The compiled scanner defence of one configuration.
#[derive(Debug, Clone)]
pub struct Scanners {
    enabled: bool,
    drop: bool,
}

impl Default for Scanners {
    fn default() -> Self {
        Scanners::new(&ScannerDefence::default())
    }
}

impl Scanners {
    /// The defence `cfg` describes.
    pub fn new(cfg: &ScannerDefence) -> Scanners {
        Scanners {
            enabled: cfg.enabled,
            drop: cfg.action == ScannerAction::Drop,
        }
    }

    /// Whether refused scanners get no answer (else 403).
    pub fn drops(&self) -> bool {
        self.drop
    }

    /// The index in [`BUILT_IN`] of the pattern the request's User-Agent matches.
    pub fn matches(&self, req: &Message) -> Option<usize> {
        if !self.enabled {
            return None;
        }
        let ua = req.header_value(HeaderName::UserAgent)?;
        match_user_agent(ua)
    }
}

/// The index in [`BUILT_IN`] of the first pattern `ua` contains (ASCII case ignored).
pub fn match_user_agent(ua: &[u8]) -> Option<usize> {
    BUILT_IN.iter().position(|(p, _)| {
        let p = p.as_bytes();
        ua.len() >= p.len() && ua.windows(p.len()).any(|w| w.eq_ignore_ascii_case(p))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_scanners_match_in_any_case_and_phones_do_not() {
        for ua in [
            "friendly-scanner",
            "Friendly-Scanner 0.1",
            "sipvicious 0.3.4",
            "SIPCLI/v1.8",
            "VaxSIPUserAgent/3.1",
            "sundayddr",
            "iWar",
        ] {
            assert!(match_user_agent(ua.as_bytes()).is_some(), "{ua}");
        }
        for ua in [
            "Linphone/5.2",
            "Zoiper rv2.10",
            "sipsak 0.9.8",
            "sipp",
            "Asterisk PBX 20",
            "PJSUA v2.13",
            "",
        ] {
            assert_eq!(match_user_agent(ua.as_bytes()), None, "{ua}");
        }
    }

    #[test]
    fn patterns_are_lowercase() {
        for (p, _) in BUILT_IN {
            assert_eq!(*p, p.to_ascii_lowercase());
        }
    }
}
