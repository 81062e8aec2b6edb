//! Routing rules (docs/architecture.md, step 9): which dispatcher set, or which fixed target,
//! an initial request goes to. A pure decision over the parsed request, its source and the
//! dispatcher's current members; first match wins, no match means `dispatcher.defaultSet`.
//!
//! The rules are compiled once per configuration version ([`Rules::compile`]): CIDRs parsed,
//! methods recognised, targets turned into peers. Matching allocates nothing: it compares
//! slices of the request against the compiled values and parses the Request-URI at most once.

use std::net::IpAddr;

use kubesbc_crds::routing::{RouteRule, RoutingConfig};

use crate::cidr::Cidr;
use crate::dispatch::Dispatcher;
use crate::sip::uri::Uri;
use crate::sip::{Message, Method};
use crate::transport::Peer;

/// A rule that cannot be compiled. [`SbcConfig::validate`] refuses such rules first, so this
/// only reaches a caller that skipped validation.
///
/// [`SbcConfig::validate`]: kubesbc_crds::config::SbcConfig::validate
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("routing.rules[{rule}].{field}: {message}")]
pub struct RuleError {
    /// Index of the rule.
    pub rule: usize,
    /// The field at fault.
    pub field: &'static str,
    /// What is wrong.
    pub message: String,
}

/// Where a matching rule sends the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// A dispatcher set: a destination is selected there and failover stays within it.
    Set(u32),
    /// A fixed next hop, no failover.
    Target(Peer),
}

/// Who a request came from and what it is: what the rules read besides the message.
#[derive(Debug, Clone, Copy)]
pub struct Facts {
    /// The source address.
    pub source: IpAddr,
    /// The method.
    pub method: Method,
}

/// Which sets an address is a destination of, right now.
pub trait Members {
    /// Whether `ip` is the address of a destination of set `set`.
    fn has_member(&self, set: u32, ip: IpAddr) -> bool;
}

impl Members for Dispatcher {
    fn has_member(&self, set: u32, ip: IpAddr) -> bool {
        self.is_member(set, ip)
    }
}

/// The compiled rules of one configuration version.
#[derive(Debug, Default)]
pub struct Rules {
    rules: Vec<Compiled>,
}

#[derive(Debug)]
struct Compiled {
    sources: Vec<Cidr>,
    from_set: Option<u32>,
    user_prefixes: Vec<Box<[u8]>>,
    domains: Vec<Box<[u8]>>,
    header: Option<HeaderTest>,
    /// Known methods by enum, extension methods by token.
    methods: Vec<(Method, Box<[u8]>)>,
    route: Route,
}

#[derive(Debug)]
struct HeaderTest {
    name: String,
    value: Box<[u8]>,
    prefix: bool,
}

/// The Request-URI parts the rules read, parsed at most once per request.
#[derive(Clone, Copy)]
struct RequestUri<'a> {
    user: Option<&'a [u8]>,
    host: Option<&'a [u8]>,
}

fn request_uri(u: &[u8]) -> RequestUri<'_> {
    // tel:+4420... (RFC 3966): the number is the user part; there is no host.
    if u.len() > 4 && u[..4].eq_ignore_ascii_case(b"tel:") {
        let num = &u[4..];
        let end = num.iter().position(|c| *c == b';').unwrap_or(num.len());
        return RequestUri {
            user: Some(&num[..end]),
            host: None,
        };
    }
    match Uri::parse(u) {
        Some(p) => RequestUri {
            user: p.user,
            host: Some(p.host),
        },
        None => RequestUri {
            user: None,
            host: None,
        },
    }
}

