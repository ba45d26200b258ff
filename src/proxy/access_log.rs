//! Access logs: one line per proxied request, written off the request path.
//!
//! A request that is logged carries a [`Record`] (allocated only when its
//! listener has an access log). Both HTTP paths fill in the same fields — what
//! the client asked, which servers were tried, what the last one answered and
//! when — and hand the finished record to the listener's [`AccessLog`]. The
//! record goes into a bounded lock-free queue that a thread of its own drains
//! every [`DRAIN_EVERY`] (so a request never wakes it: no system call per
//! line), formats (`combined`, `json`, or a template of nginx variables) and
//! writes, at least every second and on shutdown. A full channel, a full disk or
//! a deleted directory never holds a request up: the line is dropped, counted
//! ([`dropped_total`]), and a warning is logged at most once a minute.
//! [`reopen_all`] (SIGUSR1, `POST /api/v1/logs/reopen`) makes every writer open
//! its file again, for logrotate.
//!
//! Owns: records, their formats, the writer threads. Does not decide what a
//! request's status is (the paths do) or where a request goes.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};

use crossbeam_queue::ArrayQueue;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use tracing::warn;

use crate::config::{AccessLogConfig, AccessLogFormat, AccessLogTarget};

/// Lines waiting for the writer; more are dropped (and counted).
const QUEUE: usize = 16 * 1024;
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// How often the writer takes what the queue holds.
const DRAIN_EVERY: Duration = Duration::from_millis(50);
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Lines dropped by every access log of the process.
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// The access logs open now, so that one file is written by one writer
/// (listeners and reloads share it) and all can be reopened.
static OPEN: Mutex<Vec<Weak<AccessLog>>> = Mutex::new(Vec::new());

/// Lines dropped so far (queue full, write failed, file not open).
pub fn dropped_total() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// How long a reopen waits for the writers.
const REOPEN_WITHIN: Duration = Duration::from_secs(2);

/// Asks every open access log to open its file again, and waits (at most
/// [`REOPEN_WITHIN`], on a blocking thread) until each has: a line recorded
/// after this returns goes to the new file, as logrotate's `postrotate`
/// expects. How many there are; an error only if the blocking thread failed.
pub async fn reopen_all() -> Result<usize, tokio::task::JoinError> {
    tokio::task::spawn_blocking(|| ask_all(Msg::Reopen, REOPEN_WITHIN)).await
}

/// Writes out what every access log holds, waiting at most `within` (shutdown).
pub fn flush_all(within: Duration) {
    ask_all(Msg::Flush, within);
}

/// Sends every open access log's writer the message `ask` makes, and waits
/// until each has answered, at most `within` in all; how many logs there are.
fn ask_all(ask: fn(Sender<()>) -> Msg, within: Duration) -> usize {
    let deadline = Instant::now() + within;
    let logs = live();
    let mut waits = Vec::new();
    for l in &logs {
        let (tx, rx) = std::sync::mpsc::channel();
        if l.control.send(ask(tx)).is_ok() {
            waits.push(rx);
        }
    }
    for rx in waits {
        let _ = rx.recv_timeout(deadline.saturating_duration_since(Instant::now()));
    }
    logs.len()
}

fn live() -> Vec<Arc<AccessLog>> {
    let mut open = OPEN.lock().unwrap_or_else(|p| p.into_inner());
    open.retain(|w| w.strong_count() > 0);
    open.iter().filter_map(Weak::upgrade).collect()
}

/// What the writer is asked besides lines.
enum Msg {
    Flush(Sender<()>),
    /// Lines queued so far go to the file as it was; then it is opened again.
    Reopen(Sender<()>),
}

struct Shared {
    lines: ArrayQueue<Box<Record>>,
}

/// One access log (a file or stdout, in one format), shared by the listeners
/// that name it.
pub struct AccessLog {
    config: AccessLogConfig,
    control: Sender<Msg>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog")
            .field("config", &self.config)
            .finish()
    }
}

