//! A DNS server inside the test, on loopback UDP, whose records the test
//! changes while it runs: A records and SRV records, answered
//! authoritatively; everything else NXDOMAIN. It can go silent (drop every
//! query) to stand for a name server that is down.
//!
//! Built on hickory-proto's message types (encode, decode) rather than
//! hickory-server: the tests need a mutable table of a few records, not
//! zones, and this is one small loop.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::net::UdpSocket;

type Zone = BTreeMap<(String, RecordType), Vec<Record>>;

/// The test's name server; stops when dropped.
pub struct DnsServer {
    pub addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    silent: Arc<AtomicBool>,
    queries: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A name as the zone keys it: lower case, with the final dot.
fn key(name: &str) -> String {
    let n = name.to_ascii_lowercase();
    if n.ends_with('.') { n } else { format!("{n}.") }
}

fn name(n: &str) -> Name {
    Name::from_ascii(key(n)).unwrap()
}

impl DnsServer {
    pub async fn start() -> DnsServer {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let zone = Arc::new(Mutex::new(Zone::new()));
        let silent = Arc::new(AtomicBool::new(false));
        let queries = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(serve(
            socket,
            Arc::clone(&zone),
            Arc::clone(&silent),
            Arc::clone(&queries),
        ));
        DnsServer {
            addr,
            zone,
            silent,
            queries,
            task,
        }
    }

    /// `name`'s A records become `ips` (none: the name no longer exists).
    pub fn set_a(&self, n: &str, ips: &[Ipv4Addr], ttl: u32) {
        let records = ips
            .iter()
            .map(|ip| Record::from_rdata(name(n), ttl, RData::A(A(*ip))))
            .collect();
        self.set(n, RecordType::A, records);
    }

    /// `name`'s SRV records become `(priority, weight, port, target)`.
    pub fn set_srv(&self, n: &str, records: &[(u16, u16, u16, &str)], ttl: u32) {
        let records = records
            .iter()
            .map(|(p, w, port, target)| {
                Record::from_rdata(
                    name(n),
                    ttl,
                    RData::SRV(SRV::new(*p, *w, *port, name(target))),
                )
            })
            .collect();
        self.set(n, RecordType::SRV, records);
    }

    fn set(&self, n: &str, kind: RecordType, records: Vec<Record>) {
        let mut zone = self.zone.lock().unwrap();
        if records.is_empty() {
            zone.remove(&(key(n), kind));
        } else {
            zone.insert((key(n), kind), records);
        }
    }

    /// Drops every query from now on (`false`: answers again).
    pub fn silence(&self, on: bool) {
        self.silent.store(on, Ordering::SeqCst);
    }

    /// Queries received so far (answered or not).
    pub fn queries(&self) -> u64 {
        self.queries.load(Ordering::SeqCst)
    }
}

async fn serve(
    socket: UdpSocket,
    zone: Arc<Mutex<Zone>>,
    silent: Arc<AtomicBool>,
    queries: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        queries.fetch_add(1, Ordering::SeqCst);
        if silent.load(Ordering::SeqCst) {
            continue;
        }
        let Ok(query) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        let answer = respond(&query, &zone.lock().unwrap());
        if let Ok(bytes) = answer.to_vec() {
            let _ = socket.send_to(&bytes, from).await;
        }
    }
}

fn respond(query: &Message, zone: &Zone) -> Message {
    let mut m = Message::response(query.metadata.id, OpCode::Query);
    m.metadata.authoritative = true;
    m.metadata.recursion_desired = query.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    let Some(q) = query.queries.first() else {
        m.metadata.response_code = ResponseCode::FormErr;
        return m;
    };
    m.add_query(q.clone());
    let asked = key(&q.name().to_string());
    let known = zone.keys().any(|(n, _)| *n == asked);
    match zone.get(&(asked, q.query_type())) {
        Some(records) => {
            m.add_answers(records.iter().cloned());
        }
        // The name with other records only: an empty answer (NODATA).
        None if known => {}
        None => m.metadata.response_code = ResponseCode::NXDomain,
    }
    m
}
