//! Dynamo 1.4+ discovery records (SPEC 5b, "Discovery"): the `EventSource` record a router must find
//! before it applies a publisher's KV events, the `EventChannel` record that advertises a direct
//! ZeroMQ (or NATS) event plane, and where each lives in the discovery backend: an etcd key, or a file
//! under the file store's root. Values are compact JSON with exact u64, byte for byte as Dynamo 1.6.1
//! writes them (serde_json of its tagged `DiscoveryInstance`). Building a record is pure; writing it,
//! keeping it alive and removing it is the TypeScript I/O's job.

use crate::wire::write_u64_dec;

/// Bucket (etcd key prefix, file-store directory) of the `EventSource` records.
pub const EVENT_SOURCES_BUCKET: &str = "v1/event_sources";
/// Bucket (etcd key prefix, file-store directory) of the `EventChannel` records.
pub const EVENT_CHANNELS_BUCKET: &str = "v1/event_channels";
/// A router applies events only from a publisher id a JSON number can hold exactly.
pub const MAX_PUBLISHER_ID: u64 = (1 << 53) - 1;

/// The serving endpoint a record is scoped to (`EndpointId` in Dynamo's discovery).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub namespace: String,
    pub component: String,
    pub name: String,
}

/// The request-plane instance serving Dynamo-native recovery for a source (`recovery_target`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryTarget {
    pub namespace: String,
    pub component: String,
    pub endpoint: String,
    pub instance_id: u64,
    /// The TCP request-plane address, as Dynamo's `TransportType::Tcp` carries it.
    pub tcp: String,
}

/// What one publisher incarnation of one `(worker_id, dp_rank)` advertises.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventSource {
    pub endpoint: Endpoint,
    pub worker_id: u64,
    pub dp_rank: u32,
    pub publisher_id: u64,
    /// None: the router treats the source as live-only.
    pub recovery_target: Option<RecoveryTarget>,
}

/// How subscribers reach a publisher's events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelTransport {
    /// The publisher's bound PUB socket, e.g. `tcp://10.0.0.5:41234`.
    Zmq { endpoint: String },
    /// NATS subjects under the endpoint's percent-encoded subject prefix.
    Nats,
}

/// An event-plane channel of one publisher (`instance_id` = its publisher id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventChannel {
    pub endpoint: Endpoint,
    pub topic: String,
    pub publisher_id: u64,
    pub transport: ChannelTransport,
}

/// A record ready to write: its bucket, its key inside the bucket, and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryRecord {
    pub bucket: &'static str,
    /// `namespace/{ns}/component/{c}/endpoint/{e}/topic/{topic}/{publisher_id:x}`, segments encoded.
    pub key: String,
    /// Compact JSON, exact u64.
    pub value: Vec<u8>,
}

impl DiscoveryRecord {
    /// The etcd key: `{bucket}/{key}`.
    pub fn etcd_key(&self) -> String {
        format!("{}/{}", self.bucket, self.key)
    }

    /// The file path relative to the file store's root: `{bucket}/{key, percent-encoded as a whole}`.
    pub fn file_path(&self) -> String {
        format!("{}/{}", self.bucket, encode_file_name(&self.key))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryError(pub String);

impl std::fmt::Display for DiscoveryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn err<T>(msg: impl Into<String>) -> Result<T, DiscoveryError> {
    Err(DiscoveryError(msg.into()))
}

fn check_publisher_id(id: u64) -> Result<(), DiscoveryError> {
    if id == 0 || id > MAX_PUBLISHER_ID {
        return err(format!(
            "publisher_id {id} is outside 1..={MAX_PUBLISHER_ID} (2^53-1)"
        ));
    }
    Ok(())
}

fn check_endpoint(e: &Endpoint) -> Result<(), DiscoveryError> {
    for (what, v) in [
        ("namespace", &e.namespace),
        ("component", &e.component),
        ("endpoint name", &e.name),
    ] {
        if v.is_empty() {
            return err(format!("the {what} must not be empty"));
        }
    }
    Ok(())
}

/// A path or subject segment: bytes outside `[A-Za-z0-9_-]` become `%XX` (upper-case hex), so a `.`,
/// `/`, `*` or `>` inside a name cannot change the channel's identity.
pub fn encode_segment(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for &b in value.as_bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(b as char);
        } else {
            push_pct(&mut out, b);
        }
    }
    out
}

/// A file-store file name: every byte outside `[A-Za-z0-9]` becomes `%XX` (upper-case hex), `/`
/// included, so one key is one file directly inside its bucket directory.
pub fn encode_file_name(key: &str) -> String {
    let mut out = String::with_capacity(key.len() * 2);
    for &b in key.as_bytes() {
        if b.is_ascii_alphanumeric() {
            out.push(b as char);
        } else {
            push_pct(&mut out, b);
        }
    }
    out
}

