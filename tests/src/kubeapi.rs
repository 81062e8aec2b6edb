//! A fake Kubernetes API server on loopback, speaking just enough of the API for kube-rs's
//! watchers in namespace `voip`: EndpointSlices by Service (`GET .../endpointslices?
//! labelSelector=...`, then `...&watch=true` streamed as JSON lines over chunked HTTP/1.1),
//! and ConfigMaps by name (get, and list/watch with a `metadata.name` field selector). The
//! test changes objects with [`FakeKubeApi::apply`], [`FakeKubeApi::delete`] and
//! [`FakeKubeApi::set_configmap`]; every open watch of the object gets the event.
//!
//! Threads only (no async runtime); stopped on drop.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crate::TempDir;

/// An endpoint of a slice: address, `ready`, `terminating`.
pub type Endpoint<'a> = (&'a str, bool, bool);

/// An EndpointSlice of Service `service` in namespace `voip`, one port named `port_name`.
#[derive(Debug, Clone)]
pub struct Slice {
    /// Slice name.
    pub name: String,
    /// Service name (the `kubernetes.io/service-name` label).
    pub service: String,
    /// Port name.
    pub port_name: String,
    /// Port number.
    pub port: u16,
    /// Endpoints: address, ready, terminating.
    pub endpoints: Vec<(String, bool, bool)>,
}

impl Slice {
    /// A slice of `service` with `endpoints` on port `port` named `sip`.
    pub fn new(service: &str, name: &str, port: u16, endpoints: &[Endpoint<'_>]) -> Slice {
        Slice {
            name: name.into(),
            service: service.into(),
            port_name: "sip".into(),
            port,
            endpoints: endpoints
                .iter()
                .map(|(a, r, t)| ((*a).to_owned(), *r, *t))
                .collect(),
        }
    }

    fn json(&self, rv: u64) -> String {
        let eps: Vec<String> = self
            .endpoints
            .iter()
            .map(|(a, r, t)| {
                format!(
                    r#"{{"addresses":["{a}"],"conditions":{{"ready":{r},"serving":{r},"terminating":{t}}}}}"#
                )
            })
            .collect();
        format!(
            r#"{{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","metadata":{{"name":"{}","namespace":"voip","resourceVersion":"{rv}","labels":{{"kubernetes.io/service-name":"{}"}}}},"addressType":"IPv4","ports":[{{"name":"{}","port":{},"protocol":"UDP"}}],"endpoints":[{}]}}"#,
            self.name,
            self.service,
            self.port_name,
            self.port,
            eps.join(",")
        )
    }
}

#[derive(Default)]
struct State {
    rv: u64,
    slices: BTreeMap<String, Slice>,
    /// ConfigMaps: name to `sbc.yaml` text.
    configmaps: BTreeMap<String, String>,
    /// Open watches: what they select (`slices/SERVICE`, `configmap/NAME`) and where their
    /// events go.
    watches: Vec<(String, Sender<String>)>,
    lists: u64,
}

/// The fake API server; see the module doc.
pub struct FakeKubeApi {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

impl FakeKubeApi {
    /// Starts the server on an ephemeral loopback port.
    pub fn start() -> FakeKubeApi {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fake API");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                if sp.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let (st, sp) = (st.clone(), sp.clone());
                thread::spawn(move || serve(conn, &st, &sp));
            }
        });
        FakeKubeApi { addr, state, stop }
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Writes a kubeconfig pointing at this server (namespace `voip`) into `dir`.
    pub fn kubeconfig(&self, dir: &TempDir) -> PathBuf {
        dir.write(
            "kubeconfig",
            &format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: voip\ncurrent-context: fake\nusers:\n- name: fake\n  user: {{}}\n",
                self.addr
            ),
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds or replaces a slice; open watches get ADDED or MODIFIED.
    pub fn apply(&self, slice: Slice) {
        let mut st = self.lock();
        st.rv += 1;
        let kind = if st.slices.contains_key(&slice.name) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        let event = format!(r#"{{"type":"{kind}","object":{}}}"#, slice.json(st.rv));
        let key = format!("slices/{}", slice.service);
        st.slices.insert(slice.name.clone(), slice);
        broadcast(&mut st, &key, &event);
    }

    /// Deletes a slice; open watches get DELETED.
    pub fn delete(&self, name: &str) {
        let mut st = self.lock();
        st.rv += 1;
        if let Some(slice) = st.slices.remove(name) {
            let event = format!(r#"{{"type":"DELETED","object":{}}}"#, slice.json(st.rv));
            broadcast(&mut st, &format!("slices/{}", slice.service), &event);
        }
    }

    /// Creates or replaces ConfigMap `name` with key `sbc.yaml` = `text`; open watches of it
    /// get ADDED or MODIFIED.
    pub fn set_configmap(&self, name: &str, text: &str) {
        let mut st = self.lock();
        st.rv += 1;
        let kind = if st.configmaps.contains_key(name) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        st.configmaps.insert(name.to_owned(), text.to_owned());
        let event = format!(
            r#"{{"type":"{kind}","object":{}}}"#,
            configmap_json(name, text, st.rv)
        );
        broadcast(&mut st, &format!("configmap/{name}"), &event);
    }

    /// Open watches.
    pub fn watches(&self) -> usize {
        self.lock().watches.len()
    }

    /// Lists served so far.
    pub fn lists(&self) -> u64 {
        self.lock().lists
    }
}

impl Drop for FakeKubeApi {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.lock().watches.clear();
        // Wake the accept loop so it sees the stop flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

fn broadcast(st: &mut State, key: &str, event: &str) {
    st.watches
        .retain(|(k, tx)| k != key || tx.send(event.to_owned()).is_ok());
}

/// A JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn configmap_json(name: &str, text: &str, rv: u64) -> String {
    format!(
        r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"{name}","namespace":"voip","resourceVersion":"{rv}"}},"data":{{"sbc.yaml":{}}}}}"#,
        json_string(text)
    )
}

