//! etcd's v3 API messages as its JSON gateway spells them: the few that the
//! fleet sends and reads (range, txn, watch, authenticate).
//!
//! The gateway is etcd's own grpc-gateway, served on every client URL since
//! etcd 3.3 (`/v3/...`). Its JSON is protobuf's JSON mapping: field names in
//! snake_case, `bytes` as base64, `int64` as decimal strings, and fields that
//! hold their default value (0, false, empty, the first enum value) left out of
//! answers. The types here carry only what this crate uses; serde skips the rest.
//!
//! Owns: the shapes and their encoding. Does not touch the network (see
//! `gateway`) or the meaning of the keys (see `keys`).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `bytes` fields: base64 on the wire.
mod b64 {
    use super::*;

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD
            .decode(text.as_bytes())
            .map_err(|e| serde::de::Error::custom(format!("bad base64 from etcd: {e}")))
    }
}

/// `int64` fields: a decimal string on the wire (a bare number is accepted too).
pub(super) mod i64s {
    use super::*;

    pub fn serialize<S: Serializer>(v: &i64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Int {
            Text(String),
            Number(i64),
        }
        match Int::deserialize(d)? {
            Int::Number(n) => Ok(n),
            Int::Text(t) => t
                .parse()
                .map_err(|e| serde::de::Error::custom(format!("bad int64 {t:?} from etcd: {e}"))),
        }
    }
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

fn is_false(v: &bool) -> bool {
    !*v
}

/// The end of the range that holds every key starting with `prefix` (etcd's
/// `clientv3.GetPrefixRangeEnd`): the prefix with its last byte below 0xff
/// incremented; `\0` (every key) when there is none.
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[derive(Debug, Default, Clone, Deserialize)]
pub(crate) struct ResponseHeader {
    #[serde(default, with = "i64s")]
    pub revision: i64,
}

impl ResponseHeader {
    pub fn revision(h: Option<&ResponseHeader>) -> u64 {
        h.map_or(0, |h| h.revision.max(0) as u64)
    }
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct KeyValue {
    #[serde(with = "b64")]
    pub key: Vec<u8>,
    #[serde(default, with = "b64")]
    pub value: Vec<u8>,
    #[serde(default, with = "i64s")]
    pub mod_revision: i64,
}

impl KeyValue {
    pub fn mod_revision(&self) -> u64 {
        self.mod_revision.max(0) as u64
    }
}

#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub(crate) enum SortOrder {
    Descend,
}

#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub(crate) enum SortTarget {
    Mod,
}

#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct RangeRequest {
    #[serde(with = "b64")]
    pub key: Vec<u8>,
    #[serde(with = "b64", skip_serializing_if = "Vec::is_empty")]
    pub range_end: Vec<u8>,
    #[serde(with = "i64s", skip_serializing_if = "is_zero")]
    pub limit: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sort_order: Option<SortOrder>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sort_target: Option<SortTarget>,
    #[serde(skip_serializing_if = "is_false")]
    pub keys_only: bool,
}

impl RangeRequest {
    /// Every key under `prefix`.
    pub fn prefix(prefix: &str) -> RangeRequest {
        RangeRequest {
            key: prefix.as_bytes().to_vec(),
            range_end: prefix_end(prefix.as_bytes()),
            ..RangeRequest::default()
        }
    }

