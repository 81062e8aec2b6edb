//! `sbc ctl`: asks a running sbc's admin endpoint and prints the answer, the way `kamcmd`
//! does for Kamailio. One request per connection over hyper's HTTP/1 client, bounded by a
//! timeout and a response size cap.

use std::io::{self, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::Request;
use hyper::header::{ACCEPT, CONNECTION, CONTENT_LENGTH, HOST, USER_AGENT};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use thiserror::Error;

mod stats;

use super::{BanEntry, DestinationSnapshot, DispatcherSnapshot};

/// The largest admin response accepted (a listing of thousands of destinations fits).
const MAX_RESPONSE: u64 = 16 * 1024 * 1024;

/// `sbc ctl` arguments: embed with `Ctl(CtlArgs)` in the binary's subcommands.
#[derive(Debug, Clone, clap::Args)]
pub struct CtlArgs {
    /// Address of the sbc's admin endpoint (`host:port`).
    #[arg(
        long,
        global = true,
        default_value = "127.0.0.1:9090",
        env = "SBC_ADMIN"
    )]
    pub admin: String,
    /// Seconds to wait for the admin endpoint.
    #[arg(long, global = true, default_value_t = 5)]
    pub timeout: u64,
    /// What to ask.
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// The `sbc ctl` commands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum CtlCommand {
    /// Dispatcher sets and destinations.
    Dispatcher {
        /// The dispatcher command.
        #[command(subcommand)]
        command: DispatcherCommand,
    },
    /// Readiness of the sbc (`/readyz`); exits with an error when not ready.
    Health,
    /// Counters and gauges grouped by subsystem, as `kamctl stats` prints them (an optional
    /// group, e.g. `calls`, narrows the listing).
    Stats {
        /// Only this group (`requests`, `calls`, `dialogs`, `registrations`, `store`, ...).
        group: Option<String>,
    },
    /// Calls up now on this sbc (like `kamctl dialog show`); needs the observability section.
    Dialogs {
        /// Print the raw JSON of `/dialogs`.
        #[arg(long)]
        json: bool,
    },
    /// Registrations that passed through this sbc (like `kamctl online` / `ul show`); needs
    /// the observability section.
    Registrations {
        /// Print the raw JSON of `/registrations`.
        #[arg(long)]
        json: bool,
    },
    /// Source bans for flooding (what `kamcmd pike.list` showed), shared by every replica.
    Bans {
        /// The bans command.
        #[command(subcommand)]
        command: BansCommand,
    },
}

/// `sbc ctl bans ...`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum BansCommand {
    /// Every banned address, why, and the seconds left.
    List {
        /// Print the raw JSON of `/bans`.
        #[arg(long)]
        json: bool,
    },
    /// Lifts the ban of an address.
    Remove {
        /// The banned address.
        ip: std::net::IpAddr,
    },
}

/// `sbc ctl dispatcher ...`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum DispatcherCommand {
    /// Every set and each destination's flags and state, as `kamcmd dispatcher.list`.
    List {
        /// Print the raw JSON of `/dispatcher`.
        #[arg(long)]
        json: bool,
    },
}

/// What `sbc ctl` can fail with.
#[derive(Debug, Error)]
pub enum CtlError {
    /// The admin address does not resolve.
    #[error("cannot resolve admin address {addr}: {reason}")]
    Resolve {
        /// The address given.
        addr: String,
        /// Why it does not resolve.
        reason: String,
    },
    /// No connection to the admin endpoint.
    #[error(
        "cannot reach the sbc admin endpoint at {addr}: {source} (is sbc running? see --admin)"
    )]
    Connect {
        /// The address given.
        addr: String,
        /// The last connection error.
        source: io::Error,
    },
    /// Reading or writing failed (including timeouts).
    #[error("admin endpoint {addr}: {source}")]
    Io {
        /// The address given.
        addr: String,
        /// What failed.
        source: io::Error,
    },
    /// The endpoint did not answer HTTP that this client understands.
    #[error("admin endpoint {addr} sent a malformed response: {reason}")]
    BadResponse {
        /// The address given.
        addr: String,
        /// What was wrong.
        reason: &'static str,
    },
    /// The endpoint answered with an unexpected status.
    #[error("admin endpoint answered {status}: {body}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// The first line of the body.
        body: String,
    },
    /// The address was not banned.
    #[error("{0} is not banned")]
    NotBanned(std::net::IpAddr),
    /// The listing is not the JSON this version understands.
    #[error("unexpected listing: {0}")]
    Json(#[from] serde_json::Error),
    /// The sbc is not ready (its `/readyz` reason).
    #[error("sbc is not ready: {0}")]
    NotReady(String),
    /// Writing the output failed.
    #[error("cannot write output: {0}")]
    Output(io::Error),
}