/// The name of a `fieldSelector=metadata.name%3DNAME` query.
fn selected_name(query: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let v = kv.strip_prefix("fieldSelector=")?;
        let v = v.replace("%3D", "=");
        v.strip_prefix("metadata.name=").map(str::to_owned)
    })
}

/// The service name of a `labelSelector=kubernetes.io%2Fservice-name%3DNAME` query.
fn selected_service(query: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let v = kv.strip_prefix("labelSelector=")?;
        let v = v.replace("%2F", "/").replace("%3D", "=");
        v.strip_prefix("kubernetes.io/service-name=")
            .map(str::to_owned)
    })
}

fn serve(conn: TcpStream, state: &Mutex<State>, stop: &AtomicBool) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        // Headers: read up to the blank line (GETs carry no body).
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h.trim().is_empty() {
                break;
            }
        }
        let target = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let service = selected_service(query);
        let is_slices = path == "/apis/discovery.k8s.io/v1/namespaces/voip/endpointslices";
        const CONFIGMAPS: &str = "/api/v1/namespaces/voip/configmaps";
        if path.starts_with(CONFIGMAPS) {
            let watched = selected_name(query).filter(|_| path == CONFIGMAPS);
            let one = path
                .strip_prefix(CONFIGMAPS)
                .and_then(|p| p.strip_prefix('/'));
            if let Some(name) = &watched
                && query.contains("watch=true")
            {
                let (tx, rx) = mpsc::channel();
                {
                    let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
                    st.watches.push((format!("configmap/{name}"), tx));
                }
                stream_watch(&mut out, &rx, stop);
                return;
            }
            let body = {
                let st = state.lock().unwrap_or_else(|e| e.into_inner());
                match (one, &watched) {
                    (Some(name), _) => st
                        .configmaps
                        .get(name)
                        .map(|t| configmap_json(name, t, st.rv)),
                    (None, Some(name)) => {
                        let items: Vec<String> = st
                            .configmaps
                            .get(name)
                            .map(|t| configmap_json(name, t, st.rv))
                            .into_iter()
                            .collect();
                        Some(format!(
                            r#"{{"apiVersion":"v1","kind":"ConfigMapList","metadata":{{"resourceVersion":"{}"}},"items":[{}]}}"#,
                            st.rv,
                            items.join(",")
                        ))
                    }
                    (None, None) => None,
                }
            };
            let sent = match body {
                Some(b) => respond(&mut out, 200, &b),
                None => respond(&mut out, 404, NOT_FOUND),
            };
            if sent.is_err() {
                return;
            }
            continue;
        }
        match (is_slices, service) {
            (true, Some(service)) if query.contains("watch=true") => {
                let (tx, rx) = mpsc::channel();
                {
                    let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
                    st.watches.push((format!("slices/{service}"), tx));
                }
                stream_watch(&mut out, &rx, stop);
                return;
            }
            (true, Some(service)) => {
                let body = {
                    let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
                    st.lists += 1;
                    let items: Vec<String> = st
                        .slices
                        .values()
                        .filter(|s| s.service == service)
                        .map(|s| s.json(st.rv))
                        .collect();
                    format!(
                        r#"{{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSliceList","metadata":{{"resourceVersion":"{}"}},"items":[{}]}}"#,
                        st.rv,
                        items.join(",")
                    )
                };
                if respond(&mut out, 200, &body).is_err() {
                    return;
                }
            }
            _ => {
                if respond(&mut out, 404, NOT_FOUND).is_err() {
                    return;
                }
            }
        }
    }
}

const NOT_FOUND: &str =
    r#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}"#;

fn respond(out: &mut TcpStream, code: u16, body: &str) -> std::io::Result<()> {
    let reason = if code == 200 { "OK" } else { "Not Found" };
    write!(
        out,
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Streams events as chunks until the watch is dropped or the server stops.
fn stream_watch(out: &mut TcpStream, rx: &Receiver<String>, stop: &AtomicBool) {
    if out
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        .is_err()
    {
        return;
    }
    while !stop.load(Ordering::SeqCst) {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(event) => {
                let line = format!("{event}\n");
                let chunk = format!("{:x}\r\n{line}\r\n", line.len());
                if out.write_all(chunk.as_bytes()).is_err() {
                    return;
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    let _ = out.write_all(b"0\r\n\r\n");
}
