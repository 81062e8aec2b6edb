//! The answers of the admin endpoint, by method and path.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Response, StatusCode};
use serde::Serialize;

use super::{AdminState, DispatcherSnapshot};
use crate::telemetry::METRICS_CONTENT_TYPE;

type Resp = Response<Full<Bytes>>;

fn text(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn json<T: Serialize>(value: &T) -> Resp {
    match serde_json::to_vec(value) {
        Ok(body) => text(StatusCode::OK, "application/json", body),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain; charset=utf-8",
            format!("cannot encode: {e}\n"),
        ),
    }
}

/// Answers one request. Pure with respect to the connection: routing only looks at the method
/// and the path.
pub fn respond(state: &AdminState, method: &Method, path: &str) -> Response<Full<Bytes>> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    if method != Method::GET && method != Method::HEAD {
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            PLAIN,
            "method not allowed\n",
        );
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match path {
        "/metrics" => match state.metrics.render() {
            Ok(body) => text(StatusCode::OK, METRICS_CONTENT_TYPE, body),
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, PLAIN, format!("{e}\n")),
        },
        "/healthz" => text(StatusCode::OK, PLAIN, "ok\n"),
        "/readyz" => match state.health.readiness() {
            Ok(()) if !state.health.any_destination_up() => text(
                StatusCode::OK,
                PLAIN,
                "ready (no destination up: new calls get 503)\n",
            ),
            Ok(()) => text(StatusCode::OK, PLAIN, "ready\n"),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                PLAIN,
                format!("not ready: {why}\n"),
            ),
        },
        "/dispatcher" => json(&DispatcherSnapshot {
            sets: (state.dispatcher)(),
        }),
        "/dialogs" | "/registrations" => match &state.observe {
            Some(v) if path == "/dialogs" => json(&v.dialogs()),
            Some(v) => json(&v.registrations()),
            None => text(
                StatusCode::NOT_FOUND,
                PLAIN,
                "dialog and registration tracking is off: add an observability section to the configuration\n",
            ),
        },
        // Served by `respond_async`, which can wait for the store.
        "/bans" => text(StatusCode::OK, "application/json", "[]"),
        _ => text(StatusCode::NOT_FOUND, PLAIN, "not found\n"),
    }
}

/// Answers `/bans` requests, which need the store; everything else goes to [`respond`].
pub async fn respond_async(state: &AdminState, method: &Method, uri: &hyper::Uri) -> Resp {
    const PLAIN: &str = "text/plain; charset=utf-8";
    let path = uri.path();
    let target = if let Some(ip) = path.strip_prefix("/bans/") {
        (method == Method::DELETE && ip != "remove").then_some(ip)
    } else if path == "/bans/remove" || path == "/bans/remove/" {
        None
    } else {
        return respond(state, method, path);
    };
    let ip = match (target, method) {
        (Some(ip), _) => Some(ip.to_owned()),
        (None, &Method::POST) if path.starts_with("/bans/remove") => uri.query().and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix("ip="))
                .map(str::to_owned)
        }),
        _ => {
            let mut r = text(
                StatusCode::METHOD_NOT_ALLOWED,
                PLAIN,
                "method not allowed\n",
            );
            r.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("DELETE, POST"));
            return r;
        }
    };
    let Some(ip) = ip else {
        return text(StatusCode::BAD_REQUEST, PLAIN, "missing ip\n");
    };
    // `[` and `]` around an IPv6 address are accepted, and percent-encoded colons.
    let raw = ip.replace("%3A", ":").replace("%3a", ":");
    let Ok(addr) = raw
        .trim_matches(|c| c == '[' || c == ']')
        .parse::<std::net::IpAddr>()
    else {
        return text(
            StatusCode::BAD_REQUEST,
            PLAIN,
            format!(
                "{:?} is not an IP address\n",
                raw.chars().take(64).collect::<String>()
            ),
        );
    };
    let Some(store) = &state.store else {
        return text(
            StatusCode::NOT_FOUND,
            PLAIN,
            format!("{addr} is not banned\n"),
        );
    };
    match crate::guard::remove_ban(store.as_ref(), addr).await {
        Ok(true) => text(StatusCode::OK, PLAIN, format!("ban of {addr} lifted\n")),
        Ok(false) => text(
            StatusCode::NOT_FOUND,
            PLAIN,
            format!("{addr} is not banned\n"),
        ),
        Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, PLAIN, format!("{e}\n")),
    }
}

/// Whether a request with `method` from `peer` may be served: reads from anyone, writes
/// (lifting a ban) from loopback only.
pub fn admits(method: &Method, peer: std::net::IpAddr) -> bool {
    let read_only = method == Method::GET || method == Method::HEAD;
    read_only || peer.is_loopback()
}

/// The answer to a write request from a client that is not on loopback.
pub(super) fn forbidden_write() -> Resp {
    text(
        StatusCode::FORBIDDEN,
        "text/plain; charset=utf-8",
        "write requests are accepted from loopback only: run `sbc ctl` in the pod (kubectl exec)\n",
    )
}

pub(super) async fn list_bans(state: &AdminState) -> Resp {
    let Some(store) = &state.store else {
        return text(StatusCode::OK, "application/json", "[]");
    };
    match crate::guard::list_bans(store.as_ref()).await {
        Ok(bans) => json(&bans),
        Err(e) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain; charset=utf-8",
            format!("{e}\n"),
        ),
    }
}