fn push_pct(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(HEX[(b >> 4) as usize] as char);
    out.push(HEX[(b & 15) as usize] as char);
}

/// The endpoint's subject prefix on the NATS event plane:
/// `namespace.{ns}.component.{c}.endpoint.{e}`, segments encoded.
pub fn endpoint_subject_prefix(e: &Endpoint) -> String {
    format!(
        "namespace.{}.component.{}.endpoint.{}",
        encode_segment(&e.namespace),
        encode_segment(&e.component),
        encode_segment(&e.name)
    )
}

/// `namespace/{ns}/component/{c}/endpoint/{e}/topic/{topic}/{id:x}`, segments encoded.
pub fn record_key(e: &Endpoint, topic: &str, publisher_id: u64) -> String {
    format!(
        "namespace/{}/component/{}/endpoint/{}/topic/{}/{:x}",
        encode_segment(&e.namespace),
        encode_segment(&e.component),
        encode_segment(&e.name),
        encode_segment(topic),
        publisher_id
    )
}

// ------------------------------------------------------------------------------------------------
// JSON (serde_json compact output)

fn write_str(out: &mut Vec<u8>, s: &str) {
    // serde_json's own string escaping, so names with quotes or control characters match Dynamo's.
    // Writing a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn write_endpoint(out: &mut Vec<u8>, e: &Endpoint) {
    out.extend_from_slice(b"{\"namespace\":");
    write_str(out, &e.namespace);
    out.extend_from_slice(b",\"component\":");
    write_str(out, &e.component);
    out.extend_from_slice(b",\"name\":");
    write_str(out, &e.name);
    out.push(b'}');
}

fn write_scope(out: &mut Vec<u8>, e: &Endpoint) {
    out.extend_from_slice(b"\"scope\":{\"kind\":\"endpoint\",\"endpoint\":");
    write_endpoint(out, e);
    out.push(b'}');
}

fn write_recovery_target(out: &mut Vec<u8>, t: &RecoveryTarget) {
    out.extend_from_slice(b"{\"component\":");
    write_str(out, &t.component);
    out.extend_from_slice(b",\"endpoint\":");
    write_str(out, &t.endpoint);
    out.extend_from_slice(b",\"namespace\":");
    write_str(out, &t.namespace);
    out.extend_from_slice(b",\"instance_id\":");
    write_u64_dec(out, t.instance_id);
    out.extend_from_slice(b",\"transport\":{\"tcp\":");
    write_str(out, &t.tcp);
    out.extend_from_slice(b"},\"request_plane_codec\":\"msgpack\"}");
}

/// The `KvEventSource` metadata of an `EventSource` record.
pub fn write_event_source_metadata(out: &mut Vec<u8>, s: &EventSource) {
    out.extend_from_slice(b"{\"kv_state_endpoint\":");
    write_endpoint(out, &s.endpoint);
    out.extend_from_slice(b",\"worker\":{\"worker_id\":");
    write_u64_dec(out, s.worker_id);
    out.extend_from_slice(b",\"dp_rank\":");
    write_u64_dec(out, u64::from(s.dp_rank));
    out.extend_from_slice(b"},\"publisher_id\":");
    write_u64_dec(out, s.publisher_id);
    if let Some(t) = &s.recovery_target {
        out.extend_from_slice(b",\"recovery_target\":");
        write_recovery_target(out, t);
    }
    out.push(b'}');
}

/// The `EventSource` record of one `(worker_id, dp_rank)` publisher on topic `kv-events`.
pub fn event_source_record(s: &EventSource) -> Result<DiscoveryRecord, DiscoveryError> {
    check_endpoint(&s.endpoint)?;
    check_publisher_id(s.publisher_id)?;
    if let Some(t) = &s.recovery_target {
        if t.namespace.is_empty() || t.component.is_empty() || t.endpoint.is_empty() {
            return err(
                "the recovery target's namespace, component and endpoint must not be empty",
            );
        }
        if t.tcp.is_empty() {
            return err("the recovery target's tcp address must not be empty");
        }
    }
    let topic = crate::wire::KV_EVENTS_TOPIC;
    let mut v = Vec::with_capacity(384);
    v.extend_from_slice(b"{\"type\":\"EventSource\",");
    write_scope(&mut v, &s.endpoint);
    v.extend_from_slice(b",\"topic\":");
    write_str(&mut v, topic);
    v.extend_from_slice(b",\"publisher_id\":");
    write_u64_dec(&mut v, s.publisher_id);
    v.extend_from_slice(b",\"metadata\":");
    write_event_source_metadata(&mut v, s);
    v.push(b'}');
    Ok(DiscoveryRecord {
        bucket: EVENT_SOURCES_BUCKET,
        key: record_key(&s.endpoint, topic, s.publisher_id),
        value: v,
    })
}