/// Runs a `sbc ctl` command, printing to stdout.
pub fn run(args: CtlArgs) -> Result<(), CtlError> {
    let stdout = io::stdout();
    let mut out = stdout.lock();
    run_to(&args, &mut out)
}

/// Runs a `sbc ctl` command, printing to `out`.
pub fn run_to(args: &CtlArgs, out: &mut dyn Write) -> Result<(), CtlError> {
    let timeout = Duration::from_secs(args.timeout.max(1));
    match &args.command {
        CtlCommand::Dispatcher {
            command: DispatcherCommand::List { json },
        } => {
            let (status, body) = http_get(&args.admin, "/dispatcher", timeout)?;
            if status != 200 {
                return Err(status_error(status, &body));
            }
            if *json {
                out.write_all(&body).map_err(CtlError::Output)?;
                if !body.ends_with(b"\n") {
                    out.write_all(b"\n").map_err(CtlError::Output)?;
                }
            } else {
                let snap: DispatcherSnapshot = serde_json::from_slice(&body)?;
                write_dispatcher_list(out, &snap).map_err(CtlError::Output)?;
            }
            Ok(())
        }
        CtlCommand::Bans {
            command: BansCommand::List { json },
        } => {
            let (status, body) = http_get(&args.admin, "/bans", timeout)?;
            if status != 200 {
                return Err(status_error(status, &body));
            }
            if *json {
                out.write_all(&body).map_err(CtlError::Output)?;
                writeln!(out).map_err(CtlError::Output)?;
            } else {
                let bans: Vec<BanEntry> = serde_json::from_slice(&body)?;
                write_bans(out, &bans).map_err(CtlError::Output)?;
            }
            Ok(())
        }
        CtlCommand::Bans {
            command: BansCommand::Remove { ip },
        } => {
            let path = format!("/bans/{ip}");
            let (status, body) = http_request(&args.admin, "DELETE", &path, timeout)?;
            match status {
                200 => {
                    writeln!(out, "{}", first_line(&body)).map_err(CtlError::Output)?;
                    Ok(())
                }
                404 => Err(CtlError::NotBanned(*ip)),
                _ => Err(status_error(status, &body)),
            }
        }
        CtlCommand::Stats { group } => stats::stats(args, group.as_deref(), timeout, out),
        CtlCommand::Dialogs { json } => stats::dialogs(args, *json, timeout, out),
        CtlCommand::Registrations { json } => stats::registrations(args, *json, timeout, out),
        CtlCommand::Health => {
            let (status, body) = http_get(&args.admin, "/readyz", timeout)?;
            let line = first_line(&body);
            writeln!(out, "{line}").map_err(CtlError::Output)?;
            match status {
                200 => Ok(()),
                503 => Err(CtlError::NotReady(
                    line.strip_prefix("not ready: ")
                        .unwrap_or(&line)
                        .to_string(),
                )),
                _ => Err(status_error(status, &body)),
            }
        }
    }
}

fn status_error(status: u16, body: &[u8]) -> CtlError {
    CtlError::Status {
        status,
        body: first_line(body),
    }
}

/// The first line of a body, at most 200 characters, control characters escaped.
fn first_line(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let line = text.lines().next().unwrap_or("");
    clean(&line.chars().take(200).collect::<String>())
}