    /// The most recently changed key under `prefix` (its `mod_revision` is the
    /// newest revision there), without its value.
    pub fn newest_under(prefix: &str) -> RangeRequest {
        RangeRequest {
            limit: 1,
            sort_order: Some(SortOrder::Descend),
            sort_target: Some(SortTarget::Mod),
            keys_only: true,
            ..RangeRequest::prefix(prefix)
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct RangeResponse {
    pub header: Option<ResponseHeader>,
    #[serde(default)]
    pub kvs: Vec<KeyValue>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct PutRequest {
    #[serde(with = "b64")]
    pub key: Vec<u8>,
    #[serde(with = "b64")]
    pub value: Vec<u8>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct DeleteRangeRequest {
    #[serde(with = "b64")]
    pub key: Vec<u8>,
}

/// One operation of a transaction.
#[derive(Debug, Clone, Serialize)]
pub(crate) enum RequestOp {
    #[serde(rename = "request_range")]
    Range(RangeRequest),
    #[serde(rename = "request_put")]
    Put(PutRequest),
    #[serde(rename = "request_delete_range")]
    DeleteRange(DeleteRangeRequest),
}

impl RequestOp {
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> RequestOp {
        RequestOp::Put(PutRequest {
            key: key.into(),
            value: value.into(),
        })
    }

    pub fn delete(key: impl Into<Vec<u8>>) -> RequestOp {
        RequestOp::DeleteRange(DeleteRangeRequest { key: key.into() })
    }
}

#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub(crate) enum CompareResult {
    Equal,
}

#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub(crate) enum CompareTarget {
    Version,
    Mod,
    Value,
}

/// A condition of a transaction, on one key or (with `range_end`) on every key
/// of a range.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Compare {
    pub result: CompareResult,
    pub target: CompareTarget,
    #[serde(with = "b64")]
    pub key: Vec<u8>,
    #[serde(with = "b64", skip_serializing_if = "Vec::is_empty")]
    pub range_end: Vec<u8>,
    #[serde(with = "i64s", skip_serializing_if = "is_zero")]
    pub version: i64,
    #[serde(with = "i64s", skip_serializing_if = "is_zero")]
    pub mod_revision: i64,
    #[serde(with = "b64", skip_serializing_if = "Vec::is_empty")]
    pub value: Vec<u8>,
}

impl Compare {
    /// Holds when `key` was last changed at `revision` (it exists and nobody
    /// wrote it since).
    pub fn unchanged_since(key: &str, revision: i64) -> Compare {
        Compare {
            result: CompareResult::Equal,
            target: CompareTarget::Mod,
            key: key.as_bytes().to_vec(),
            range_end: Vec::new(),
            version: 0,
            mod_revision: revision,
            value: Vec::new(),
        }
    }

    /// Holds when `key` holds `value`.
    pub fn holds(key: &str, value: &[u8]) -> Compare {
        Compare {
            result: CompareResult::Equal,
            target: CompareTarget::Value,
            key: key.as_bytes().to_vec(),
            range_end: Vec::new(),
            version: 0,
            mod_revision: 0,
            value: value.to_vec(),
        }
    }

    /// Holds when `key` does not exist.
    pub fn absent(key: &str) -> Compare {
        Compare {
            result: CompareResult::Equal,
            target: CompareTarget::Version,
            key: key.as_bytes().to_vec(),
            range_end: Vec::new(),
            version: 0,
            mod_revision: 0,
            value: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct TxnRequest {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub compare: Vec<Compare>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub success: Vec<RequestOp>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failure: Vec<RequestOp>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct ResponseOp {
    pub response_range: Option<RangeResponse>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct TxnResponse {
    pub header: Option<ResponseHeader>,
    #[serde(default)]
    pub succeeded: bool,
    #[serde(default)]
    pub responses: Vec<ResponseOp>,
}

impl RangeRequest {
    /// One key.
    pub fn key(key: &str) -> RangeRequest {
        RangeRequest {
            key: key.as_bytes().to_vec(),
            ..RangeRequest::default()
        }
    }
}

/// `/v3/maintenance/status`'s answer: which member answered and which member
/// it follows as leader (`uint64`s, as decimal strings).
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct StatusResponse {
    pub header: Option<MemberHeader>,
    #[serde(default)]
    pub leader: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct MemberHeader {
    #[serde(default)]
    pub member_id: String,
}

impl StatusResponse {
    /// Whether the member that answered is the leader.
    pub fn is_leader(&self) -> bool {
        let me = self.header.as_ref().map_or("", |h| h.member_id.as_str());
        !me.is_empty() && me == self.leader
    }
}

/// `/v3/maintenance/status` takes an empty request.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct StatusRequest {}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct WatchCreateRequest {
    #[serde(with = "b64")]
    pub key: Vec<u8>,
    #[serde(with = "b64", skip_serializing_if = "Vec::is_empty")]
    pub range_end: Vec<u8>,
    #[serde(with = "i64s", skip_serializing_if = "is_zero")]
    pub start_revision: i64,
    #[serde(skip_serializing_if = "is_false")]
    pub progress_notify: bool,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct WatchRequest {
    pub create_request: WatchCreateRequest,
}

impl WatchRequest {
    /// Every change under `prefix` from revision `from` on, with progress
    /// notifications.
    pub fn prefix_from(prefix: &str, from: i64) -> WatchRequest {
        WatchRequest {
            create_request: WatchCreateRequest {
                key: prefix.as_bytes().to_vec(),
                range_end: prefix_end(prefix.as_bytes()),
                start_revision: from,
                progress_notify: true,
            },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub(crate) enum EventType {
    #[default]
    Put,
    Delete,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Event {
    #[serde(default, rename = "type")]
    pub kind: EventType,
    pub kv: Option<KeyValue>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct WatchResponse {
    #[serde(default)]
    pub created: bool,
    #[serde(default)]
    pub canceled: bool,
    #[serde(default, with = "i64s")]
    pub compact_revision: i64,
    #[serde(default)]
    pub cancel_reason: String,
    #[serde(default)]
    pub events: Vec<Event>,
}

/// One line of the gateway's watch stream: a response, or an error that ends it.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct WatchMessage {
    pub result: Option<WatchResponse>,
    pub error: Option<ErrorBody>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct AuthenticateRequest {
    pub name: String,
    pub password: String,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct AuthenticateResponse {
    #[serde(default)]
    pub token: String,
}

/// What the gateway answers with a non-200 status (and inside a stream): the
/// gRPC status code and message.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct ErrorBody {
    #[serde(default)]
    pub error: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub code: i32,
}

impl ErrorBody {
    pub fn text(&self) -> &str {
        if self.message.is_empty() {
            &self.error
        } else {
            &self.message
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_the_last_byte_below_ff() {
        assert_eq!(prefix_end(b"/sy/"), b"/sy0".to_vec());
        assert_eq!(prefix_end(b"a\xff\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
        assert_eq!(prefix_end(b""), vec![0]);
    }

    #[test]
    fn a_guarded_txn_is_spelled_as_the_gateway_reads_it() {
        let txn = TxnRequest {
            compare: vec![Compare::unchanged_since("/p/k", 8)],
            success: vec![RequestOp::put("/p/k", "v"), RequestOp::delete("/p/d")],
            failure: vec![RequestOp::Range(RangeRequest::newest_under("/p/"))],
        };
        let v = serde_json::to_value(&txn).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "compare": [{"result": "EQUAL", "target": "MOD", "key": "L3Avaw==",
                             "mod_revision": "8"}],
                "success": [{"request_put": {"key": "L3Avaw==", "value": "dg=="}},
                            {"request_delete_range": {"key": "L3AvZA=="}}],
                "failure": [{"request_range": {"key": "L3Av", "range_end": "L3Aw", "limit": "1",
                             "sort_order": "DESCEND", "sort_target": "MOD", "keys_only": true}}]
            })
        );
        let guards = serde_json::to_value([
            Compare::unchanged_since("/k", 9),
            Compare::holds("/m", b"v"),
        ])
        .unwrap();
        assert_eq!(
            guards,
            serde_json::json!([
                {"result": "EQUAL", "target": "MOD", "key": "L2s=", "mod_revision": "9"},
                {"result": "EQUAL", "target": "VALUE", "key": "L20=", "value": "dg=="}
            ])
        );
        let status: StatusResponse = serde_json::from_str(
            r#"{"header":{"cluster_id":"1","member_id":"10276657743932975437","revision":"2"},"version":"3.4.23","leader":"10276657743932975437"}"#,
        )
        .unwrap();
        assert!(status.is_leader());
        let absent = serde_json::to_value(Compare::absent("/m")).unwrap();
        assert_eq!(
            absent,
            serde_json::json!({"result": "EQUAL", "target": "VERSION", "key": "L20="})
        );
    }

    #[test]
    fn answers_as_etcd_3_4_writes_them_are_read() {
        // Captured from etcd 3.4.23's gateway.
        let txn: TxnResponse = serde_json::from_str(
            r#"{"header":{"cluster_id":"14841639068965178418","member_id":"10276657743932975437","revision":"2","raft_term":"2"},"responses":[{"response_range":{"header":{"revision":"2"},"kvs":[{"key":"L3QvYQ==","create_revision":"2","mod_revision":"2","version":"1"}],"count":"1"}}]}"#,
        )
        .unwrap();
        assert!(!txn.succeeded, "a false `succeeded` is left out");
        assert_eq!(ResponseHeader::revision(txn.header.as_ref()), 2);
        let kv = &txn.responses[0].response_range.as_ref().unwrap().kvs[0];
        assert_eq!(kv.key, b"/t/a");
        assert!(kv.value.is_empty());
        assert_eq!(kv.mod_revision(), 2);

        let w: WatchMessage = serde_json::from_str(
            r#"{"result":{"header":{"revision":"3"},"events":[{"kv":{"key":"L3QvYQ==","mod_revision":"2","value":"aGVsbG8="}},{"type":"DELETE","kv":{"key":"L3QvYQ==","mod_revision":"3"}}]}}"#,
        )
        .unwrap();
        let events = w.result.unwrap().events;
        assert_eq!(events[0].kind, EventType::Put);
        assert_eq!(events[0].kv.as_ref().unwrap().value, b"hello");
        assert_eq!(events[1].kind, EventType::Delete);

        let c: WatchMessage = serde_json::from_str(
            r#"{"result":{"header":{"raft_term":"2"},"canceled":true,"compact_revision":"5"}}"#,
        )
        .unwrap();
        let c = c.result.unwrap();
        assert!(c.canceled);
        assert_eq!(c.compact_revision, 5);

        let e: ErrorBody = serde_json::from_str(
            r#"{"error":"etcdserver: invalid auth token","message":"etcdserver: invalid auth token","code":16}"#,
        )
        .unwrap();
        assert_eq!(e.code, 16);
        assert_eq!(e.text(), "etcdserver: invalid auth token");
    }

    #[test]
    fn bad_base64_or_int64_from_etcd_is_an_error_not_a_panic() {
        assert!(serde_json::from_str::<KeyValue>(r#"{"key":"!!"}"#).is_err());
        assert!(serde_json::from_str::<ResponseHeader>(r#"{"revision":"x"}"#).is_err());
        let h: ResponseHeader = serde_json::from_str(r#"{"revision":7}"#).unwrap();
        assert_eq!(h.revision, 7);
    }
}
