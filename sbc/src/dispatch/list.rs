//! Kamailio's `dispatcher.list`, read as is.
//!
//! One destination per line: `setid destination [flags [priority [attrs [description]]]]`.
//! Blank lines and lines starting with `#` are skipped; a `#` starting a field ends the
//! line. `flags` is decimal or `0x` hex; `attrs` is `name=value;...`, optionally in double
//! quotes (`""` is empty); the description is the rest of the line, quotes removed.
//!
//! Attributes we use: `duid`, `weight`, `rweight`, `maxload`, `socket`, `ping_from`. Any
//! other attribute (`cc`, `latency`, `obproxy`, `sockname`, `ping_socket`, `oc*`, or a
//! custom one a Kamailio script reads) is ignored, as Kamailio's `ds_set_attrs` ignores
//! names it does not know. Unlike Kamailio, which logs a bad `weight`/`rweight` value and
//! carries on with 0, a value that is not a number in range stops the load.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use kubesbc_crds::config::{DestinationConfig, DispatcherConfig, DispatcherSetConfig};

use super::destination::parse_uri;

/// A file larger than this is refused rather than read (real lists are kilobytes).
const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// A line of a `dispatcher.list` that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ListError {
    /// The file name, when known.
    pub file: Option<String>,
    /// 1-based line number; 0 when the error is about the whole file.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for ListError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, self.line) {
            (Some(file), 0) => write!(f, "{file}: {}", self.reason),
            (Some(file), n) => write!(f, "{file}:{n}: {}", self.reason),
            (None, 0) => f.write_str(&self.reason),
            (None, n) => write!(f, "line {n}: {}", self.reason),
        }
    }
}

/// Reads and parses the file at `path`. Errors carry the path as given.
pub fn parse_file(path: impl AsRef<Path>) -> Result<Vec<DispatcherSetConfig>, ListError> {
    let path = path.as_ref();
    let name = path.display().to_string();
    let whole = |reason: String| ListError {
        file: Some(name.clone()),
        line: 0,
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| whole(format!("cannot read: {e}")))?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(whole(format!(
            "{} bytes is larger than the {MAX_FILE_BYTES} bytes accepted",
            meta.len()
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| whole(format!("cannot read: {e}")))?;
    parse_bytes(&bytes, Some(&name))
}

/// The dispatcher configuration for a parsed list: requests go to set 1, or to the lowest
/// set id when the file has no set 1; algorithm, probing and failover keep their defaults.
pub fn dispatcher_config(sets: Vec<DispatcherSetConfig>) -> DispatcherConfig {
    let default_set = if sets.iter().any(|s| s.id == 1) {
        1
    } else {
        sets.iter().map(|s| s.id).min().unwrap_or(1)
    };
    DispatcherConfig {
        default_set,
        sets,
        ..DispatcherConfig::default()
    }
}

/// Parses a list held in memory; `name` is used in errors (`name:LINE: reason`).
pub fn parse_str(text: &str, name: Option<&str>) -> Result<Vec<DispatcherSetConfig>, ListError> {
    parse_bytes(text.as_bytes(), name)
}

fn parse_bytes(bytes: &[u8], name: Option<&str>) -> Result<Vec<DispatcherSetConfig>, ListError> {
    let mut sets: BTreeMap<u32, Vec<DestinationConfig>> = BTreeMap::new();
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let err = |reason: String| ListError {
            file: name.map(str::to_owned),
            line: i + 1,
            reason,
        };
        let line = std::str::from_utf8(raw).map_err(|_| err("not valid UTF-8".into()))?;
        if let Some((set, dest)) = parse_line(line).map_err(err)? {
            sets.entry(set).or_default().push(dest);
        }
    }
    Ok(sets
        .into_iter()
        .map(|(id, destinations)| DispatcherSetConfig {
            id,
            destinations,
            algorithm: Default::default(),
            probing: Default::default(),
            failover: Default::default(),
            service: None,
        })
        .collect())
}

fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r')
}

/// Splits off the next whitespace-separated token. With `hash_ends`, a `#` inside the token
/// ends it (Kamailio stops the set id, URI, flags and priority at `#`).
fn token(s: &str, hash_ends: bool) -> (&str, &str) {
    let s = s.trim_start_matches(is_space);
    let end = s
        .find(|c| is_space(c) || (hash_ends && c == '#'))
        .unwrap_or(s.len());
    (&s[..end], &s[end..])
}