/// The `EventChannel` record of one publisher's event-plane channel.
pub fn event_channel_record(c: &EventChannel) -> Result<DiscoveryRecord, DiscoveryError> {
    check_endpoint(&c.endpoint)?;
    check_publisher_id(c.publisher_id)?;
    if c.topic.is_empty() {
        return err("the topic must not be empty");
    }
    let mut v = Vec::with_capacity(256);
    v.extend_from_slice(b"{\"type\":\"EventChannel\",");
    write_scope(&mut v, &c.endpoint);
    v.extend_from_slice(b",\"topic\":");
    write_str(&mut v, &c.topic);
    v.extend_from_slice(b",\"instance_id\":");
    write_u64_dec(&mut v, c.publisher_id);
    v.extend_from_slice(b",\"transport\":");
    match &c.transport {
        ChannelTransport::Zmq { endpoint } => {
            if endpoint.is_empty() {
                return err("the ZeroMQ endpoint must not be empty");
            }
            v.extend_from_slice(b"{\"kind\":\"Zmq\",\"config\":{\"endpoint\":");
            write_str(&mut v, endpoint);
            v.extend_from_slice(b"}}");
        }
        ChannelTransport::Nats => {
            v.extend_from_slice(b"{\"kind\":\"Nats\",\"config\":{\"subject_prefix\":");
            write_str(&mut v, &endpoint_subject_prefix(&c.endpoint));
            v.extend_from_slice(b"}}");
        }
    }
    v.push(b'}');
    Ok(DiscoveryRecord {
        bucket: EVENT_CHANNELS_BUCKET,
        key: record_key(&c.endpoint, &c.topic, c.publisher_id),
        value: v,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep() -> Endpoint {
        Endpoint {
            namespace: "dynamo".into(),
            component: "backend".into(),
            name: "generate".into(),
        }
    }

    #[test]
    fn segments_keep_identifier_bytes_and_encode_the_rest() {
        assert_eq!(encode_segment("kv-events_1"), "kv-events_1");
        assert_eq!(encode_segment("a.b/c*d>é"), "a%2Eb%2Fc%2Ad%3E%C3%A9");
        assert_eq!(encode_file_name("a/b-c_d%"), "a%2Fb%2Dc%5Fd%25");
    }

    #[test]
    fn publisher_id_range() {
        let mut s = EventSource {
            endpoint: ep(),
            worker_id: u64::MAX,
            dp_rank: u32::MAX,
            publisher_id: MAX_PUBLISHER_ID,
            recovery_target: None,
        };
        let r = event_source_record(&s).unwrap();
        assert!(r.key.ends_with("/1fffffffffffff"));
        assert!(String::from_utf8(r.value)
            .unwrap()
            .contains("\"worker_id\":18446744073709551615,\"dp_rank\":4294967295"));
        s.publisher_id = MAX_PUBLISHER_ID + 1;
        assert!(event_source_record(&s).is_err());
        s.publisher_id = 0;
        assert!(event_source_record(&s).is_err());
    }

    #[test]
    fn names_are_json_escaped_and_path_encoded() {
        let c = EventChannel {
            endpoint: Endpoint {
                namespace: "ns \"q\"\n".into(),
                component: "c".into(),
                name: "e".into(),
            },
            topic: "kv-events".into(),
            publisher_id: 1,
            transport: ChannelTransport::Nats,
        };
        let r = event_channel_record(&c).unwrap();
        let json = String::from_utf8(r.value).unwrap();
        assert!(json.contains(r#""namespace":"ns \"q\"\n""#));
        assert!(json.contains(r#""subject_prefix":"namespace.ns%20%22q%22%0A.component.c"#));
        assert_eq!(
            r.key,
            "namespace/ns%20%22q%22%0A/component/c/endpoint/e/topic/kv-events/1"
        );
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["scope"]["endpoint"]["namespace"], "ns \"q\"\n");
    }

    #[test]
    fn empty_names_are_rejected() {
        let mut c = EventChannel {
            endpoint: ep(),
            topic: String::new(),
            publisher_id: 1,
            transport: ChannelTransport::Zmq {
                endpoint: "tcp://127.0.0.1:1".into(),
            },
        };
        assert!(event_channel_record(&c).is_err());
        c.topic = "kv-events".into();
        c.endpoint.component.clear();
        assert!(event_channel_record(&c).is_err());
    }
}
