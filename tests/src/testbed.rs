//! The usual scene of an e2e test: the proxy in front of N sipp backends, and callers that
//! place calls through it and report what each backend received.
//!
//! ```no_run
//! # use kubesbc_e2e::{TempDir, Testbed, UacOptions};
//! let dir = TempDir::new("example");
//! let bed = Testbed::builder(&dir)
//!     .backend("uas1", "uas.xml")
//!     .backend("uas2", "uas.xml")
//!     .start();
//! let run = bed.run_calls(&dir, "uac", "uac.xml", &UacOptions::default());
//! run.assert_all_succeeded(20);
//! let per_backend = bed.invites();
//! ```

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::{
    CallStats, DispatcherDest, LOOPBACK, MessageLog, Proxy, ProxyOptions, Sipp, SippTransport,
    TempDir, UacOptions, free_port, scenario,
};

/// How long the builder waits for each live destination to show up in the listing.
const UP_TIMEOUT: Duration = Duration::from_secs(10);

/// Builds a [`Testbed`]: which backends to start, which further destinations to list, and how
/// to configure the proxy.
#[derive(Debug)]
#[must_use = "nothing starts until `start`"]
pub struct TestbedBuilder<'a> {
    dir: &'a TempDir,
    transport: SippTransport,
    /// Destinations in dispatcher-list order.
    dests: Vec<Entry>,
    opts: ProxyOptions,
    config: Option<String>,
}

/// One destination of the list being built.
#[derive(Debug)]
enum Entry {
    /// A sipp backend to start: its name and scenario file.
    Backend(String, String),
    /// A port where nothing listens.
    Dead(u16),
    /// A destination given as is, expected up.
    Given(DispatcherDest),
}

/// The proxy in front of its backends. Fields drop in order: the proxy stops first.
#[derive(Debug)]
pub struct Testbed {
    /// The proxy under test.
    pub proxy: Proxy,
    /// The sipp backends, in the order they were added.
    pub backends: Vec<Sipp>,
    /// Every destination of the dispatcher list, in the order added (backends, dead ones and
    /// those given as is).
    pub dests: Vec<DispatcherDest>,
    /// The transport of the backends and of callers started with [`Testbed::start_calls`].
    pub transport: SippTransport,
}

impl Testbed {
    /// Starts describing a testbed whose files live in `dir`.
    pub fn builder(dir: &TempDir) -> TestbedBuilder<'_> {
        TestbedBuilder {
            dir,
            transport: SippTransport::Udp,
            dests: Vec::new(),
            opts: ProxyOptions::default(),
            config: None,
        }
    }

    /// The `i`-th sipp backend.
    pub fn backend(&self, i: usize) -> &Sipp {
        self.backends
            .get(i)
            .unwrap_or_else(|| panic!("no backend {i}"))
    }

    /// Distinct Call-IDs of the INVITEs each backend received, in backend order.
    pub fn invites(&self) -> Vec<BTreeSet<String>> {
        self.backends.iter().map(received_invites).collect()
    }

    /// Starts a sipp caller (`scenario_name`, from `tests/scenarios/`) placing calls through
    /// the proxy over the testbed's transport; it runs until its calls are done.
    pub fn start_calls(
        &self,
        dir: &TempDir,
        name: &str,
        scenario_name: &str,
        opts: &UacOptions,
    ) -> Sipp {
        start_calls(
            dir,
            name,
            scenario_name,
            self.proxy.sip_addr(),
            self.transport,
            opts,
        )
    }

    /// Places calls as [`Testbed::start_calls`] does and waits until the caller is done.
    pub fn run_calls(
        &self,
        dir: &TempDir,
        name: &str,
        scenario_name: &str,
        opts: &UacOptions,
    ) -> CallRun {
        CallRun::finish(self.start_calls(dir, name, scenario_name, opts), opts)
    }
}

impl<'a> TestbedBuilder<'a> {
    /// Adds a sipp backend `name` running `scenario_name` on a fresh port, listed as a
    /// destination; the proxy is ready only once the listing shows it up.
    pub fn backend(mut self, name: &str, scenario_name: &str) -> Self {
        self.dests
            .push(Entry::Backend(name.to_owned(), scenario_name.to_owned()));
        self
    }

    /// Adds a destination on a fresh port where nothing listens (not waited for).
    pub fn dead_destination(mut self) -> Self {
        self.dests.push(Entry::Dead(free_port()));
        self
    }

    /// Adds a destination given as is (a backend another testbed owns, or the proxy itself);
    /// the proxy is ready only once the listing shows it up.
    pub fn destination(mut self, dest: &DispatcherDest) -> Self {
        self.dests.push(Entry::Given(dest.clone()));
        self
    }

    /// The transport of the backends and callers (UDP unless set).
    pub fn transport(mut self, transport: SippTransport) -> Self {
        self.transport = transport;
        self
    }

