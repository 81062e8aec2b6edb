//! The access rules of an AccessList, compiled once so that matching a request allocates
//! nothing: CIDRs parsed, User-Agent patterns lowercased, reason phrases built.

use std::borrow::Cow;
use std::net::IpAddr;

use crate::cidr::Cidr;
use crate::sip::uri::{self, Uri};
use crate::sip::{HeaderName, Message};
use kubesbc_crds::policy::{AccessAction, AccessListConfig, AccessRule};

/// The value a required header must carry: inline, or read from the mounted Secret file
/// (trailing newlines are not part of it).
fn required_value(h: &kubesbc_crds::policy::HeaderValue) -> Option<Vec<u8>> {
    if let Some(v) = &h.value {
        return Some(v.clone().into_bytes());
    }
    let path = h.value_file.as_ref()?;
    match std::fs::read(path) {
        Ok(mut v) => {
            while v.last().is_some_and(|c| *c == b'\n' || *c == b'\r') {
                v.pop();
            }
            Some(v)
        }
        Err(e) => {
            tracing::error!(header = %h.name, file = %path, error = %e, "cannot read the required header's value: every request fails the rule");
            None
        }
    }
}

/// Whether `got` is `secret`, in a time that does not tell where they differ (`subtle`; a
/// different length answers at once: the length is not the secret).
pub fn constant_time_eq(got: &[u8], secret: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    bool::from(got.ct_eq(secret))
}

/// The standard reason phrase of a deny code.
fn phrase(code: u16) -> &'static str {
    match code {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        480 => "Temporarily Unavailable",
        488 => "Not Acceptable Here",
        500 => "Server Internal Error",
        503 => "Service Unavailable",
        603 => "Decline",
        _ => "Denied",
    }
}

/// One compiled rule.
#[derive(Debug)]
pub struct Rule {
    pub(crate) action: AccessAction,
    sources: Vec<Cidr>,
    user_agents: Vec<Vec<u8>>,
    from_domains: Vec<String>,
    /// Header name and required value; `None` when the Secret file could not be read, which
    /// no request can satisfy (fail closed).
    required: Vec<(String, Option<Vec<u8>>)>,
    methods: Vec<String>,
    pub(crate) code: u16,
    pub(crate) reason: Cow<'static, str>,
    /// A scanner rule (matches by User-Agent) of a list that drops scanners.
    pub(crate) drop: bool,
}

impl Rule {
    fn compile(r: &AccessRule, drop_scanners: bool) -> Rule {
        let why = if !r.required_headers.is_empty() {
            // The seeds' wording for a missing or wrong shared-secret header.
            " - Invalid Signature"
        } else if !r.user_agents.is_empty() {
            " (scanner)"
        } else if !r.from_domains.is_empty() {
            " (from domain)"
        } else if !r.sources.is_empty() {
            " (source address)"
        } else {
            " (access rule)"
        };
        Rule {
            action: r.action,
            // Validation already refused malformed CIDRs; anything unparsable is skipped.
            sources: r.sources.iter().filter_map(|c| Cidr::parse(c)).collect(),
            user_agents: r
                .user_agents
                .iter()
                .filter(|u| !u.is_empty())
                .map(|u| u.to_ascii_lowercase().into_bytes())
                .collect(),
            from_domains: r
                .from_domains
                .iter()
                .map(|d| d.trim_end_matches('.').to_ascii_lowercase())
                .collect(),
            required: r
                .required_headers
                .iter()
                .map(|h| (h.name.clone(), required_value(h)))
                .collect(),
            methods: r.methods.clone(),
            code: r.response_code,
            reason: Cow::Owned(format!("{}{why}", phrase(r.response_code))),
            drop: drop_scanners && !r.user_agents.is_empty(),
        }
    }

    /// Whether every criterion the rule lists matches the request.
    fn matches(&self, req: &Message, ip: IpAddr) -> bool {
        if !self.methods.is_empty() {
            let m = req.method_token();
            if !self.methods.iter().any(|x| x.as_bytes() == m) {
                return false;
            }
        }
        if !self.sources.is_empty() && !self.sources.iter().any(|c| c.contains(ip)) {
            return false;
        }
        if !self.user_agents.is_empty() {
            let Some(ua) = req.header_value(HeaderName::UserAgent) else {
                return false;
            };
            if !self.user_agents.iter().any(|p| contains_ignore_case(ua, p)) {
                return false;
            }
        }
        if !self.from_domains.is_empty() {
            let host = req
                .header_value(HeaderName::From)
                .and_then(|v| Uri::parse(uri::name_addr_uri(v)))
                .map(|u| u.host);
            let Some(host) = host else { return false };
            let host = host.strip_suffix(b".").unwrap_or(host);
            if !self
                .from_domains
                .iter()
                .any(|d| d.as_bytes().eq_ignore_ascii_case(host))
            {
                return false;
            }
        }
        if !self.required.is_empty() {
            // The criterion matches a request lacking a header or carrying a wrong value.
            let all_ok = self.required.iter().all(|(name, secret)| {
                let secret = secret.as_deref().filter(|s| !s.is_empty());
                req.header_value_named(name)
                    .zip(secret)
                    .is_some_and(|(v, s)| constant_time_eq(v, s))
            });
            if all_ok {
                return false;
            }
        }
        true
    }
}