impl Rules {
    /// Compiles the rules of a (validated) routing section.
    pub fn compile(cfg: &RoutingConfig) -> Result<Rules, RuleError> {
        let rules = cfg
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| compile_rule(i, r))
            .collect::<Result<_, _>>()?;
        Ok(Rules { rules })
    }

    /// Whether there is no rule: every initial request goes to the default set.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The route of the first rule that matches, with its index; `None`: no rule matched,
    /// the request goes to `dispatcher.defaultSet`.
    pub fn decide(
        &self,
        msg: &Message,
        facts: &Facts,
        members: &dyn Members,
    ) -> Option<(usize, Route)> {
        let mut ruri: Option<RequestUri<'_>> = None;
        for (i, r) in self.rules.iter().enumerate() {
            if r.matches(msg, facts, members, &mut ruri) {
                return Some((i, r.route));
            }
        }
        None
    }
}

impl Compiled {
    /// Cheap tests first (method, CIDRs), then the message, then set membership.
    fn matches<'m>(
        &self,
        msg: &'m Message,
        facts: &Facts,
        members: &dyn Members,
        ruri: &mut Option<RequestUri<'m>>,
    ) -> bool {
        if !self.methods.is_empty()
            && !self.methods.iter().any(|(m, token)| {
                if *m == Method::Other {
                    facts.method == Method::Other && msg.method_token() == &token[..]
                } else {
                    *m == facts.method
                }
            })
        {
            return false;
        }
        if !self.sources.is_empty() && !self.sources.iter().any(|c| c.contains(facts.source)) {
            return false;
        }
        if !self.user_prefixes.is_empty() || !self.domains.is_empty() {
            let u = *ruri.get_or_insert_with(|| request_uri(msg.request_uri()));
            if !self.user_prefixes.is_empty()
                && !u
                    .user
                    .is_some_and(|user| self.user_prefixes.iter().any(|p| user.starts_with(p)))
            {
                return false;
            }
            if !self.domains.is_empty()
                && !u
                    .host
                    .is_some_and(|h| self.domains.iter().any(|d| h.eq_ignore_ascii_case(d)))
            {
                return false;
            }
        }
        if let Some(h) = &self.header {
            let Some(v) = msg.header_value_named(&h.name) else {
                return false;
            };
            let ok = if h.prefix {
                v.starts_with(&h.value)
            } else {
                v == &h.value[..]
            };
            if !ok {
                return false;
            }
        }
        if let Some(set) = self.from_set
            && !members.has_member(set, facts.source)
        {
            return false;
        }
        true
    }
}

fn compile_rule(i: usize, r: &RouteRule) -> Result<Compiled, RuleError> {
    let bad = |field: &'static str, message: String| RuleError {
        rule: i,
        field,
        message,
    };
    let sources = r
        .sources
        .iter()
        .map(|c| Cidr::parse(c).ok_or_else(|| bad("sources", format!("{c:?} is not a CIDR"))))
        .collect::<Result<_, _>>()?;
    let route = match (r.set, &r.target) {
        (Some(id), None) => Route::Set(id),
        (None, Some(t)) => Route::Target(
            super::uri_target(t.as_bytes())
                .ok_or_else(|| bad("target", format!("{t:?} is not an IP-literal SIP URI")))?,
        ),
        _ => {
            return Err(bad("set", "give exactly one of set and target".to_owned()));
        }
    };
    Ok(Compiled {
        sources,
        from_set: r.from_set,
        user_prefixes: r
            .uri_user_prefixes
            .iter()
            .map(|p| p.as_bytes().into())
            .collect(),
        domains: r.uri_domains.iter().map(|d| d.as_bytes().into()).collect(),
        header: r.header.as_ref().map(|h| HeaderTest {
            name: h.name.clone(),
            value: h
                .value
                .as_deref()
                .or(h.prefix.as_deref())
                .unwrap_or("")
                .as_bytes()
                .into(),
            prefix: h.prefix.is_some(),
        }),
        methods: r
            .methods
            .iter()
            .map(|m| (Method::from_bytes(m.as_bytes()), m.as_bytes().into()))
            .collect(),
        route,
    })
}

#[cfg(test)]
mod tests;
