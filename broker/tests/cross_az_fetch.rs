//! Fetch responses to a client in another AZ (`client.rack`, Fetch v11+) count as cross-AZ
//! bytes; fetches from the broker's own AZ, or without a rack, do not.

mod common;

use bytes::Bytes;
use common::{start_with, Client};
use runnel_protocol::kafka_protocol::messages::create_topics_request::CreatableTopic;
use runnel_protocol::kafka_protocol::messages::{
    fetch_request, produce_request, ApiKey, CreateTopicsRequest, FetchRequest, ProduceRequest,
    RequestKind, ResponseKind, TopicName,
};
use runnel_protocol::kafka_protocol::protocol::StrBytes;
use runnel_storage::batch::{build_batch, BatchOptions, NewRecord};

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

/// Fetches partition 0 of `topic` from offset 0 as a client in `rack` (Fetch v12); returns
/// the record bytes in the response.
async fn fetch(client: &mut Client, topic: &str, rack: &str) -> usize {
    let p = fetch_request::FetchPartition::default()
        .with_partition(0)
        .with_fetch_offset(0)
        .with_partition_max_bytes(1 << 20);
    let t = fetch_request::FetchTopic::default()
        .with_topic(name(topic))
        .with_partitions(vec![p]);
    let request = FetchRequest::default()
        .with_max_wait_ms(0)
        .with_max_bytes(1 << 20)
        .with_rack_id(StrBytes::from_string(rack.to_string()))
        .with_topics(vec![t]);
    let ResponseKind::Fetch(r) = client
        .call(ApiKey::Fetch, 12, RequestKind::Fetch(request))
        .await
    else {
        panic!("not a fetch response")
    };
    r.responses
        .iter()
        .flat_map(|t| &t.partitions)
        .map(|p| p.records.as_ref().map_or(0, Bytes::len))
        .sum()
}

#[tokio::test]
async fn fetch_bytes_to_clients_in_other_azs_are_counted() {
    let (broker, mut client, _dir) = start_with(|c| c.rack = Some("az-1".into())).await;
    let create = CreateTopicsRequest::default().with_topics(vec![CreatableTopic::default()
        .with_name(name("t"))
        .with_num_partitions(1)
        .with_replication_factor(1)]);
    match client
        .call(ApiKey::CreateTopics, 7, RequestKind::CreateTopics(create))
        .await
    {
        ResponseKind::CreateTopics(r) => assert_eq!(r.topics[0].error_code, 0),
        other => panic!("{other:?}"),
    }
    let record = NewRecord {
        timestamp: 1_700_000_000_000,
        key: None,
        value: Some(Bytes::from(vec![b'x'; 500])),
        headers: vec![],
    };
    let batch = build_batch(&[record], &BatchOptions::default()).expect("batch");
    let t = produce_request::TopicProduceData::default()
        .with_name(name("t"))
        .with_partition_data(vec![produce_request::PartitionProduceData::default()
            .with_index(0)
            .with_records(Some(batch))]);
    let produce = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(5000)
        .with_topic_data(vec![t]);
    match client
        .call(ApiKey::Produce, 9, RequestKind::Produce(produce))
        .await
    {
        ResponseKind::Produce(r) => {
            assert_eq!(r.responses[0].partition_responses[0].error_code, 0)
        }
        other => panic!("{other:?}"),
    }

    let same_az = fetch(&mut client, "t", "az-1").await;
    let no_rack = fetch(&mut client, "t", "").await;
    assert!(same_az > 500 && no_rack == same_az);
    assert!(
        broker.cross_az_bytes().fetch_sent.is_empty(),
        "same-AZ and rack-less fetches are not cross-AZ"
    );
    let other_az = fetch(&mut client, "t", "az-2").await;
    let twice = fetch(&mut client, "t", "az-2").await + other_az;
    let counted = broker.cross_az_bytes().fetch_sent;
    assert_eq!(
        counted.into_iter().collect::<Vec<_>>(),
        [("az-2".to_string(), twice as u64)]
    );
    broker.replication.shutdown();
}