/// `needle` (lowercase) inside `hay`, ignoring ASCII case.
fn contains_ignore_case(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty()
        || hay
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
}

/// One compiled AccessList.
#[derive(Debug)]
pub struct List {
    pub(crate) name: String,
    rules: Vec<Rule>,
    default_action: AccessAction,
    default_reason: Cow<'static, str>,
}

/// What an access list decides.
#[derive(Debug)]
pub enum Decision<'a> {
    /// Allowed (by a rule or the default).
    Allow,
    /// Denied by a rule.
    Deny(&'a Rule),
    /// Denied by the list's default action.
    DenyDefault(&'a str),
}

impl List {
    /// Compiles a list.
    pub fn compile(c: &AccessListConfig) -> List {
        List {
            name: c.name.clone(),
            rules: c
                .rules
                .iter()
                .map(|r| Rule::compile(r, c.drop_scanners))
                .collect(),
            default_action: c.default_action,
            default_reason: Cow::Borrowed("Forbidden (access list)"),
        }
    }

    /// The first matching rule decides; with none, the default action.
    pub fn decide(&self, req: &Message, ip: IpAddr) -> Decision<'_> {
        for r in &self.rules {
            if r.matches(req, ip) {
                return match r.action {
                    AccessAction::Allow => Decision::Allow,
                    AccessAction::Deny => Decision::Deny(r),
                };
            }
        }
        match self.default_action {
            AccessAction::Allow => Decision::Allow,
            AccessAction::Deny => Decision::DenyDefault(&self.default_reason),
        }
    }
}

/// Why a request's target is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadTarget {
    /// A multicast or broadcast address.
    Multicast,
    /// A link-local address.
    LinkLocal,
    /// An mDNS `.local` name.
    Mdns,
}

impl BadTarget {
    /// The reason phrase of the 403.
    pub fn reason(self) -> &'static str {
        match self {
            BadTarget::Multicast => "Forbidden (multicast target)",
            BadTarget::LinkLocal => "Forbidden (link-local target)",
            BadTarget::Mdns => "Forbidden (mDNS .local target)",
        }
    }
}

/// Checks one URI's host: multicast (224.0.0.0/4, ff00::/8) and broadcast, link-local
/// (169.254.0.0/16, fe80::/10) and mDNS names (`*.local`) are never relayed to.
pub fn bad_host(host: &[u8]) -> Option<BadTarget> {
    let ip = std::str::from_utf8(host)
        .ok()
        .and_then(|h| h.parse::<IpAddr>().ok())
        .map(|ip| ip.to_canonical());
    match ip {
        Some(IpAddr::V4(v4)) if v4.is_multicast() || v4.is_broadcast() => {
            Some(BadTarget::Multicast)
        }
        Some(IpAddr::V4(v4)) if v4.is_link_local() => Some(BadTarget::LinkLocal),
        Some(IpAddr::V6(v6)) if v6.is_multicast() => Some(BadTarget::Multicast),
        Some(IpAddr::V6(v6)) if v6.segments()[0] & 0xffc0 == 0xfe80 => Some(BadTarget::LinkLocal),
        Some(_) => None,
        None => {
            let h = host.strip_suffix(b".").unwrap_or(host);
            let is_local = h.len() >= 6 && h[h.len() - 6..].eq_ignore_ascii_case(b".local");
            (is_local || h.eq_ignore_ascii_case(b"local")).then_some(BadTarget::Mdns)
        }
    }
}

/// The first refused target among the Request-URI and the Route URIs; a Route naming one of
/// `own` (the sbc's own host names) is the sbc itself, not a target.
pub fn bad_target(req: &Message, own: &[String]) -> Option<BadTarget> {
    if let Some(u) = Uri::parse(req.request_uri())
        && let Some(b) = bad_host(u.host)
    {
        return Some(b);
    }
    req.values(HeaderName::Route).find_map(|span| {
        Uri::parse(uri::name_addr_uri(req.slice(span)))
            .filter(|u| {
                !own.iter()
                    .any(|h| h.as_bytes().eq_ignore_ascii_case(u.host))
            })
            .and_then(|u| bad_host(u.host))
    })
}