/// Escapes control characters, so that a listing cannot drive the terminal.
fn clean(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_string();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Prints a dispatcher listing in the shape of `kamcmd dispatcher.list` (without its braces).
pub fn write_dispatcher_list(out: &mut dyn Write, snap: &DispatcherSnapshot) -> io::Result<()> {
    writeln!(out, "NRSETS: {}", snap.sets.len())?;
    for set in &snap.sets {
        writeln!(out, "SET:")?;
        writeln!(out, "    ID: {}", set.id)?;
        writeln!(out, "    ALGORITHM: {}", clean(&set.algorithm))?;
        if set.destinations.is_empty() {
            writeln!(out, "    TARGETS: none")?;
            continue;
        }
        writeln!(out, "    TARGETS:")?;
        for d in &set.destinations {
            write_destination(out, d)?;
        }
    }
    Ok(())
}

fn write_destination(out: &mut dyn Write, d: &DestinationSnapshot) -> io::Result<()> {
    const I: &str = "            ";
    writeln!(out, "        DEST:")?;
    writeln!(out, "{I}URI: {}", clean(&d.uri))?;
    writeln!(out, "{I}FLAGS: {}", clean(&d.flags))?;
    writeln!(out, "{I}PRIORITY: {}", d.priority)?;
    if !d.attrs.is_empty() {
        writeln!(out, "{I}ATTRS: {}", clean(&d.attrs))?;
    }
    writeln!(out, "{I}STATE: {}", d.state.as_str())?;
    writeln!(out, "{I}ACTIVE_CALLS: {}", d.active_calls)?;
    if let Some(desc) = &d.description {
        writeln!(out, "{I}DESCRIPTION: {}", clean(desc))?;
    }
    if !d.target.is_empty() {
        writeln!(out, "{I}TARGET: {}", clean(&d.target))?;
    }
    if let Some(c) = &d.counters {
        writeln!(
            out,
            "{I}COUNTERS: REQUESTS {} FAILURES {} PROBES_FAILED {} PROBES_ANSWERED {}",
            c.requests, c.failures, c.probe_failures, c.probe_successes
        )?;
    }
    Ok(())
}

/// Prints bans as a table, one per line: address, seconds left, reason.
pub fn write_bans(out: &mut dyn Write, bans: &[BanEntry]) -> io::Result<()> {
    writeln!(out, "BANS: {}", bans.len())?;
    for b in bans {
        writeln!(
            out,
            "{:<40} EXPIRES {:>6}s  REASON {}",
            clean(&b.ip),
            b.remaining_secs,
            clean(&b.reason)
        )?;
    }
    Ok(())
}

/// `GET path` from `addr`; returns the status and the body.
fn http_get(addr: &str, path: &str, timeout: Duration) -> Result<(u16, Vec<u8>), CtlError> {
    http_request(addr, "GET", path, timeout)
}

/// `method path` to `addr` over hyper's HTTP/1 client; returns the status and the body. The
/// whole exchange (connect, request, body) is bounded by `timeout`, the body by
/// [`MAX_RESPONSE`].
fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    timeout: Duration,
) -> Result<(u16, Vec<u8>), CtlError> {
    let resolved: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| CtlError::Resolve {
            addr: addr.to_string(),
            reason: e.to_string(),
        })?
        .collect();
    // `sbc ctl` runs outside any runtime: a small one for this one request.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| CtlError::Io {
            addr: addr.to_string(),
            source,
        })?;
    rt.block_on(exchange(addr, resolved, method, path, timeout))
}

async fn exchange(
    addr: &str,
    resolved: Vec<SocketAddr>,
    method: &str,
    path: &str,
    timeout: Duration,
) -> Result<(u16, Vec<u8>), CtlError> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
    let mut stream = None;
    for a in resolved {
        match tokio::time::timeout(timeout, TcpStream::connect(a)).await {
            Ok(Ok(s)) => {
                stream = Some(s);
                break;
            }
            Ok(Err(e)) => last = e,
            Err(_) => last = io::Error::new(io::ErrorKind::TimedOut, "connection timed out"),
        }
    }
    let stream = stream.ok_or_else(|| CtlError::Connect {
        addr: addr.to_string(),
        source: last,
    })?;
    let io_err = |source| CtlError::Io {
        addr: addr.to_string(),
        source,
    };
    let bad = |reason| CtlError::BadResponse {
        addr: addr.to_string(),
        reason,
    };
    let hyper_err = |e: hyper::Error| {
        if e.is_parse() || e.is_incomplete_message() {
            bad("not an HTTP/1.x response")
        } else {
            io_err(io::Error::other(e.to_string()))
        }
    };
    let work = async {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(hyper_err)?;
        let conn = tokio::spawn(conn);
        let method = hyper::Method::from_bytes(method.as_bytes()).map_err(|_| bad("bad method"))?;
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, addr)
            .header(USER_AGENT, "sbc-ctl")
            .header(ACCEPT, "*/*")
            .header(CONTENT_LENGTH, "0")
            .header(CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .map_err(|_| bad("bad request target"))?;
        let response = sender.send_request(request).await.map_err(hyper_err)?;
        let status = response.status().as_u16();
        let limit = usize::try_from(MAX_RESPONSE).unwrap_or(usize::MAX);
        let body = Limited::new(response.into_body(), limit)
            .collect()
            .await
            .map_err(|e| match e.downcast::<hyper::Error>() {
                Ok(e) => hyper_err(*e),
                Err(_) => bad("response too large"),
            })?
            .to_bytes();
        conn.abort();
        Ok((status, body.to_vec()))
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| io_err(io::Error::new(io::ErrorKind::TimedOut, "timed out")))?
}

#[cfg(test)]
mod tests;
