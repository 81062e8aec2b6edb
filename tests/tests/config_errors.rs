//! A bad `--config` file or `dispatcher.list` stops the sbc at startup with a message naming the
//! field path or the file and line (sbc only: Kamailio has other files).

use std::time::Duration;

use kubesbc_e2e::proxy::{RunOutput, run_sbc};
use kubesbc_e2e::{TempDir, free_port, sbc_only};

fn valid_config(sip: u16, admin: u16) -> String {
    format!(
        r#"listeners:
  - transport: udp
    address: "127.0.0.1:{sip}"
dispatcher:
  sets:
    - id: 1
      algorithm: round-robin
      destinations:
        - uri: "sip:127.0.0.1:{dest}"
      probing:
        intervalMs: 1000
admin:
  address: "127.0.0.1:{admin}"
"#,
        dest = free_port()
    )
}

fn refused(out: &RunOutput, what: &str) {
    assert!(
        out.code.is_some_and(|c| c != 0),
        "{what}: the sbc must exit with a non-zero code, got {:?}; stderr:\n{}",
        out.code,
        out.stderr
    );
}

fn assert_names(out: &RunOutput, what: &str, needles: &[&str]) {
    refused(out, what);
    for n in needles {
        assert!(
            out.stderr.contains(n),
            "{what}: stderr does not contain {n:?}:\n{}",
            out.stderr
        );
    }
}

