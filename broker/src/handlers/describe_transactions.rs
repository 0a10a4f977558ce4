//! DescribeTransactions (key 65): a transactional id's state, producer, timeout, start time
//! and partitions (`kafka-transactions --describe`).

use std::sync::Arc;

use runnel_protocol::kafka_protocol::messages::describe_transactions_response::{
    TopicData, TransactionState,
};
use runnel_protocol::kafka_protocol::messages::{
    DescribeTransactionsRequest, DescribeTransactionsResponse, ProducerId, TopicName,
};
use runnel_protocol::kafka_protocol::protocol::StrBytes;
use runnel_protocol::kafka_protocol::ResponseError;

use crate::Broker;

pub fn handle(
    broker: &Arc<Broker>,
    request: DescribeTransactionsRequest,
    _version: i16,
) -> DescribeTransactionsResponse {
    let states = request
        .transactional_ids
        .iter()
        .map(|id| {
            let base = TransactionState::default()
                .with_transactional_id(id.clone())
                .with_transaction_state(StrBytes::from_static_str(""))
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1)
                .with_transaction_start_time_ms(-1);
            if id.0.is_empty() {
                return base.with_error_code(ResponseError::InvalidRequest.code());
            }
            let found = broker
                .txns
                .with_txns(broker, &id.0, |t| t.txns.get(id.0.as_str()).cloned());
            match found {
                Err(code) => base.with_error_code(code),
                Ok(None) => base.with_error_code(ResponseError::TransactionalIdNotFound.code()),
                Ok(Some(m)) => {
                    let mut topics: Vec<TopicData> = Vec::new();
                    for (topic, p) in &m.partitions {
                        match topics.last_mut() {
                            Some(t) if t.topic.0.as_str() == topic => t.partitions.push(*p),
                            _ => topics.push(
                                TopicData::default()
                                    .with_topic(TopicName(StrBytes::from_string(topic.clone())))
                                    .with_partitions(vec![*p]),
                            ),
                        }
                    }
                    base.with_transaction_state(StrBytes::from_static_str(m.state.name()))
                        .with_transaction_timeout_ms(m.timeout_ms)
                        .with_transaction_start_time_ms(m.start_ms)
                        .with_producer_id(ProducerId(m.producer_id))
                        .with_producer_epoch(m.producer_epoch)
                        .with_topics(topics)
                }
            }
        })
        .collect();
    DescribeTransactionsResponse::default().with_transaction_states(states)
}