/// Parses one line; `None` for blank and comment lines.
fn parse_line(line: &str) -> Result<Option<(u32, DestinationConfig)>, String> {
    let rest = line.trim_start_matches(is_space);
    if rest.is_empty() || rest.starts_with('#') {
        return Ok(None);
    }

    let (set, rest) = token(rest, true);
    let set: u32 = set
        .parse()
        .map_err(|_| format!("set id {set:?} is not a number"))?;

    let (uri, rest) = token(rest, true);
    if uri.is_empty() {
        return Err(format!("set {set}: destination URI missing"));
    }
    let uri = fix_scheme(uri)?;
    parse_uri(&uri).map_err(|e| format!("destination {e}"))?;
    let mut dest = DestinationConfig {
        uri,
        ..Default::default()
    };

    let (flags, rest) = token(rest, true);
    if flags.is_empty() {
        return Ok(Some((set, dest)));
    }
    dest.flags = parse_flags(flags)?;

    let (priority, rest) = token(rest, true);
    if priority.is_empty() {
        return Ok(Some((set, dest)));
    }
    dest.priority = priority
        .parse()
        .map_err(|_| format!("priority {priority:?} is not a number"))?;

    let rest = rest.trim_start_matches(is_space);
    if rest.is_empty() || rest.starts_with('#') {
        return Ok(Some((set, dest)));
    }
    let (attrs, rest) = if let Some(q) = rest.strip_prefix('"') {
        let end = q
            .find('"')
            .ok_or_else(|| "attrs: missing closing quote".to_owned())?;
        (&q[..end], &q[end + 1..])
    } else {
        token(rest, false)
    };
    parse_attrs(attrs, &mut dest)?;

    let rest = rest.trim_matches(is_space);
    dest.description = if rest.is_empty() || rest.starts_with('#') {
        None
    } else if let Some(q) = rest.strip_prefix('"') {
        let end = q
            .find('"')
            .ok_or_else(|| "description: missing closing quote".to_owned())?;
        let after = q[end + 1..].trim_start_matches(is_space);
        if !(after.is_empty() || after.starts_with('#')) {
            return Err(format!("unexpected text after the description: {after:?}"));
        }
        Some(&q[..end]).filter(|d| !d.is_empty()).map(str::to_owned)
    } else {
        Some(rest.to_owned())
    };
    Ok(Some((set, dest)))
}

/// Kamailio's `pack_dest`: a destination that does not parse as a URI gets `sip:` put in
/// front (`127.0.0.1:5060` -> `sip:127.0.0.1:5060`). Other schemes are refused.
fn fix_scheme(uri: &str) -> Result<String, String> {
    let lower = uri.get(..5).unwrap_or(uri).to_ascii_lowercase();
    if lower.starts_with("sip:") || lower.starts_with("sips:") {
        return Ok(uri.to_owned());
    }
    for other in ["tel:", "tels:", "urn:"] {
        if lower.starts_with(other) {
            return Err(format!("destination {uri:?} is not a sip: or sips: URI"));
        }
    }
    if uri.contains("://") {
        return Err(format!("destination {uri:?} is not a sip: or sips: URI"));
    }
    Ok(format!("sip:{uri}"))
}

fn parse_flags(s: &str) -> Result<u32, String> {
    let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => s.parse::<u32>().ok(),
    };
    parsed.ok_or_else(|| format!("flags {s:?} is not a number (decimal or 0x hex)"))
}

/// Kamailio's `ds_set_attrs`: `;`-separated parameters, names case-insensitive, values may
/// be quoted; a trailing `;` is allowed.
fn parse_attrs(attrs: &str, dest: &mut DestinationConfig) -> Result<(), String> {
    for param in split_params(attrs) {
        let param = param.trim_matches(is_space);
        if param.is_empty() {
            continue;
        }
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim_matches(is_space), v.trim_matches(is_space)),
            None => (param, ""),
        };
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        let number = |max: u32| -> Result<u32, String> {
            value
                .parse::<u32>()
                .ok()
                .filter(|&n| n <= max)
                .ok_or_else(|| format!("attribute {name}={value:?} is not a number in 0..={max}"))
        };
        let text = || -> Result<Option<String>, String> {
            if value.is_empty() {
                Err(format!("attribute {name} has no value"))
            } else {
                Ok(Some(value.to_owned()))
            }
        };
        match name.to_ascii_lowercase().as_str() {
            "duid" => dest.duid = text()?,
            // Kamailio treats weight 0 as "no weight"; the config schema accepts 0..=100.
            "weight" => dest.weight = Some(number(100)?),
            // rweight 0 means none in Kamailio; the schema wants 1..=100 when present.
            "rweight" => dest.rweight = Some(number(100)?).filter(|&w| w > 0),
            "maxload" => dest.maxload = Some(number(u32::MAX)?),
            "socket" => {
                let s = text()?;
                if let Some(s) = &s {
                    check_socket(s)?;
                }
                dest.socket = s;
            }
            "ping_from" => {
                let s = text()?;
                if let Some(s) = &s {
                    parse_uri(s).map_err(|e| format!("attribute ping_from: {e}"))?;
                }
                dest.ping_from = s;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Splits `a=1;b="x;y"` at the `;` outside double quotes.
fn split_params(s: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let s = rest?;
        let mut quoted = false;
        for (i, c) in s.char_indices() {
            match c {
                '"' => quoted = !quoted,
                ';' if !quoted => {
                    rest = Some(&s[i + 1..]);
                    return Some(&s[..i]);
                }
                _ => {}
            }
        }
        rest = None;
        Some(s)
    })
}