#[test]
fn config_errors_name_the_field_path() {
    if !sbc_only() {
        return;
    }
    let dir = TempDir::new("config-errors");
    let good = valid_config(free_port(), free_port());
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "several store hosts without a mode",
            format!("{good}store: {{url: \"redis://:pw@127.0.0.1:1,127.0.0.1:2/0\"}}\n"),
            vec!["store.url: 2 hosts: several hosts need mode sentinel or cluster"],
        ),
        (
            "sentinel mode without its master name",
            format!("{good}store: {{url: \"redis://127.0.0.1:1\", mode: sentinel}}\n"),
            vec!["store.sentinel: mode sentinel needs sentinel.masterName"],
        ),
        (
            "a cluster database other than 0",
            format!("{good}store: {{url: \"redis://127.0.0.1:1/2\", mode: cluster}}\n"),
            vec!["store.url: database 2: a Redis Cluster has database 0 only"],
        ),
        (
            "unknown algorithm name",
            good.replace("algorithm: round-robin", "algorithm: roundrobin"),
            vec![r#"dispatcher.sets[0].algorithm: unknown value "roundrobin""#],
        ),
        (
            "unknown algorithm number",
            good.replace("algorithm: round-robin", "algorithm: 7"),
            vec!["dispatcher.sets[0].algorithm", "7"],
        ),
        (
            "misspelt top-level field",
            good.replace("listeners:", "listners:"),
            vec!["listners"],
        ),
        (
            "listener address without a port",
            good.replace(
                &format!(
                    "address: \"127.0.0.1:{}\"",
                    port_of(&good, "transport: udp")
                ),
                "address: \"127.0.0.1\"",
            ),
            vec!["listeners[0].address"],
        ),
        (
            "probing interval not a number",
            good.replace("intervalMs: 1000", "intervalMs: fast"),
            vec!["dispatcher.sets[0].probing.intervalMs"],
        ),
        (
            "unknown transport",
            good.replace("transport: udp", "transport: sctp"),
            vec!["listeners[0].transport"],
        ),
        (
            "routing rule naming a set the dispatcher does not have",
            good.replace(
                "admin:",
                "routing:\n  rules:\n    - {methods: [INVITE], set: 1}\n    - {uriUserPrefixes: [\"00\"], set: 7}\nadmin:",
            ),
            vec!["routing.rules[1].set: set 7 is not in the dispatcher (its sets: 1)"],
        ),
        (
            "routing target the sbc cannot reach",
            good.replace(
                "admin:",
                "routing:\n  rules:\n    - {methods: [INVITE], target: \"sip:10.0.0.1;transport=sctp\"}\nadmin:",
            ),
            vec![r#"routing.rules[0].target: "sip:10.0.0.1;transport=sctp" is not an IP-literal SIP URI"#],
        ),
        (
            "relay.inside without its address",
            format!("{good}relay: {{inside: {{networks: [\"10.0.0.0/8\"]}}}}\n"),
            vec!["relay.inside.address: required"],
        ),
        (
            "relay.inside address that is not a host:port",
            format!("{good}relay: {{inside: {{address: \"sbc svc:5060\", networks: [\"10.0.0.0/8\"]}}}}\n"),
            vec![r#"relay.inside.address: "sbc svc:5060" is not a host or host:port"#],
        ),
        (
            "relay.inside without networks",
            format!("{good}relay: {{inside: {{address: \"sbc.voice.svc:5060\", networks: []}}}}\n"),
            vec!["relay.inside.networks: at least one network is required"],
        ),
        (
            "relay.inside network that is not a CIDR",
            format!("{good}relay: {{inside: {{address: \"sbc.voice.svc\", networks: [\"10.0.0.0/33\"]}}}}\n"),
            vec![r#"relay.inside.networks[0]: "10.0.0.0/33" is not a CIDR"#],
        ),
        (
            "relay.topology without relay.inside",
            format!("{good}relay: {{topology: {{hide: true}}}}\n"),
            vec!["relay.topology.hide: needs relay.inside: what is hidden is the inside"],
        ),
        (
            "relay.topology Call-ID prefix with an @",
            format!("{good}relay: {{inside: {{address: \"sbc.voice.svc\", networks: [\"10.0.0.0/8\"]}}, topology: {{callIdPrefix: \"a@b\"}}}}\n"),
            vec!["relay.topology.callIdPrefix", "at most 32"],
        ),
        (
            "relay.topology keyFile that does not exist",
            format!("{good}relay: {{inside: {{address: \"sbc.voice.svc\", networks: [\"10.0.0.0/8\"]}}, topology: {{keyFile: \"/nonexistent/kth.keys\"}}}}\n"),
            vec!["relay.topology.keyFile: /nonexistent/kth.keys"],
        ),
        (
            "unknown field of relay.inside",
            format!("{good}relay: {{inside: {{address: \"sbc.voice.svc\", networks: [\"10.0.0.0/8\"], port: 5060}}}}\n"),
            vec!["relay.inside", "port"],
        ),
    ];
    for (what, yaml, needles) in cases {
        assert_ne!(yaml, good, "{what}: the test did not change the config");
        let path = dir.write("bad.yaml", &yaml);
        let out = run_sbc(
            &dir,
            &["--config", &path.display().to_string()],
            Duration::from_secs(10),
        );
        assert_names(&out, what, &needles);
    }
    let missing = dir.path().join("no-such-file.yaml");
    let out = run_sbc(
        &dir,
        &["--config", &missing.display().to_string()],
        Duration::from_secs(10),
    );
    assert_names(&out, "missing config file", &["no-such-file.yaml"]);
}

/// The port of the listener address on the line after `marker`.
fn port_of(yaml: &str, marker: &str) -> String {
    let mut lines = yaml.lines().skip_while(|l| !l.contains(marker));
    lines.next();
    lines
        .next()
        .and_then(|l| l.rsplit(':').next())
        .map(|p| p.trim_matches(|c: char| !c.is_ascii_digit()).to_owned())
        .unwrap_or_default()
}

#[test]
fn dispatcher_list_errors_name_the_file_and_line() {
    if !sbc_only() {
        return;
    }
    let dir = TempDir::new("dslist-errors");
    let cases = [
        (
            "set id not a number",
            "# comment\n1 sip:127.0.0.1:5071 0 0\none sip:127.0.0.1:5072 0 0\n",
            3,
            "",
        ),
        (
            // Without a scheme Kamailio puts `sip:` in front; another scheme is refused.
            "destination not a SIP URI",
            "1 sip:127.0.0.1:5071 0 0\n1 http://127.0.0.1:5072 0 0\n",
            2,
            "",
        ),
        (
            "flags not a number",
            "\n\n1 sip:127.0.0.1:5071 zero 0\n",
            3,
            "",
        ),
        (
            "weight attribute not a number",
            "1 sip:127.0.0.1:5071 0 0 weight=heavy\n",
            1,
            "weight",
        ),
    ];
    for (what, text, line, word) in cases {
        let list = dir.write("dispatcher.list", text);
        let port = free_port();
        let out = run_sbc(
            &dir,
            &[
                "--listen",
                &format!("udp:127.0.0.1:{port}"),
                "--dispatcher-list",
                &list.display().to_string(),
                "--admin",
                &format!("127.0.0.1:{}", free_port()),
            ],
            Duration::from_secs(10),
        );
        refused(&out, what);
        let names_line = out.stderr.contains(&format!("dispatcher.list:{line}"))
            || out.stderr.contains(&format!("line {line}"));
        assert!(
            out.stderr.contains("dispatcher.list") && names_line && out.stderr.contains(word),
            "{what}: stderr must name the file, line {line} and {word:?}:\n{}",
            out.stderr
        );
    }
}
