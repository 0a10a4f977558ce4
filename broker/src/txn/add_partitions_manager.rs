//! Transactions V2 (KIP-890 part 2): a producer no longer sends AddPartitionsToTxn or
//! AddOffsetsToTxn. The partition leader that receives its first transactional batch for a
//! partition (Produce v12+), and the group coordinator that receives its TxnOffsetCommit v5+,
//! add the partition to the transaction themselves, as Kafka's `AddPartitionsToTxnManager`
//! does with `ADD_PARTITION` (`verifyOnly = false`): directly when this broker coordinates the
//! transactional id, else with AddPartitionsToTxn v5 to the coordinator.
//!
//! The coordinator's answers are Kafka's, untranslated; callers map them for their API (see
//! [`for_produce`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use runnel_protocol::kafka_protocol::messages::add_partitions_to_txn_request::{
    AddPartitionsToTxnTopic, AddPartitionsToTxnTransaction,
};
use runnel_protocol::kafka_protocol::messages::{
    AddPartitionsToTxnRequest, ProducerId, TopicName, TransactionalId,
};
use runnel_protocol::kafka_protocol::protocol::StrBytes;
use runnel_protocol::kafka_protocol::ResponseError;

use super::TRANSACTION_STATE_TOPIC;
use crate::Broker;

/// Kafka's `add.partitions.to.txn.retry.backoff.ms` default: how long to wait before asking
/// again after CONCURRENT_TRANSACTIONS (the previous transaction is still completing).
const RETRY_BACKOFF: Duration = Duration::from_millis(20);
/// Kafka's `add.partitions.to.txn.retry.backoff.max.ms` default: how long to keep asking.
const RETRY_MAX: Duration = Duration::from_millis(100);

/// Adds `partitions` to the ongoing transaction of `transactional_id` (starting it if none is
/// ongoing), retrying CONCURRENT_TRANSACTIONS for a while as Kafka's `ReplicaManager` does for
/// adds from produce requests ("the produce backoff adds too much delay"). Returns each
/// partition's error code (0 for added).
pub async fn add_partitions(
    broker: &Arc<Broker>,
    transactional_id: &str,
    producer_id: i64,
    producer_epoch: i16,
    partitions: &[(String, i32)],
) -> Vec<((String, i32), i16)> {
    let started = Instant::now();
    loop {
        let results = add_once(
            broker,
            transactional_id,
            producer_id,
            producer_epoch,
            partitions,
        )
        .await;
        let concurrent = results
            .iter()
            .any(|(_, c)| *c == ResponseError::ConcurrentTransactions.code());
        if !concurrent || started.elapsed() + RETRY_BACKOFF > RETRY_MAX {
            return results;
        }
        tokio::time::sleep(RETRY_BACKOFF).await;
    }
}

async fn add_once(
    broker: &Arc<Broker>,
    transactional_id: &str,
    producer_id: i64,
    producer_epoch: i16,
    partitions: &[(String, i32)],
) -> Vec<((String, i32), i16)> {
    let all = |code: i16| partitions.iter().map(|tp| (tp.clone(), code)).collect();
    let p = broker.txns.partition_of(broker, transactional_id);
    let local = broker
        .replication
        .replica(TRANSACTION_STATE_TOPIC, p)
        .is_some_and(|r| r.leader_id() == broker.config.node_id);
    if local {
        let code = match crate::handlers::add_partitions_to_txn::add(
            broker,
            transactional_id,
            producer_id,
            producer_epoch,
            partitions,
            2,
        )
        .await
        {
            Ok(()) => 0,
            Err(code) => code,
        };
        return all(code);
    }
    let coordinator = broker.partition_leader(TRANSACTION_STATE_TOPIC, p).leader;
    if coordinator < 0 {
        return all(ResponseError::CoordinatorNotAvailable.code());
    }
    let topics = super::by_topic(partitions)
        .into_iter()
        .map(|(t, ps)| {
            AddPartitionsToTxnTopic::default()
                .with_name(TopicName(StrBytes::from_string(t.to_string())))
                .with_partitions(ps)
        })
        .collect();
    let request = AddPartitionsToTxnRequest::default().with_transactions(vec![
        AddPartitionsToTxnTransaction::default()
            .with_transactional_id(TransactionalId(StrBytes::from_string(
                transactional_id.to_string(),
            )))
            .with_producer_id(ProducerId(producer_id))
            .with_producer_epoch(producer_epoch)
            .with_verify_only(false)
            .with_topics(topics),
    ]);
    match crate::inter_broker::add_partitions_to_txn(broker, coordinator, request).await {
        Ok(response) if response.error_code != 0 => all(response.error_code),
        Ok(response) => partitions
            .iter()
            .map(|(t, p)| {
                let code = response
                    .results_by_transaction
                    .iter()
                    .filter(|r| r.transactional_id.0.as_str() == transactional_id)
                    .flat_map(|r| &r.topic_results)
                    .filter(|r| r.name.0.as_str() == t)
                    .flat_map(|r| &r.results_by_partition)
                    .find(|r| r.partition_index == *p)
                    // Not answered: as a lost response, retriable.
                    .map_or(ResponseError::NetworkException.code(), |r| {
                        r.partition_error_code
                    });
                ((t.clone(), *p), code)
            })
            .collect(),
        Err(e) => {
            tracing::debug!(
                transactional_id,
                coordinator,
                error = e,
                "AddPartitionsToTxn to the transaction coordinator failed"
            );
            all(ResponseError::NetworkException.code())
        }
    }
}

/// A coordinator's answer as a produce response reports it (Kafka's `AddPartitionsToTxnManager`
/// and `ReplicaManager.handleProduceAppend`): a fenced epoch is INVALID_PRODUCER_EPOCH, an
/// unreachable or busy coordinator is NOT_ENOUGH_REPLICAS (which every client retries without a
/// metadata refresh), and under V2 CONCURRENT_TRANSACTIONS stays itself.
pub fn for_produce(code: i16) -> i16 {
    if code == ResponseError::ProducerFenced.code() {
        ResponseError::InvalidProducerEpoch.code()
    } else if code == ResponseError::NetworkException.code()
        || code == ResponseError::CoordinatorLoadInProgress.code()
        || code == ResponseError::CoordinatorNotAvailable.code()
        || code == ResponseError::NotCoordinator.code()
    {
        ResponseError::NotEnoughReplicas.code()
    } else {
        code
    }
}
