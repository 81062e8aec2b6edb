//! EndpointSlices to dispatcher destinations: pure functions, no I/O.

use std::collections::BTreeSet;
use std::net::IpAddr;

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kubesbc_crds::config::{DestinationConfig, Transport};
use kubesbc_crds::policy::ServiceSource;

/// Whether an endpoint may take new calls: `ready` (absent means ready, as Kubernetes
/// documents) and not `terminating`. A terminating endpoint keeps its dialogs: in-dialog
/// requests are routed by Record-Route, never through the dispatcher.
fn takes_new_calls(e: &k8s_openapi::api::discovery::v1::Endpoint) -> bool {
    let c = e.conditions.as_ref();
    let ready = c.and_then(|c| c.ready).unwrap_or(true);
    let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
    ready && !terminating
}

/// The SIP URI of one endpoint address: `sip:10.0.0.5:5060;transport=tcp`,
/// `sip:[fd00::5]:5060;transport=udp`. `None` for an address that is not an IP literal
/// (FQDN slices): resolving it would block the dispatcher update.
pub fn endpoint_uri(address: &str, port: u16, transport: Transport) -> Option<String> {
    let ip: IpAddr = address.parse().ok()?;
    Some(match ip {
        IpAddr::V4(v4) => format!("sip:{v4}:{port};transport={}", transport.name()),
        IpAddr::V6(v6) => format!("sip:[{v6}]:{port};transport={}", transport.name()),
    })
}

/// The destination URIs of a Service's slices for `source`: every address of every endpoint
/// that takes new calls, on the slice's port named `source.port`. Sorted and deduplicated
/// (an address can sit in two slices while Kubernetes moves it).
pub fn service_uris<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    source: &ServiceSource,
) -> BTreeSet<String> {
    let mut uris = BTreeSet::new();
    for slice in slices {
        let Some(port) = slice
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(source.port.as_str()))
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
        else {
            continue;
        };
        for e in slice.endpoints.iter().filter(|e| takes_new_calls(e)) {
            for a in &e.addresses {
                if let Some(uri) = endpoint_uri(a, port, source.transport) {
                    uris.insert(uri);
                }
            }
        }
    }
    uris
}

/// Destinations for discovered URIs, described by where they came from.
pub fn destinations(uris: &BTreeSet<String>, service: &str) -> Vec<DestinationConfig> {
    uris.iter()
        .map(|uri| DestinationConfig {
            uri: uri.clone(),
            description: Some(format!("Service {service}")),
            ..DestinationConfig::default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn slice(v: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(v).unwrap()
    }

    fn source(port: &str, transport: Transport) -> ServiceSource {
        ServiceSource {
            namespace: Some("voip".into()),
            name: "asterisk".into(),
            port: port.into(),
            transport,
        }
    }

    #[test]
    fn ready_endpoints_on_the_named_port_become_uris() {
        let s = slice(json!({
            "metadata": {"name": "asterisk-abc"},
            "addressType": "IPv4",
            "ports": [{"name": "metrics", "port": 9100}, {"name": "sip", "port": 5060, "protocol": "UDP"}],
            "endpoints": [
                {"addresses": ["10.0.0.5"], "conditions": {"ready": true}},
                {"addresses": ["10.0.0.6"], "conditions": {"ready": false}},
                {"addresses": ["10.0.0.7"], "conditions": {"ready": true, "terminating": true}},
                {"addresses": ["10.0.0.8"]},
                {"addresses": ["fd00::9"], "conditions": {"ready": true}}
            ]
        }));
        let uris: Vec<_> = service_uris([&s], &source("sip", Transport::Tcp))
            .into_iter()
            .collect();
        assert_eq!(
            uris,
            [
                "sip:10.0.0.5:5060;transport=tcp",
                "sip:10.0.0.8:5060;transport=tcp",
                "sip:[fd00::9]:5060;transport=tcp"
            ]
        );
        // A slice without the named port contributes nothing.
        assert!(service_uris([&s], &source("sip-tls", Transport::Tls)).is_empty());
    }

    #[test]
    fn duplicates_across_slices_and_fqdns() {
        let a = slice(json!({
            "metadata": {"name": "a"}, "addressType": "IPv4",
            "ports": [{"name": "sip", "port": 5060}],
            "endpoints": [{"addresses": ["10.0.0.5"]}]
        }));
        let b = slice(json!({
            "metadata": {"name": "b"}, "addressType": "FQDN",
            "ports": [{"name": "sip", "port": 5060}],
            "endpoints": [{"addresses": ["10.0.0.5"]}, {"addresses": ["pbx.example.com"]}]
        }));
        let uris = service_uris([&a, &b], &source("sip", Transport::Udp));
        assert_eq!(uris.len(), 1, "{uris:?}");
        let d = destinations(&uris, "voip/asterisk");
        assert_eq!(d[0].uri, "sip:10.0.0.5:5060;transport=udp");
        assert_eq!(d[0].description.as_deref(), Some("Service voip/asterisk"));
    }
}
