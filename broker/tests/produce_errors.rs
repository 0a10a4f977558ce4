//! Produce refuses bad input with Kafka's error codes and writes nothing of it:
//! CORRUPT_MESSAGE for a bad CRC, MESSAGE_TOO_LARGE past `max.message.bytes`,
//! RECORD_LIST_TOO_LARGE past `segment.bytes`, INVALID_RECORD for keyless records on a
//! compacted topic, INVALID_REQUIRED_ACKS, UNKNOWN_TOPIC_OR_PARTITION.

mod common;

use bytes::Bytes;
use common::{start, Client};
use runnel_protocol::kafka_protocol::messages::create_topics_request::{
    CreatableTopic, CreatableTopicConfig,
};
use runnel_protocol::kafka_protocol::messages::produce_request::{
    PartitionProduceData, TopicProduceData,
};
use runnel_protocol::kafka_protocol::messages::{
    ApiKey, CreateTopicsRequest, ProduceRequest, RequestKind, ResponseKind, TopicName,
};
use runnel_protocol::kafka_protocol::protocol::StrBytes;
use runnel_protocol::kafka_protocol::ResponseError;
use runnel_storage::batch::{build_batch, BatchOptions, NewRecord};

fn batch(value_len: usize, key: Option<&'static [u8]>) -> Bytes {
    let r = NewRecord {
        timestamp: 1_700_000_000_000,
        key: key.map(Bytes::from_static),
        value: Some(Bytes::from(vec![b'x'; value_len])),
        headers: vec![],
    };
    build_batch(&[r], &BatchOptions::default()).expect("batch")
}

async fn create(client: &mut Client, topic: &str, configs: &[(&str, &str)]) {
    let configs = configs
        .iter()
        .map(|(k, v)| {
            CreatableTopicConfig::default()
                .with_name(StrBytes::from_string(k.to_string()))
                .with_value(Some(StrBytes::from_string(v.to_string())))
        })
        .collect();
    let t = CreatableTopic::default()
        .with_name(TopicName(StrBytes::from_string(topic.to_string())))
        .with_num_partitions(1)
        .with_replication_factor(1)
        .with_configs(configs);
    match client
        .call(
            ApiKey::CreateTopics,
            7,
            RequestKind::CreateTopics(CreateTopicsRequest::default().with_topics(vec![t])),
        )
        .await
    {
        ResponseKind::CreateTopics(r) => assert_eq!(r.topics[0].error_code, 0),
        other => panic!("{other:?}"),
    }
}

async fn produce(client: &mut Client, topic: &str, acks: i16, records: Bytes) -> i16 {
    let request = ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(5000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(records))])]);
    match client
        .call(ApiKey::Produce, 9, RequestKind::Produce(request))
        .await
    {
        ResponseKind::Produce(r) => r.responses[0].partition_responses[0].error_code,
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn bad_batches_get_kafka_error_codes_and_write_nothing() {
    let (broker, mut client, _dir) = start().await;
    create(
        &mut client,
        "limits",
        &[("max.message.bytes", "2000"), ("segment.bytes", "100000")],
    )
    .await;
    create(&mut client, "compacted", &[("cleanup.policy", "compact")]).await;

    let mut corrupt = batch(10, None).to_vec();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xff;
    assert_eq!(
        produce(&mut client, "limits", -1, Bytes::from(corrupt)).await,
        ResponseError::CorruptMessage.code()
    );
    assert_eq!(
        produce(&mut client, "limits", -1, batch(5000, None)).await,
        ResponseError::MessageTooLarge.code()
    );
    let mut many = Vec::new();
    for _ in 0..80 {
        many.extend_from_slice(&batch(1500, None));
    }
    assert_eq!(
        produce(&mut client, "limits", -1, Bytes::from(many)).await,
        ResponseError::RecordListTooLarge.code()
    );
    assert_eq!(
        produce(&mut client, "limits", 7, batch(10, None)).await,
        ResponseError::InvalidRequiredAcks.code()
    );
    assert_eq!(
        produce(&mut client, "compacted", -1, batch(10, None)).await,
        ResponseError::InvalidRecord.code()
    );
    assert_eq!(
        produce(&mut client, "no-such-topic", -1, batch(10, None)).await,
        ResponseError::UnknownTopicOrPartition.code()
    );
    // Nothing of the refused requests reached the logs; good ones still work.
    assert_eq!(
        broker
            .replication
            .replica("limits", 0)
            .expect("replica")
            .log()
            .log_end_offset(),
        0
    );
    assert_eq!(
        produce(&mut client, "compacted", -1, batch(10, Some(b"key"))).await,
        0
    );
    assert_eq!(produce(&mut client, "limits", 1, batch(10, None)).await, 0);
    broker.replication.shutdown();
}