impl AccessLog {
    /// The access log `config` names: the one already open, or a new one (its
    /// writer thread started; a file that cannot be opened yet is retried).
    pub fn open(config: &AccessLogConfig) -> Arc<AccessLog> {
        let mut open = OPEN.lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|w| w.strong_count() > 0);
        if let Some(existing) = open
            .iter()
            .filter_map(Weak::upgrade)
            .find(|l| l.config == *config)
        {
            return existing;
        }
        let (control, rx) = std::sync::mpsc::channel();
        let shared = Arc::new(Shared {
            lines: ArrayQueue::new(QUEUE),
        });
        let log = Arc::new(AccessLog {
            config: config.clone(),
            control,
            shared: Arc::clone(&shared),
        });
        let writer = Writer::new(config.clone(), shared);
        let spawned = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer.run(rx));
        if let Err(e) = spawned {
            warn!(error = %e, "access log: cannot start its writer thread; lines will be dropped");
        }
        open.push(Arc::downgrade(&log));
        log
    }

    /// Hands a finished record to the writer (never waits).
    pub fn write(&self, record: Box<Record>) {
        if self.shared.lines.push(record).is_err() {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A text field of a [`Record`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Text {
    Method,
    Uri,
    Host,
    RequestId,
    UserAgent,
    Referer,
    Upstream,
    /// The last server tried.
    UpstreamAddr,
}

/// What one request leaves in the access log. Its text fields share one
/// buffer, so that a logged request costs two allocations, not eight.
#[derive(Debug, Clone, Default)]
pub struct Record {
    pub time: Option<SystemTime>,
    pub start: Option<Instant>,
    pub remote_addr: Option<SocketAddr>,
    pub protocol: &'static str,
    pub status: u16,
    pub bytes_sent: u64,
    pub body_bytes_sent: u64,
    pub request_time: Duration,
    pub upstream_status: Option<u16>,
    pub upstream_response_time: Option<Duration>,
    pub upstream_connect_time: Option<Duration>,
    pub tries: u32,
    text: String,
    spans: [(u32, u32); 8],
}

impl Record {
    /// A record for a request that starts now.
    pub fn start(remote: SocketAddr) -> Box<Record> {
        Box::new(Record {
            // The writer stamps the time when it takes the line (within
            // DRAIN_EVERY of the request's end): one clock read fewer here.
            time: None,
            start: Some(Instant::now()),
            remote_addr: Some(remote),
            protocol: "HTTP/1.1",
            text: String::with_capacity(256),
            ..Record::default()
        })
    }

    /// Sets a text field (bytes that are not UTF-8 are replaced).
    pub fn set(&mut self, field: Text, value: &[u8]) {
        let from = self.text.len();
        match std::str::from_utf8(value) {
            Ok(v) => self.text.push_str(v),
            Err(_) => self.text.push_str(&String::from_utf8_lossy(value)),
        }
        self.spans[field as usize] = (from as u32, self.text.len() as u32);
    }

    pub fn get(&self, field: Text) -> &str {
        let (from, to) = self.spans[field as usize];
        self.text.get(from as usize..to as usize).unwrap_or("")
    }

    /// A server is tried (again).
    pub fn tried(&mut self, upstream: &str, server: &str) {
        if self.get(Text::Upstream).is_empty() {
            self.set(Text::Upstream, upstream.as_bytes());
        }
        self.set(Text::UpstreamAddr, server.as_bytes());
        self.tries += 1;
        self.upstream_status = None;
    }

    /// Ends the record: the status the client got and the bytes sent to it.
    pub fn finish(&mut self, status: u16, head_bytes: u64, body_bytes: u64) {
        self.status = status;
        self.body_bytes_sent = body_bytes;
        self.bytes_sent = head_bytes + body_bytes;
        self.request_time = self.start.map_or(Duration::ZERO, |s| s.elapsed());
    }
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

fn secs(d: Duration) -> String {
    format!("{}.{:03}", d.as_secs(), d.subsec_millis())
}

/// nginx's `$time_local`: `03/Dec/2026:12:00:00 +0000` (UTC).
fn time_local(t: SystemTime) -> String {
    let iso = humantime::format_rfc3339_seconds(t).to_string(); // 2026-12-03T12:00:00Z
    let (date, time) = iso.split_once('T').unwrap_or((&iso, "00:00:00Z"));
    let mut parts = date.splitn(3, '-');
    let (y, m, d) = (
        parts.next().unwrap_or("1970"),
        parts.next().unwrap_or("01"),
        parts.next().unwrap_or("01"),
    );
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = m
        .parse::<usize>()
        .ok()
        .and_then(|m| MONTHS.get(m.wrapping_sub(1)))
        .unwrap_or(&"Jan");
    format!("{d}/{month}/{y}:{} +0000", time.trim_end_matches('Z'))
}

fn time_iso8601(t: SystemTime) -> String {
    let iso = humantime::format_rfc3339_seconds(t).to_string();
    format!("{}+00:00", iso.trim_end_matches('Z'))
}

/// A value of `record` by nginx variable name (`-` where there is none).
fn variable(r: &Record, name: &str) -> String {
    let t = r.time.unwrap_or_else(SystemTime::now);
    match name {
        "remote_addr" => r.remote_addr.map_or("-".into(), |a| a.ip().to_string()),
        "remote_user" => "-".into(),
        "time_local" => time_local(t),
        "time_iso8601" => time_iso8601(t),
        "request" => format!(
            "{} {} {}",
            r.get(Text::Method),
            r.get(Text::Uri),
            r.protocol
        ),
        "request_method" => r.get(Text::Method).into(),
        "request_uri" => r.get(Text::Uri).into(),
        "server_protocol" => r.protocol.into(),
        "host" => or_dash(r.get(Text::Host)).into(),
        "status" => r.status.to_string(),
        "bytes_sent" => r.bytes_sent.to_string(),
        "body_bytes_sent" => r.body_bytes_sent.to_string(),
        "request_time" => secs(r.request_time),
        "upstream" => or_dash(r.get(Text::Upstream)).into(),
        "upstream_addr" => or_dash(r.get(Text::UpstreamAddr)).into(),
        "upstream_status" => r.upstream_status.map_or("-".into(), |s| s.to_string()),
        "upstream_response_time" => r.upstream_response_time.map_or("-".into(), secs),
        "upstream_connect_time" => r.upstream_connect_time.map_or("-".into(), secs),
        "upstream_tries" => r.tries.to_string(),
        "request_id" => or_dash(r.get(Text::RequestId)).into(),
        "http_user_agent" => or_dash(r.get(Text::UserAgent)).into(),
        "http_referer" => or_dash(r.get(Text::Referer)).into(),
        _ => "-".into(),
    }
}

/// A compiled format.
enum Format {
    Combined,
    Json,
    /// Literal text and variable names, alternating (text first).
    Template(Vec<(String, Option<String>)>),
}

impl Format {
    fn new(f: &AccessLogFormat) -> Format {
        match f {
            AccessLogFormat::Combined => Format::Combined,
            AccessLogFormat::Json => Format::Json,
            AccessLogFormat::Template(t) => Format::Template(compile(t)),
        }
    }

    fn line(&self, r: &Record, clock: &mut Clock, out: &mut String) {
        match self {
            Format::Combined => {
                match r.remote_addr {
                    Some(a) => {
                        let _ = write!(out, "{}", a.ip());
                    }
                    None => out.push('-'),
                }
                out.push_str(" - - [");
                out.push_str(clock.local(r.time));
                out.push_str("] \"");
                escape_into(out, r.get(Text::Method));
                out.push(' ');
                escape_into(out, r.get(Text::Uri));
                out.push(' ');
                out.push_str(r.protocol);
                let _ = write!(out, "\" {} {} \"", r.status, r.body_bytes_sent);
                escape_into(out, or_dash(r.get(Text::Referer)));
                out.push_str("\" \"");
                escape_into(out, or_dash(r.get(Text::UserAgent)));
                out.push('"');
            }
            Format::Json => {
                // Written by hand, field by field: a serde_json::Value per line
                // (a map of owned keys) cost more than the request it logs.
                out.push_str("{\"time\":\"");
                out.push_str(clock.iso8601(r.time));
                out.push_str("\",\"remote_addr\":");
                match r.remote_addr {
                    Some(a) => {
                        let _ = write!(out, "\"{}\"", a.ip());
                    }
                    None => out.push_str("null"),
                }
                json_field(out, "method", r.get(Text::Method));
                json_field(out, "uri", r.get(Text::Uri));
                json_field(out, "protocol", r.protocol);
                json_field(out, "host", r.get(Text::Host));
                let _ = write!(
                    out,
                    ",\"status\":{},\"bytes_sent\":{},\"body_bytes_sent\":{},\"request_time\":",
                    r.status, r.bytes_sent, r.body_bytes_sent,
                );
                seconds_into(out, r.request_time);
                json_opt(out, "upstream", r.get(Text::Upstream));
                json_opt(out, "upstream_addr", r.get(Text::UpstreamAddr));
                out.push_str(",\"upstream_status\":");
                match r.upstream_status {
                    Some(s) => {
                        let _ = write!(out, "{s}");
                    }
                    None => out.push_str("null"),
                }
                for (name, d) in [
                    ("upstream_response_time", r.upstream_response_time),
                    ("upstream_connect_time", r.upstream_connect_time),
                ] {
                    let _ = write!(out, ",\"{name}\":");
                    match d {
                        Some(d) => seconds_into(out, d),
                        None => out.push_str("null"),
                    }
                }
                let _ = write!(out, ",\"tries\":{}", r.tries);
                json_field(out, "request_id", r.get(Text::RequestId));
                json_field(out, "user_agent", r.get(Text::UserAgent));
                json_field(out, "referer", r.get(Text::Referer));
                out.push('}');
            }
            Format::Template(parts) => {
                for (text, var) in parts {
                    out.push_str(text);
                    if let Some(v) = var {
                        out.push_str(&escape(&variable(r, v)));
                    }
                }
            }
        }
        out.push('\n');
    }
}

/// Bytes a client sent that must not break a line or forge a field: control
/// characters, `"` and `\` escaped as nginx escapes them (`\xHH`).
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    escape_into(&mut out, s);
    out
}

/// Seconds with microseconds, as a JSON number (`0.001234`), without float
/// formatting.
fn seconds_into(out: &mut String, d: Duration) {
    let _ = write!(out, "{}.{:06}", d.as_secs(), d.subsec_micros());
}

fn escape_into(out: &mut String, s: &str) {
    if !s
        .bytes()
        .any(|b| b < 0x20 || b == b'"' || b == b'\\' || b >= 0x7f)
    {
        out.push_str(s);
        return;
    }
    for b in s.bytes() {
        if b < 0x20 || b == b'"' || b == b'\\' || b >= 0x7f {
            let _ = write!(out, "\\x{b:02X}");
        } else {
            out.push(b as char);
        }
    }
}

/// `,"name":"value"` with the value escaped for JSON.
fn json_field(out: &mut String, name: &str, value: &str) {
    out.push_str(",\"");
    out.push_str(name);
    out.push_str("\":");
    json_string(out, value);
}

/// `,"name":"value"`, or `null` when the value is empty.
fn json_opt(out: &mut String, name: &str, value: &str) {
    if value.is_empty() {
        let _ = write!(out, ",\"{name}\":null");
    } else {
        json_field(out, name, value);
    }
}

fn json_string(out: &mut String, s: &str) {
    out.push('"');
    if !s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        out.push_str(s);
        out.push('"');
        return;
    }
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The two time spellings, made once per second rather than once per line.
#[derive(Default)]
struct Clock {
    /// The time of lines that carry none (read once per batch).
    now: Option<SystemTime>,
    second: u64,
    local: String,
    iso: String,
}

impl Clock {
    fn refresh(&mut self, t: Option<SystemTime>) {
        let t = t.or(self.now).unwrap_or_else(SystemTime::now);
        let second = t
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if second != self.second || self.local.is_empty() {
            self.second = second;
            let whole = SystemTime::UNIX_EPOCH + Duration::from_secs(second);
            self.local = time_local(whole);
            self.iso = time_iso8601(whole);
        }
    }

    fn local(&mut self, t: Option<SystemTime>) -> &str {
        self.refresh(t);
        &self.local
    }

    fn iso8601(&mut self, t: Option<SystemTime>) -> &str {
        self.refresh(t);
        &self.iso
    }
}

fn compile(template: &str) -> Vec<(String, Option<String>)> {
    let mut parts = Vec::new();
    let mut text = String::new();
    let mut rest = template;
    while let Some(i) = rest.find('$') {
        text.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        let (name, after) = if let Some(inner) = rest.strip_prefix('{') {
            match inner.find('}') {
                Some(end) => (&inner[..end], &inner[end + 1..]),
                None => ("", inner),
            }
        } else {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            (&rest[..end], &rest[end..])
        };
        parts.push((std::mem::take(&mut text), Some(name.to_string())));
        rest = after;
    }
    text.push_str(rest);
    parts.push((text, None));
    parts
}

/// The writer thread's state.
struct Writer {
    config: AccessLogConfig,
    format: Format,
    shared: Arc<Shared>,
    out: Option<Box<dyn std::io::Write + Send>>,
    buf: String,
    clock: Clock,
    last_warning: Option<Instant>,
    last_open_try: Option<Instant>,
}

impl Writer {
    fn new(config: AccessLogConfig, shared: Arc<Shared>) -> Writer {
        let format = Format::new(&config.format);
        Writer {
            config,
            format,
            shared,
            out: None,
            buf: String::with_capacity(64 * 1024),
            clock: Clock::default(),
            last_warning: None,
            last_open_try: None,
        }
    }

    fn warn(&mut self, what: &str, error: &dyn std::fmt::Display) {
        if self.last_warning.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            self.last_warning = Some(Instant::now());
            warn!(
                path = %self.describe(),
                error = %error,
                dropped_total = dropped_total(),
                "access log: {what}; lines are dropped (and counted) until it works again"
            );
        }
    }

    fn describe(&self) -> String {
        match &self.config.path {
            AccessLogTarget::Stdout => "-".into(),
            AccessLogTarget::File(p) => p.display().to_string(),
        }
    }

    fn open(&mut self) {
        self.last_open_try = Some(Instant::now());
        self.out = match &self.config.path {
            AccessLogTarget::Stdout => Some(Box::new(std::io::stdout())),
            AccessLogTarget::File(p) => match std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
            {
                Ok(f) => Some(Box::new(f)),
                Err(e) => {
                    self.warn("cannot open the file", &e);
                    None
                }
            },
        };
    }

    fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let lines = self.buf.matches('\n').count() as u64;
        if self.out.is_none()
            && self
                .last_open_try
                .is_none_or(|t| t.elapsed() >= FLUSH_EVERY)
        {
            self.open();
        }
        let result = match &mut self.out {
            Some(out) => out
                .write_all(self.buf.as_bytes())
                .and_then(|()| out.flush()),
            None => Err(std::io::Error::other("the file is not open")),
        };
        if let Err(e) = result {
            DROPPED.fetch_add(lines, Ordering::Relaxed);
            self.warn("cannot write", &e);
            // A file that failed is opened again at the next flush.
            if matches!(self.config.path, AccessLogTarget::File(_)) {
                self.out = None;
            }
        }
        self.buf.clear();
    }

    /// Formats what the queue holds, writing out whenever the buffer fills.
    fn drain(&mut self) {
        self.clock.now = Some(SystemTime::now());
        while let Some(r) = self.shared.lines.pop() {
            self.format.line(&r, &mut self.clock, &mut self.buf);
            if self.buf.len() >= 60 * 1024 {
                self.flush();
            }
        }
    }

    fn run(mut self, rx: Receiver<Msg>) {
        self.open();
        let mut flushed = Instant::now();
        loop {
            let msg = rx.recv_timeout(DRAIN_EVERY);
            self.drain();
            match msg {
                Ok(Msg::Flush(done)) => {
                    self.flush();
                    flushed = Instant::now();
                    let _ = done.send(());
                }
                Ok(Msg::Reopen(done)) => {
                    self.flush();
                    self.open();
                    flushed = Instant::now();
                    let _ = done.send(());
                }
                Err(RecvTimeoutError::Timeout) => {
                    if flushed.elapsed() >= FLUSH_EVERY {
                        self.flush();
                        flushed = Instant::now();
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.flush();
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        let mut r = Record {
            time: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_300_000)), // 2026-12-03 12:13:20Z
            remote_addr: Some("10.0.0.9:5555".parse().unwrap()),
            protocol: "HTTP/1.1",
            status: 200,
            bytes_sent: 120,
            body_bytes_sent: 3,
            request_time: Duration::from_millis(12),
            upstream_status: Some(200),
            upstream_response_time: Some(Duration::from_millis(10)),
            upstream_connect_time: None,
            tries: 1,
            ..Record::default()
        };
        for (f, v) in [
            (Text::Method, "GET"),
            (Text::Uri, "/a?b=1"),
            (Text::Host, "example.com"),
            (Text::Upstream, "web"),
            (Text::UpstreamAddr, "127.0.0.1:9001"),
            (Text::RequestId, "abc"),
            (Text::UserAgent, "curl/8 \"x\""),
        ] {
            r.set(f, v.as_bytes());
        }
        r
    }

    #[test]
    fn combined_is_nginxs_combined_format() {
        let mut out = String::new();
        Format::Combined.line(&sample(), &mut Clock::default(), &mut out);
        assert_eq!(
            out,
            "10.0.0.9 - - [03/Dec/2026:12:13:20 +0000] \"GET /a?b=1 HTTP/1.1\" 200 3 \"-\" \"curl/8 \\x22x\\x22\"\n"
        );
    }

    #[test]
    fn json_lines_carry_every_field() {
        let mut out = String::new();
        Format::Json.line(&sample(), &mut Clock::default(), &mut out);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["status"], 200);
        assert_eq!(v["upstream_addr"], "127.0.0.1:9001");
        assert_eq!(v["request_time"], 0.012);
        assert_eq!(v["upstream_connect_time"], serde_json::Value::Null);
        assert_eq!(v["time"], "2026-12-03T12:13:20+00:00");
        for key in [
            "time",
            "remote_addr",
            "method",
            "uri",
            "protocol",
            "host",
            "status",
            "bytes_sent",
            "request_time",
            "upstream",
            "upstream_addr",
            "upstream_status",
            "upstream_response_time",
            "upstream_connect_time",
            "tries",
            "request_id",
            "user_agent",
            "referer",
        ] {
            assert!(v.get(key).is_some(), "{key} missing: {v}");
        }
    }

    #[test]
    fn templates_use_nginx_variable_names() {
        let f = Format::new(&AccessLogFormat::Template(
            "$remote_addr ${upstream_addr} $status $request_time $upstream_connect_time end".into(),
        ));
        let mut out = String::new();
        f.line(&sample(), &mut Clock::default(), &mut out);
        assert_eq!(out, "10.0.0.9 127.0.0.1:9001 200 0.012 - end\n");
    }

    #[test]
    fn a_record_counts_its_tries_and_keeps_the_last_server() {
        let mut r = Record::start("127.0.0.1:1".parse().unwrap());
        r.tried("web", "127.0.0.1:9001");
        r.upstream_status = Some(502);
        r.tried("web", "127.0.0.1:9002");
        r.finish(200, 100, 5);
        assert_eq!((r.tries, r.get(Text::UpstreamAddr)), (2, "127.0.0.1:9002"));
        assert_eq!(r.get(Text::Upstream), "web");
        assert_eq!(r.upstream_status, None);
        assert_eq!((r.bytes_sent, r.body_bytes_sent), (105, 5));
    }
}
