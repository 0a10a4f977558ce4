//! A topic is usable the moment CreateTopics answers: its partitions already have a leader.

mod common;

use common::start;
use runnel_protocol::kafka_protocol::messages::create_topics_request::CreatableTopic;
use runnel_protocol::kafka_protocol::messages::list_offsets_request::{
    ListOffsetsPartition, ListOffsetsTopic,
};
use runnel_protocol::kafka_protocol::messages::{
    ApiKey, CreateTopicsRequest, ListOffsetsRequest, RequestKind, ResponseKind, TopicName,
};
use runnel_protocol::kafka_protocol::protocol::StrBytes;

#[tokio::test]
async fn list_offsets_right_after_create_topics_finds_a_leader() {
    let (broker, mut client, _dir) = start().await;
    for round in 0..20 {
        let name = TopicName(StrBytes::from_string(format!("fresh-{round}")));
        let create = CreateTopicsRequest::default().with_topics(vec![CreatableTopic::default()
            .with_name(name.clone())
            .with_num_partitions(3)
            .with_replication_factor(1)]);
        match client
            .call(ApiKey::CreateTopics, 7, RequestKind::CreateTopics(create))
            .await
        {
            ResponseKind::CreateTopics(r) => assert_eq!(r.topics[0].error_code, 0),
            other => panic!("{other:?}"),
        }
        let list = ListOffsetsRequest::default().with_topics(vec![ListOffsetsTopic::default()
            .with_name(name)
            .with_partitions(
                (0..3)
                    .map(|p| {
                        ListOffsetsPartition::default()
                            .with_partition_index(p)
                            .with_timestamp(-1)
                    })
                    .collect(),
            )]);
        match client
            .call(ApiKey::ListOffsets, 7, RequestKind::ListOffsets(list))
            .await
        {
            ResponseKind::ListOffsets(r) => {
                for p in &r.topics[0].partitions {
                    assert_eq!(
                        (p.error_code, p.offset),
                        (0, 0),
                        "round {round} partition {}",
                        p.partition_index
                    );
                }
            }
            other => panic!("{other:?}"),
        }
    }
    broker.replication.shutdown();
}
