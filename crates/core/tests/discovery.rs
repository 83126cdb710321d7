//! Discovery records against Dynamo 1.6.1's own output (__test__/fixtures/dynamo-1.6/discovery-1.6.json).

use dynamo_kv_core::discovery::{
    event_channel_record, event_source_record, ChannelTransport, DiscoveryRecord, Endpoint,
    EventChannel, EventSource, RecoveryTarget, EVENT_CHANNELS_BUCKET, EVENT_SOURCES_BUCKET,
};
use serde_json::Value;

mod fixture_json;
use fixture_json::u64s;

fn fixture() -> Value {
    fixture_json::fixture("dynamo-1.6/discovery-1.6.json")
}

fn endpoint(v: &Value) -> Endpoint {
    Endpoint {
        namespace: v["namespace"].as_str().unwrap().into(),
        component: v["component"].as_str().unwrap().into(),
        name: v["name"].as_str().unwrap().into(),
    }
}

struct Inputs {
    endpoint: Endpoint,
    worker_id: u64,
    dp_rank: u32,
    publisher_id: u64,
}

fn inputs(f: &Value) -> Inputs {
    let i = &f["records"]["inputs"];
    Inputs {
        endpoint: endpoint(&i["serving_endpoint"]),
        worker_id: u64s(&i["worker_id"]),
        dp_rank: i["dp_rank"].as_u64().unwrap() as u32,
        publisher_id: u64s(&i["publisher_id"]),
    }
}

fn registered(f: &Value, label: &str) -> String {
    f["records"]["file_backend"]["registered"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["label"] == label)
        .unwrap()["instance_json"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The fixture's file for a record: same path, same content.
fn assert_file(f: &Value, rec: &DiscoveryRecord) {
    let files = f["records"]["file_backend"]["files"].as_array().unwrap();
    let file = files
        .iter()
        .find(|x| x["path"].as_str().unwrap() == rec.file_path())
        .unwrap_or_else(|| panic!("no fixture file at {}", rec.file_path()));
    assert_eq!(file["decoded_key"].as_str().unwrap(), rec.key);
    assert_eq!(
        file["content"].as_str().unwrap().as_bytes(),
        rec.value.as_slice()
    );
}

fn recovery_target(f: &Value) -> RecoveryTarget {
    let r: Value = serde_json::from_str(
        f["records"]["recovery_target_endpoint_record"]["json"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    RecoveryTarget {
        namespace: r["namespace"].as_str().unwrap().into(),
        component: r["component"].as_str().unwrap().into(),
        endpoint: r["endpoint"].as_str().unwrap().into(),
        instance_id: r["instance_id"].as_u64().unwrap(),
        tcp: r["transport"]["tcp"].as_str().unwrap().into(),
    }
}

#[test]
fn live_only_event_source_matches_dynamo() {
    let f = fixture();
    let i = inputs(&f);
    let rec = event_source_record(&EventSource {
        endpoint: i.endpoint,
        worker_id: i.worker_id,
        dp_rank: i.dp_rank,
        publisher_id: i.publisher_id,
        recovery_target: None,
    })
    .unwrap();
    assert_eq!(rec.bucket, EVENT_SOURCES_BUCKET);
    assert_eq!(
        String::from_utf8(rec.value.clone()).unwrap(),
        registered(&f, "event_source_live_only")
    );
    assert_file(&f, &rec);
    // etcd: the memory backend runs the same code as etcd, with the same keys and values.
    let mem = &f["records"]["memory_backend_entries"][0];
    assert_eq!(mem["bucket"].as_str().unwrap(), rec.bucket);
    assert_eq!(mem["key"].as_str().unwrap(), rec.etcd_key());
    assert_eq!(
        mem["value"].as_str().unwrap().as_bytes(),
        rec.value.as_slice()
    );
    // The metadata alone, as the router deserializes it.
    let meta = f["records"]["kv_event_source_metadata_live_only_json"]
        .as_str()
        .unwrap();
    assert!(String::from_utf8(rec.value)
        .unwrap()
        .ends_with(&format!(",\"metadata\":{meta}}}")));
}

#[test]
fn recoverable_event_source_matches_dynamo() {
    let f = fixture();
    let i = inputs(&f);
    let rec = event_source_record(&EventSource {
        endpoint: i.endpoint,
        worker_id: i.worker_id,
        dp_rank: i.dp_rank,
        publisher_id: i.publisher_id + 1,
        recovery_target: Some(recovery_target(&f)),
    })
    .unwrap();
    assert_eq!(
        String::from_utf8(rec.value.clone()).unwrap(),
        registered(&f, "event_source_recoverable")
    );
    assert_file(&f, &rec);
}

#[test]
fn event_channels_match_dynamo() {
    let f = fixture();
    let i = inputs(&f);
    let cases = [
        (
            "event_channel_zmq",
            "kv-events",
            i.publisher_id,
            ChannelTransport::Zmq {
                endpoint: "tcp://10.0.0.5:41234".into(),
            },
        ),
        (
            "event_channel_nats",
            "kv-events",
            i.publisher_id + 2,
            ChannelTransport::Nats,
        ),
        (
            "event_channel_zmq_kv_metrics",
            "kv_metrics",
            i.publisher_id + 3,
            ChannelTransport::Zmq {
                endpoint: "tcp://10.0.0.5:41235".into(),
            },
        ),
    ];
    for (label, topic, publisher_id, transport) in cases {
        let rec = event_channel_record(&EventChannel {
            endpoint: i.endpoint.clone(),
            topic: topic.into(),
            publisher_id,
            transport,
        })
        .unwrap();
        assert_eq!(rec.bucket, EVENT_CHANNELS_BUCKET);
        assert_eq!(
            String::from_utf8(rec.value.clone()).unwrap(),
            registered(&f, label),
            "{label}"
        );
        assert_file(&f, &rec);
        if label == "event_channel_zmq" {
            let mem = &f["records"]["memory_backend_entries"][1];
            assert_eq!(mem["key"].as_str().unwrap(), rec.etcd_key());
            assert_eq!(
                mem["value"].as_str().unwrap().as_bytes(),
                rec.value.as_slice()
            );
        }
    }
}