/// `socket=proto:host:port` as Kamailio's `parse_phostport` reads it (port optional).
fn check_socket(s: &str) -> Result<(), String> {
    let bad = || format!("attribute socket={s:?} is not proto:host[:port]");
    let (proto, rest) = s.split_once(':').ok_or_else(bad)?;
    if kubesbc_crds::config::Transport::from_name(proto).is_none() || rest.is_empty() {
        return Err(bad());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubesbc_crds::config::Algorithm;

    #[test]
    fn reads_a_kamailio_list() {
        let text = "\
# dispatcher.list from a Kamailio box\n\
\n\
1 sip:127.0.0.1:5071\n\
1 sip:127.0.0.1:5072;transport=tcp 8 10 \"weight=50;duid=abc\" \"backend two\"\n\
  2\tsip:127.0.0.1:5081 0x8 0 duid=x;maxload=20;rweight=30;socket=udp:127.0.0.1:5060;ping_from=sip:ping@kubesbc; main backend # comment\n\
2 127.0.0.1:5082 0 0 \"\" # no attrs\n\
2 sip:127.0.0.1:5083 0 -5 weight=0;cc=1;latency=100;custom=yes\r\n\
1 sip:127.0.0.1:5073#trailing comment\n\
";
        let sets = parse_str(text, Some("dispatcher.list")).expect("valid");
        assert_eq!(sets.iter().map(|s| s.id).collect::<Vec<_>>(), vec![1, 2]);
        assert!(sets.iter().all(|s| s.algorithm == Algorithm::RoundRobin));
        let s1 = &sets[0].destinations;
        assert_eq!(
            s1.iter().map(|d| d.uri.as_str()).collect::<Vec<_>>(),
            vec![
                "sip:127.0.0.1:5071",
                "sip:127.0.0.1:5072;transport=tcp",
                "sip:127.0.0.1:5073"
            ]
        );
        assert_eq!(
            s1[0],
            DestinationConfig {
                uri: "sip:127.0.0.1:5071".into(),
                ..Default::default()
            }
        );
        assert_eq!((s1[1].flags, s1[1].priority), (8, 10));
        assert_eq!(s1[1].weight, Some(50));
        assert_eq!(s1[1].duid.as_deref(), Some("abc"));
        assert_eq!(s1[1].description.as_deref(), Some("backend two"));

        let s2 = &sets[1].destinations;
        assert_eq!(s2[0].flags, 8);
        assert_eq!(s2[0].duid.as_deref(), Some("x"));
        assert_eq!(s2[0].maxload, Some(20));
        assert_eq!(s2[0].rweight, Some(30));
        assert_eq!(s2[0].socket.as_deref(), Some("udp:127.0.0.1:5060"));
        assert_eq!(s2[0].ping_from.as_deref(), Some("sip:ping@kubesbc"));
        assert_eq!(s2[0].description.as_deref(), Some("main backend # comment"));
        assert_eq!(
            s2[1].uri, "sip:127.0.0.1:5082",
            "scheme added like Kamailio"
        );
        assert_eq!(s2[1].duid, None);
        assert_eq!(s2[1].description, None);
        assert_eq!(s2[2].priority, -5);
        assert_eq!(s2[2].weight, Some(0));
        assert_eq!(s2[2].description, None, "unknown attrs are ignored");
    }

    #[test]
    fn parsed_list_passes_config_validation() {
        let sets = parse_str("1 sip:127.0.0.1:5071 0 0 rweight=0;weight=100\n", None).unwrap();
        sets[0].validate("dispatcher.sets[0]").expect("valid set");
        assert_eq!(sets[0].destinations[0].rweight, None);
    }

    #[test]
    fn quoted_attribute_values_keep_their_semicolons() {
        let sets = parse_str(
            "1 sip:127.0.0.1 0 0 ping_from=\"sip:p@h;transport=tcp\";duid=d\n",
            None,
        );
        let d = &sets.unwrap()[0].destinations[0];
        assert_eq!(d.ping_from.as_deref(), Some("sip:p@h;transport=tcp"));
        assert_eq!(d.duid.as_deref(), Some("d"));
    }

    #[test]
    fn bad_lines_name_line_and_reason() {
        let cases: &[(&str, usize, &str)] = &[
            ("x sip:127.0.0.1", 1, "set id \"x\" is not a number"),
            ("# c\n1", 2, "set 1: destination URI missing"),
            ("1 #sip:h", 1, "set 1: destination URI missing"),
            (
                "\n\n1 http://h",
                3,
                "destination \"http://h\" is not a sip: or sips: URI",
            ),
            (
                "1 tel:+123",
                1,
                "destination \"tel:+123\" is not a sip: or sips: URI",
            ),
            (
                "1 sip:h:70000",
                1,
                "destination \"sip:h:70000\" has an invalid port \"70000\"",
            ),
            (
                "1 sip:h;transport=sctp",
                1,
                "destination \"sip:h;transport=sctp\": unsupported transport \"sctp\" (udp, tcp, tls, ws, wss)",
            ),
            (
                "1 sip:h 8x",
                1,
                "flags \"8x\" is not a number (decimal or 0x hex)",
            ),
            (
                "1 sip:h 0xZ",
                1,
                "flags \"0xZ\" is not a number (decimal or 0x hex)",
            ),
            ("1 sip:h 0 high", 1, "priority \"high\" is not a number"),
            (
                "1 sip:h 0 0 weight=abc",
                1,
                "attribute weight=\"abc\" is not a number in 0..=100",
            ),
            (
                "1 sip:h 0 0 weight=101",
                1,
                "attribute weight=\"101\" is not a number in 0..=100",
            ),
            (
                "1 sip:h 0 0 rweight=-1",
                1,
                "attribute rweight=\"-1\" is not a number in 0..=100",
            ),
            (
                "1 sip:h 0 0 maxload=lots",
                1,
                "attribute maxload=\"lots\" is not a number in 0..=4294967295",
            ),
            ("1 sip:h 0 0 duid=", 1, "attribute duid has no value"),
            (
                "1 sip:h 0 0 socket=127.0.0.1",
                1,
                "attribute socket=\"127.0.0.1\" is not proto:host[:port]",
            ),
            (
                "1 sip:h 0 0 ping_from=nobody",
                1,
                "attribute ping_from: \"nobody\" is not a sip: or sips: URI",
            ),
            ("1 sip:h 0 0 \"weight=5", 1, "attrs: missing closing quote"),
            (
                "1 sip:h 0 0 \"\" \"desc",
                1,
                "description: missing closing quote",
            ),
            (
                "1 sip:h 0 0 \"\" \"desc\" more",
                1,
                "unexpected text after the description: \"more\"",
            ),
            (
                "1 sip:a\n2 sip:b\n3 sip:\n",
                3,
                "destination \"sip:\" has no host",
            ),
        ];
        for (text, line, reason) in cases {
            let err = parse_str(text, Some("ds.list")).unwrap_err();
            assert_eq!(
                (err.line, err.reason.as_str()),
                (*line, *reason),
                "{text:?}"
            );
            assert_eq!(err.to_string(), format!("ds.list:{line}: {reason}"));
        }
    }

    #[test]
    fn default_set_is_one_or_the_lowest() {
        let with_one = parse_str("2 sip:127.0.0.1:5072\n1 sip:127.0.0.1:5071\n", None).unwrap();
        assert_eq!(dispatcher_config(with_one).default_set, 1);
        let without = parse_str("7 sip:127.0.0.1:5072\n3 sip:127.0.0.1:5071\n", None).unwrap();
        let cfg = dispatcher_config(without);
        assert_eq!(cfg.default_set, 3);
        let d = crate::dispatch::Dispatcher::new(&cfg).expect("a list builds a dispatcher");
        assert_eq!(d.default_set(), 3);
    }

    #[test]
    fn invalid_utf8_is_refused_with_its_line() {
        let err = parse_bytes(b"1 sip:a\n1 sip:\xff\n", Some("f")).unwrap_err();
        assert_eq!(err.to_string(), "f:2: not valid UTF-8");
    }

    #[test]
    fn file_errors_name_the_file() {
        let dir = std::env::temp_dir().join(format!("kubesbc-ds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("dispatcher.list");
        std::fs::write(&path, "1 sip:127.0.0.1:5071\n1 sip:127.0.0.1:5072 zero\n").unwrap();
        let err = parse_file(&path).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{}:2: flags \"zero\" is not a number (decimal or 0x hex)",
                path.display()
            )
        );
        std::fs::write(&path, "1 sip:127.0.0.1:5071\n").unwrap();
        assert_eq!(parse_file(&path).unwrap()[0].destinations.len(), 1);
        let missing = dir.join("absent.list");
        let err = parse_file(&missing).unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("{}: cannot read:", missing.display())),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
