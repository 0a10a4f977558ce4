//! AddPartitionsToTxn (key 24): a transactional producer names the partitions it is about to
//! write, before its first batch to each (v0-3, from clients). v4+ batches several
//! transactions, as brokers send it, and `verify_only` asks whether partitions are already in
//! the transaction (KIP-890) without adding them.

use std::sync::Arc;

use runnel_protocol::kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
use runnel_protocol::kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnResult, AddPartitionsToTxnTopicResult,
};
use runnel_protocol::kafka_protocol::messages::{
    AddPartitionsToTxnRequest, AddPartitionsToTxnResponse,
};
use runnel_protocol::kafka_protocol::ResponseError;

use crate::group::now_ms;
use crate::txn::{start_write, state};
use crate::Broker;

/// PRODUCER_FENCED exists from v2 (KIP-588); older clients know INVALID_PRODUCER_EPOCH.
pub fn versioned(code: i16, version: i16, fenced_from: i16) -> i16 {
    if code == ResponseError::ProducerFenced.code() && version < fenced_from {
        ResponseError::InvalidProducerEpoch.code()
    } else {
        code
    }
}

/// Adds partitions to `transactional_id`'s transaction, writing the new metadata when it
/// changed (shared with AddOffsetsToTxn, and with the Transactions V2 implicit adds of Produce
/// v12 and TxnOffsetCommit v5 when this broker is the coordinator). `tv` is the client's
/// transaction version: 2 for the implicit adds, 0 for the V1 requests.
pub async fn add(
    broker: &Arc<Broker>,
    transactional_id: &str,
    producer_id: i64,
    producer_epoch: i16,
    partitions: &[(String, i32)],
    tv: i16,
) -> Result<(), i16> {
    if transactional_id.is_empty() {
        return Err(ResponseError::InvalidRequest.code());
    }
    let now = now_ms();
    let write = broker.txns.with_txns(broker, transactional_id, |mut t| {
        let Some(m) = t.txns.get(transactional_id) else {
            return Err(ResponseError::InvalidProducerIdMapping.code());
        };
        match state::add_partitions(m, producer_id, producer_epoch, partitions, tv, now)? {
            None => Ok(None),
            Some(target) => Ok(Some(start_write(broker, &mut t, target))),
        }
    })??;
    match write {
        None => Ok(()),
        Some(w) => w.finish(broker).await.map(|_| ()),
    }
}

/// Whether every partition is already in the ongoing transaction (v4+ `verify_only`).
fn verify(
    broker: &Arc<Broker>,
    transactional_id: &str,
    producer_id: i64,
    producer_epoch: i16,
    partition: &(String, i32),
) -> i16 {
    let checked = broker.txns.with_txns(broker, transactional_id, |t| {
        match t.txns.get(transactional_id) {
            Some(m) => state::verify(m, producer_id, producer_epoch, partition),
            None => Err(ResponseError::InvalidProducerIdMapping.code()),
        }
    });
    match checked {
        Ok(Ok(())) => 0,
        Ok(Err(code)) | Err(code) => code,
    }
}

/// A partition and the error it gets.
type PartitionError = ((String, i32), i16);

/// Splits the requested partitions into known ones and per-partition errors for the rest.
fn known_partitions(
    broker: &Broker,
    topics: &[AddPartitionsToTxnTopic],
) -> (Vec<(String, i32)>, Vec<PartitionError>) {
    let md = broker.replication.metadata();
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for t in topics {
        let name = t.name.0.to_string();
        let count = md.topics.get(&name).map(|m| m.partitions.len() as i32);
        for &p in &t.partitions {
            if count.is_some_and(|n| (0..n).contains(&p)) {
                ok.push((name.clone(), p));
            } else {
                bad.push((
                    (name.clone(), p),
                    ResponseError::UnknownTopicOrPartition.code(),
                ));
            }
        }
    }
    (ok, bad)
}

fn topic_results(
    topics: &[AddPartitionsToTxnTopic],
    code_of: impl Fn(&str, i32) -> i16,
) -> Vec<AddPartitionsToTxnTopicResult> {
    topics
        .iter()
        .map(|t| {
            AddPartitionsToTxnTopicResult::default()
                .with_name(t.name.clone())
                .with_results_by_partition(
                    t.partitions
                        .iter()
                        .map(|&p| {
                            AddPartitionsToTxnPartitionResult::default()
                                .with_partition_index(p)
                                .with_partition_error_code(code_of(&t.name.0, p))
                        })
                        .collect(),
                )
        })
        .collect()
}

/// One transaction's partitions: unknown ones fail, and then the others are not attempted.
async fn one_transaction(
    broker: &Arc<Broker>,
    transactional_id: &str,
    producer_id: i64,
    producer_epoch: i16,
    topics: &[AddPartitionsToTxnTopic],
    verify_only: bool,
    version: i16,
) -> Vec<AddPartitionsToTxnTopicResult> {
    let (known, unknown) = known_partitions(broker, topics);
    if !unknown.is_empty() {
        return topic_results(topics, |t, p| {
            unknown
                .iter()
                .find(|((ut, up), _)| ut == t && *up == p)
                .map_or(ResponseError::OperationNotAttempted.code(), |(_, c)| *c)
        });
    }
    if verify_only {
        let codes: Vec<PartitionError> = known
            .iter()
            .map(|tp| {
                (
                    tp.clone(),
                    verify(broker, transactional_id, producer_id, producer_epoch, tp),
                )
            })
            .collect();
        return topic_results(topics, |t, p| {
            codes
                .iter()
                .find(|((ct, cp), _)| ct == t && *cp == p)
                .map_or(0, |(_, c)| *c)
        });
    }
    // v4+ comes from partition leaders: without verify_only it is a Transactions V2 implicit
    // add (Kafka's AddPartitionsToTxnManager with ADD_PARTITION), the client's version 2.
    let tv = if version >= 4 { 2 } else { 0 };
    let code = match add(
        broker,
        transactional_id,
        producer_id,
        producer_epoch,
        &known,
        tv,
    )
    .await
    {
        Ok(()) => 0,
        Err(code) => versioned(code, version, 2),
    };
    topic_results(topics, |_, _| code)
}

pub async fn handle(
    broker: &Arc<Broker>,
    request: AddPartitionsToTxnRequest,
    version: i16,
) -> AddPartitionsToTxnResponse {
    if version <= 3 {
        let results = one_transaction(
            broker,
            &request.v3_and_below_transactional_id.0,
            request.v3_and_below_producer_id.0,
            request.v3_and_below_producer_epoch,
            &request.v3_and_below_topics,
            false,
            version,
        )
        .await;
        return AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(results);
    }
    let mut out = Vec::with_capacity(request.transactions.len());
    for t in &request.transactions {
        let results = one_transaction(
            broker,
            &t.transactional_id.0,
            t.producer_id.0,
            t.producer_epoch,
            &t.topics,
            t.verify_only,
            version,
        )
        .await;
        out.push(
            AddPartitionsToTxnResult::default()
                .with_transactional_id(t.transactional_id.clone())
                .with_topic_results(results),
        );
    }
    AddPartitionsToTxnResponse::default().with_results_by_transaction(out)
}
