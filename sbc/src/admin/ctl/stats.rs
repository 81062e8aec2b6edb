//! `sbc ctl stats`, `dialogs` and `registrations`: what `kamctl stats`, `kamctl dialog show`
//! and `kamctl online` printed for Kamailio.

use std::io::{self, Write};
use std::time::Duration;

use super::{CtlArgs, CtlError, clean, http_get, status_error};
use crate::observe::cdr::DialogEntry;
use crate::observe::registrations::BindingEntry;

fn fetch(args: &CtlArgs, path: &str, timeout: Duration) -> Result<Vec<u8>, CtlError> {
    let (status, body) = http_get(&args.admin, path, timeout)?;
    if status != 200 {
        return Err(status_error(status, &body));
    }
    Ok(body)
}

fn raw(out: &mut dyn Write, body: &[u8]) -> Result<(), CtlError> {
    out.write_all(body).map_err(CtlError::Output)?;
    writeln!(out).map_err(CtlError::Output)
}

/// `sbc ctl stats [GROUP]`.
pub(super) fn stats(
    args: &CtlArgs,
    group: Option<&str>,
    timeout: Duration,
    out: &mut dyn Write,
) -> Result<(), CtlError> {
    let body = fetch(args, "/metrics", timeout)?;
    write_stats(out, &String::from_utf8_lossy(&body), group).map_err(CtlError::Output)
}

/// The group of a metric: `process` for the process collector, else the word after `sbc_`.
fn group_of(name: &str) -> (&str, &str) {
    match name.strip_prefix("sbc_") {
        Some(rest) => rest.split_once('_').unwrap_or((rest, "")),
        None => name.split_once('_').unwrap_or((name, "")),
    }
}

/// Prints Prometheus text as `group:name{labels} = value`, sorted by group, histogram
/// buckets left out (their `_sum` and `_count` stay).
pub fn write_stats(out: &mut dyn Write, text: &str, only: Option<&str>) -> io::Result<()> {
    let mut lines: Vec<(String, String)> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let name = series.split('{').next().unwrap_or(series);
            if name.ends_with("_bucket") {
                return None;
            }
            let (group, rest) = group_of(name);
            if only.is_some_and(|g| g != group) {
                return None;
            }
            let labels = &series[name.len()..];
            let rest = if rest.is_empty() { group } else { rest };
            Some((format!("{group}:{rest}{labels}"), value.to_owned()))
        })
        .collect();
    lines.sort();
    for (k, v) in &lines {
        writeln!(out, "{} = {}", clean(k), clean(v))?;
    }
    if lines.is_empty()
        && let Some(g) = only
    {
        writeln!(out, "no statistics in group {}", clean(g))?;
    }
    Ok(())
}

/// `sbc ctl dialogs`.
pub(super) fn dialogs(
    args: &CtlArgs,
    json: bool,
    timeout: Duration,
    out: &mut dyn Write,
) -> Result<(), CtlError> {
    let body = fetch(args, "/dialogs", timeout)?;
    if json {
        return raw(out, &body);
    }
    let list: Vec<DialogEntry> = serde_json::from_slice(&body)?;
    write_dialogs(out, &list).map_err(CtlError::Output)
}

/// Prints dialogs, one block each.
pub fn write_dialogs(out: &mut dyn Write, list: &[DialogEntry]) -> io::Result<()> {
    writeln!(out, "DIALOGS: {}", list.len())?;
    for d in list {
        writeln!(out, "DIALOG: {}", clean(&d.call_id))?;
        writeln!(out, "    STATE: {}", clean(&d.state))?;
        writeln!(out, "    FROM: {}", clean(&d.caller))?;
        writeln!(out, "    TO: {}", clean(&d.callee))?;
        writeln!(out, "    SOURCE: {}", clean(&d.source))?;
        writeln!(
            out,
            "    BACKEND: {}",
            clean(d.backend.as_deref().unwrap_or("-"))
        )?;
        if let Some(t) = &d.tenant {
            writeln!(out, "    TENANT: {}", clean(t))?;
        }
        writeln!(out, "    AGE: {}s", d.age_secs)?;
    }
    Ok(())
}

/// `sbc ctl registrations`.
pub(super) fn registrations(
    args: &CtlArgs,
    json: bool,
    timeout: Duration,
    out: &mut dyn Write,
) -> Result<(), CtlError> {
    let body = fetch(args, "/registrations", timeout)?;
    if json {
        return raw(out, &body);
    }
    let list: Vec<BindingEntry> = serde_json::from_slice(&body)?;
    write_registrations(out, &list).map_err(CtlError::Output)
}

/// Prints bindings grouped by address of record, as `kamctl ul show` does.
pub fn write_registrations(out: &mut dyn Write, list: &[BindingEntry]) -> io::Result<()> {
    let mut aors: Vec<&str> = list.iter().map(|b| b.user.as_str()).collect();
    aors.dedup();
    writeln!(out, "AORS: {}", aors.len())?;
    let mut last: Option<&str> = None;
    for b in list {
        if last != Some(b.user.as_str()) {
            writeln!(out, "AOR: {}", clean(&b.user))?;
            last = Some(&b.user);
        }
        writeln!(out, "    CONTACT: {}", clean(&b.contact))?;
        writeln!(
            out,
            "        SOURCE: {}:{}",
            clean(&b.transport),
            clean(&b.source)
        )?;
        writeln!(out, "        EXPIRES: {}", b.expires_in)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_are_grouped_like_kamctl() {
        let text = "# HELP x\nsbc_calls_total{set=\"1\"} 3\nsbc_dialogs_active 1\nsbc_call_setup_seconds_bucket{le=\"1\"} 2\nsbc_call_setup_seconds_count 2\nprocess_open_fds 9\n";
        let mut out = Vec::new();
        write_stats(&mut out, text, None).unwrap();
        let s = String::from_utf8(out).unwrap();
        assert_eq!(
            s,
            "call:setup_seconds_count = 2\ncalls:total{set=\"1\"} = 3\ndialogs:active = 1\nprocess:open_fds = 9\n"
        );
        let mut out = Vec::new();
        write_stats(&mut out, text, Some("dialogs")).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "dialogs:active = 1\n");
    }
}
