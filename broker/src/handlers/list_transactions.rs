//! ListTransactions (key 66): the transactions this broker coordinates, filtered by state,
//! producer id, how long they have been open (v1) and a transactional id pattern (v2,
//! KIP-1152, RE2 syntax as Java's `Pattern` for common patterns).

use std::sync::Arc;

use runnel_protocol::kafka_protocol::messages::list_transactions_response::TransactionState;
use runnel_protocol::kafka_protocol::messages::{
    ListTransactionsRequest, ListTransactionsResponse, ProducerId, TransactionalId,
};
use runnel_protocol::kafka_protocol::protocol::StrBytes;
use runnel_protocol::kafka_protocol::ResponseError;

use crate::group::now_ms;
use crate::txn::records::TxnState;
use crate::Broker;

pub fn handle(
    broker: &Arc<Broker>,
    request: ListTransactionsRequest,
    version: i16,
) -> ListTransactionsResponse {
    let mut unknown = Vec::new();
    let mut states = Vec::new();
    for s in &request.state_filters {
        match TxnState::from_name(s) {
            Some(state) => states.push(state),
            None => unknown.push(s.clone()),
        }
    }
    let pattern = match request
        .transactional_id_pattern
        .as_ref()
        .filter(|p| version >= 2 && !p.is_empty())
        .map(|p| regex::Regex::new(&format!("^(?:{p})$")))
        .transpose()
    {
        Ok(p) => p,
        Err(_) => {
            return ListTransactionsResponse::default()
                .with_error_code(ResponseError::InvalidRegularExpression.code())
        }
    };
    let now = now_ms();
    let (error, txns) = broker.txns.snapshot(broker);
    let listed = txns
        .into_iter()
        .filter(|m| m.state != TxnState::Dead)
        // Kafka: any state filter given (even only unknown names) restricts the list.
        .filter(|m| request.state_filters.is_empty() || states.contains(&m.state))
        .filter(|m| {
            request.producer_id_filters.is_empty()
                || request
                    .producer_id_filters
                    .iter()
                    .any(|p| p.0 == m.producer_id)
        })
        .filter(|m| {
            version < 1
                || request.duration_filter < 0
                || now.saturating_sub(m.start_ms) > request.duration_filter
        })
        .filter(|m| {
            pattern
                .as_ref()
                .is_none_or(|re| re.is_match(&m.transactional_id))
        })
        .map(|m| {
            TransactionState::default()
                .with_transactional_id(TransactionalId(StrBytes::from_string(
                    m.transactional_id.clone(),
                )))
                .with_producer_id(ProducerId(m.producer_id))
                .with_transaction_state(StrBytes::from_static_str(m.state.name()))
        })
        .collect();
    ListTransactionsResponse::default()
        .with_error_code(error)
        .with_unknown_state_filters(unknown)
        .with_transaction_states(listed)
}