    /// The proxy's SIP port (a fresh one unless set).
    pub fn sip_port(mut self, port: u16) -> Self {
        self.opts.sip_port = Some(port);
        self
    }

    /// Milliseconds between OPTIONS probes.
    pub fn probe_interval(mut self, every: Duration) -> Self {
        self.opts.probe_interval_ms = u64::try_from(every.as_millis()).unwrap_or(u64::MAX);
        self
    }

    /// Further arguments for the sbc (more `--listen`, TLS files).
    pub fn sbc_args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.opts
            .extra_sbc_args
            .extend(args.into_iter().map(Into::into));
        self
    }

    /// Runs the sbc with `--config` of this YAML (written to `sbc.yaml` in the directory).
    pub fn config(mut self, yaml: &str) -> Self {
        self.config = Some(yaml.to_owned());
        self
    }

    /// Starts the backends, then the proxy, and waits until the listing shows every live
    /// destination up.
    pub fn start(self) -> Testbed {
        let tcp = self.transport == SippTransport::Tcp;
        let mut backends = Vec::new();
        let mut dests = Vec::new();
        let mut live = Vec::new();
        for entry in self.dests {
            let up = !matches!(entry, Entry::Dead(_));
            let dest = match entry {
                Entry::Backend(name, scenario_name) => {
                    let backend = start_backend(self.dir, &name, &scenario_name, self.transport);
                    let port = backend.port();
                    backends.push(backend);
                    DispatcherDest::local(port, tcp)
                }
                Entry::Dead(port) => DispatcherDest::local(port, tcp),
                Entry::Given(dest) => dest,
            };
            if up {
                live.push(dest.uri.clone());
            }
            dests.push(dest);
        }
        let mut opts = self.opts;
        opts.destinations = dests.clone();
        if let Some(yaml) = &self.config {
            let file = self.dir.write("sbc.yaml", yaml);
            opts.extra_sbc_args
                .extend(["--config".to_owned(), file.display().to_string()]);
        }
        let proxy = Proxy::start(self.dir, &opts);
        for uri in &live {
            proxy.wait_destination(uri, true, UP_TIMEOUT);
        }
        Testbed {
            proxy,
            backends,
            dests,
            transport: self.transport,
        }
    }
}

/// Starts a sipp backend (UAS) `name` running `scenario_name` (from `tests/scenarios/`) on a
/// fresh loopback port.
pub fn start_backend(
    dir: &TempDir,
    name: &str,
    scenario_name: &str,
    transport: SippTransport,
) -> Sipp {
    Sipp::uas(dir, name, &scenario(scenario_name), free_port(), transport)
}

/// Starts a sipp caller (`scenario_name`, from `tests/scenarios/`) placing calls to `target`
/// from a fresh loopback port.
pub fn start_calls(
    dir: &TempDir,
    name: &str,
    scenario_name: &str,
    target: SocketAddr,
    transport: SippTransport,
    opts: &UacOptions,
) -> Sipp {
    start_calls_from(dir, name, scenario_name, LOOPBACK, target, transport, opts)
}

/// Like [`start_calls`], from another loopback address (so that the proxy sees another source).
pub fn start_calls_from(
    dir: &TempDir,
    name: &str,
    scenario_name: &str,
    from: Ipv4Addr,
    target: SocketAddr,
    transport: SippTransport,
    opts: &UacOptions,
) -> Sipp {
    Sipp::uac_from(
        dir,
        name,
        &scenario(scenario_name),
        from,
        free_port(),
        target,
        transport,
        opts,
    )
}

/// Distinct Call-IDs of the INVITEs `backend` received so far.
pub fn received_invites(backend: &Sipp) -> BTreeSet<String> {
    backend.messages().calls_received("INVITE")
}

/// A finished caller: its exit code, counters and message log.
#[derive(Debug)]
pub struct CallRun {
    /// sipp's exit code (0: every call succeeded).
    pub exit: i32,
    /// The caller's counters.
    pub stats: CallStats,
    /// What the caller sent and received.
    pub log: MessageLog,
}

impl CallRun {
    /// Waits for `caller` (started with `opts`) to end, bounded by its own timeout plus a
    /// margin, and reads its results.
    pub fn finish(mut caller: Sipp, opts: &UacOptions) -> CallRun {
        let exit = caller.wait(Duration::from_secs(u64::from(opts.timeout_s) + 20));
        CallRun {
            exit,
            stats: caller.stats(),
            log: caller.messages(),
        }
    }

    /// Asserts that sipp exited 0 and counted `calls` successful calls and no failed one.
    pub fn assert_all_succeeded(&self, calls: u32) {
        let stats = self.stats;
        assert_eq!(
            self.exit, 0,
            "sipp caller exit code (0 = all calls ok); {stats:?}"
        );
        assert_eq!(stats.successful, u64::from(calls), "{stats:?}");
        assert_eq!(stats.failed, 0, "{stats:?}");
    }
}
