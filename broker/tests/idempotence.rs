//! Idempotent producers over the wire: InitProducerId hands out unique ids, retries of a
//! batch are answered with the original offsets, gaps and stale epochs are refused.

mod common;

use bytes::Bytes;
use common::{start, Client};
use runnel_protocol::kafka_protocol::messages::produce_request::{
    PartitionProduceData, TopicProduceData,
};
use runnel_protocol::kafka_protocol::messages::{
    describe_producers_request, ApiKey, CreateTopicsRequest, DescribeProducersRequest,
    InitProducerIdRequest, ProduceRequest, RequestKind, ResponseKind, TopicName,
};
use runnel_protocol::kafka_protocol::protocol::StrBytes;
use runnel_protocol::kafka_protocol::ResponseError;
use runnel_storage::batch::{build_batch, BatchOptions, NewRecord};

fn batch(producer_id: i64, epoch: i16, seq: i32, n: usize) -> Bytes {
    let records: Vec<NewRecord> = (0..n)
        .map(|i| NewRecord {
            timestamp: 1_700_000_000_000,
            key: Some(Bytes::from(format!("k{i}"))),
            value: Some(Bytes::from(format!("v{seq}-{i}"))),
            headers: Vec::new(),
        })
        .collect();
    let options = BatchOptions {
        producer_id,
        producer_epoch: epoch,
        base_sequence: seq,
        ..Default::default()
    };
    build_batch(&records, &options).expect("batch")
}

async fn produce(client: &mut Client, records: Bytes) -> (i16, i64) {
    let request = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(5000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_static_str("idem")))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(records))])]);
    match client
        .call(ApiKey::Produce, 9, RequestKind::Produce(request))
        .await
    {
        ResponseKind::Produce(r) => {
            let p = &r.responses[0].partition_responses[0];
            (p.error_code, p.base_offset)
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn retries_are_deduplicated_and_gaps_and_zombies_refused() {
    let (broker, mut client, _dir) = start().await;
    let create = CreateTopicsRequest::default().with_topics(vec![
        runnel_protocol::kafka_protocol::messages::create_topics_request::CreatableTopic::default()
            .with_name(TopicName(StrBytes::from_static_str("idem")))
            .with_num_partitions(1)
            .with_replication_factor(1),
    ]);
    client
        .call(ApiKey::CreateTopics, 7, RequestKind::CreateTopics(create))
        .await;

    // v0 (aiokafka) and v4 both work; ids never repeat.
    let mut ids = Vec::new();
    for version in [0i16, 4, 4] {
        match client
            .call(
                ApiKey::InitProducerId,
                version,
                RequestKind::InitProducerId(
                    InitProducerIdRequest::default().with_transactional_id(None),
                ),
            )
            .await
        {
            ResponseKind::InitProducerId(r) => {
                assert_eq!(r.error_code, 0);
                assert_eq!(r.producer_epoch, 0);
                ids.push(r.producer_id.0);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    ids.dedup();
    assert_eq!(ids.len(), 3, "producer ids are unique: {ids:?}");
    let pid = ids[0];

    assert_eq!(produce(&mut client, batch(pid, 0, 0, 3)).await, (0, 0));
    assert_eq!(produce(&mut client, batch(pid, 0, 3, 2)).await, (0, 3));
    // A retry of the first batch gets its original offset, and nothing is written twice.
    assert_eq!(produce(&mut client, batch(pid, 0, 0, 3)).await, (0, 0));
    assert_eq!(
        broker
            .replication
            .replica("idem", 0)
            .expect("replica")
            .log()
            .log_end_offset(),
        5
    );
    // A gap in the sequence.
    assert_eq!(
        produce(&mut client, batch(pid, 0, 9, 1)).await.0,
        ResponseError::OutOfOrderSequenceNumber.code()
    );
    // A new epoch must start at sequence 0, and then fences the old one.
    assert_eq!(
        produce(&mut client, batch(pid, 1, 5, 1)).await.0,
        ResponseError::OutOfOrderSequenceNumber.code()
    );
    assert_eq!(produce(&mut client, batch(pid, 1, 0, 1)).await, (0, 5));
    assert_eq!(
        produce(&mut client, batch(pid, 0, 5, 1)).await.0,
        ResponseError::InvalidProducerEpoch.code()
    );
    // A producer the broker has never seen is accepted at any sequence (its state may have
    // expired while it idled).
    assert_eq!(produce(&mut client, batch(ids[1], 0, 77, 1)).await, (0, 6));

    // DescribeProducers shows both producers as the partition leader tracks them.
    let describe = DescribeProducersRequest::default().with_topics(vec![
        describe_producers_request::TopicRequest::default()
            .with_name(TopicName(StrBytes::from_static_str("idem")))
            .with_partition_indexes(vec![0, 7]),
    ]);
    let ResponseKind::DescribeProducers(r) = client
        .call(
            ApiKey::DescribeProducers,
            0,
            RequestKind::DescribeProducers(describe),
        )
        .await
    else {
        panic!("DescribeProducers")
    };
    let parts = &r.topics[0].partitions;
    assert_eq!(parts[0].error_code, 0);
    let seen: Vec<(i64, i32, i32)> = parts[0]
        .active_producers
        .iter()
        .map(|p| (p.producer_id.0, p.producer_epoch, p.last_sequence))
        .collect();
    let mut expected = vec![(pid, 1, 0), (ids[1], 0, 77)];
    expected.sort();
    assert_eq!(seen, expected);
    assert!(parts[0]
        .active_producers
        .iter()
        .all(|p| p.last_timestamp > 0));
    assert_eq!(
        parts[1].error_code,
        ResponseError::UnknownTopicOrPartition.code(),
        "a partition that does not exist"
    );
    broker.replication.shutdown();
}
