//! The one place internal errors become Kafka error codes.

use runnel_protocol::kafka_protocol::ResponseError;
use runnel_replication::ReplicationError;
use runnel_storage::StorageError;

pub fn storage_error_code(e: &StorageError) -> i16 {
    match e {
        StorageError::BatchTooLarge { .. } => ResponseError::MessageTooLarge.code(),
        StorageError::CrcMismatch { .. }
        | StorageError::TruncatedBatch { .. }
        | StorageError::InvalidBatchLength(_)
        | StorageError::EmptyAppend => ResponseError::CorruptMessage.code(),
        StorageError::UnsupportedMagic(_) => ResponseError::UnsupportedForMessageFormat.code(),
        StorageError::InvalidBatch(_) | StorageError::InvalidRecords(_) => {
            ResponseError::InvalidRecord.code()
        }
        StorageError::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange.code(),
        StorageError::StaleLeaderEpoch { .. } => ResponseError::NotLeaderOrFollower.code(),
        StorageError::InvalidConfig { .. } => ResponseError::InvalidConfig.code(),
        StorageError::EntryUnavailable { .. }
        | StorageError::EntryIndexGap { .. }
        | StorageError::Corrupt { .. }
        | StorageError::Io { .. } => ResponseError::KafkaStorageError.code(),
    }
}

pub fn replication_error_code(e: &ReplicationError) -> i16 {
    match e {
        ReplicationError::Storage(s) => storage_error_code(s),
        ReplicationError::NotLeaderOrFollower => ResponseError::NotLeaderOrFollower.code(),
        ReplicationError::UnknownTopicOrPartition => ResponseError::UnknownTopicOrPartition.code(),
        ReplicationError::ShuttingDown => ResponseError::NotLeaderOrFollower.code(),
        ReplicationError::OutOfOrderSequence { .. } => {
            ResponseError::OutOfOrderSequenceNumber.code()
        }
        ReplicationError::InvalidProducerEpoch { .. } => ResponseError::InvalidProducerEpoch.code(),
        // Retriable: the client retries and then finds the batch in the log.
        ReplicationError::DuplicateInFlight => ResponseError::RequestTimedOut.code(),
        ReplicationError::ProducerIds(_) => ResponseError::CoordinatorNotAvailable.code(),
        ReplicationError::InvalidTxnState(_) => ResponseError::InvalidTxnState.code(),
        ReplicationError::CoordinatorFenced { .. } => {
            ResponseError::TransactionCoordinatorFenced.code()
        }
        ReplicationError::Raft(_) | ReplicationError::Io(_) | ReplicationError::Corrupt(_) => {
            ResponseError::KafkaStorageError.code()
        }
    }
}

pub const NONE: i16 = 0;
