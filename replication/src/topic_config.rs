//! Kafka's topic-level configs: names, broker-level synonyms, defaults, types and validation.
//! The one table both the metadata state machine and the admin APIs read.

/// Kafka's `ConfigType` codes (DescribeConfigs v3+).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigType {
    Boolean = 1,
    String = 2,
    Int = 3,
    Long = 5,
    Double = 6,
    List = 7,
}

#[derive(Debug, Clone, Copy)]
pub struct TopicConfigDef {
    pub name: &'static str,
    /// The broker config that supplies the cluster-wide default, if any.
    pub broker_name: Option<&'static str>,
    pub default: &'static str,
    pub config_type: ConfigType,
    pub doc: &'static str,
}

const fn def(
    name: &'static str,
    broker_name: &'static str,
    default: &'static str,
    config_type: ConfigType,
    doc: &'static str,
) -> TopicConfigDef {
    TopicConfigDef {
        name,
        broker_name: Some(broker_name),
        default,
        config_type,
        doc,
    }
}

pub const TOPIC_CONFIGS: &[TopicConfigDef] = &[
    def(
        "cleanup.policy",
        "log.cleanup.policy",
        "delete",
        ConfigType::List,
        "delete, compact, or both",
    ),
    def(
        "compression.type",
        "compression.type",
        "producer",
        ConfigType::String,
        "final compression of the topic's data; producer keeps what the producer sent",
    ),
    def(
        "delete.retention.ms",
        "log.cleaner.delete.retention.ms",
        "86400000",
        ConfigType::Long,
        "how long tombstones are kept on compacted topics",
    ),
    def(
        "file.delete.delay.ms",
        "log.segment.delete.delay.ms",
        "60000",
        ConfigType::Long,
        "delay before deleting a file from the filesystem",
    ),
    def(
        "flush.messages",
        "log.flush.interval.messages",
        "9223372036854775807",
        ConfigType::Long,
        "force an fsync after this many messages",
    ),
    def(
        "flush.ms",
        "log.flush.interval.ms",
        "9223372036854775807",
        ConfigType::Long,
        "force an fsync after this long",
    ),
    def(
        "index.interval.bytes",
        "log.index.interval.bytes",
        "4096",
        ConfigType::Int,
        "spacing of offset index entries",
    ),
    def(
        "max.compaction.lag.ms",
        "log.cleaner.max.compaction.lag.ms",
        "9223372036854775807",
        ConfigType::Long,
        "longest a message stays ineligible for compaction",
    ),
    def(
        "max.message.bytes",
        "message.max.bytes",
        "1048588",
        ConfigType::Int,
        "largest record batch size allowed",
    ),
    def(
        "message.timestamp.after.max.ms",
        "log.message.timestamp.after.max.ms",
        "3600000",
        ConfigType::Long,
        "how far in the future a CreateTime timestamp may be",
    ),
    def(
        "message.timestamp.before.max.ms",
        "log.message.timestamp.before.max.ms",
        "9223372036854775807",
        ConfigType::Long,
        "how far in the past a CreateTime timestamp may be",
    ),
    def(
        "message.timestamp.type",
        "log.message.timestamp.type",
        "CreateTime",
        ConfigType::String,
        "CreateTime or LogAppendTime",
    ),
    def(
        "min.cleanable.dirty.ratio",
        "log.cleaner.min.cleanable.ratio",
        "0.5",
        ConfigType::Double,
        "dirty share of the log that triggers compaction",
    ),
    def(
        "min.compaction.lag.ms",
        "log.cleaner.min.compaction.lag.ms",
        "0",
        ConfigType::Long,
        "minimum age before a message may be compacted",
    ),
    def(
        "min.insync.replicas",
        "min.insync.replicas",
        "1",
        ConfigType::Int,
        "replicas that must acknowledge an acks=all write",
    ),
    def(
        "preallocate",
        "log.preallocate",
        "false",
        ConfigType::Boolean,
        "preallocate segment files",
    ),
    def(
        "retention.bytes",
        "log.retention.bytes",
        "-1",
        ConfigType::Long,
        "largest size of a partition before old segments are deleted; -1 for no limit",
    ),
    def(
        "retention.ms",
        "log.retention.ms",
        "604800000",
        ConfigType::Long,
        "how long data is kept; -1 for forever",
    ),
    def(
        "segment.bytes",
        "log.segment.bytes",
        "1073741824",
        ConfigType::Int,
        "segment file size",
    ),
    def(
        "segment.index.bytes",
        "log.index.size.max.bytes",
        "10485760",
        ConfigType::Int,
        "offset index size",
    ),
    def(
        "segment.jitter.ms",
        "log.roll.jitter.ms",
        "0",
        ConfigType::Long,
        "random jitter subtracted from segment.ms",
    ),
    def(
        "segment.ms",
        "log.roll.ms",
        "604800000",
        ConfigType::Long,
        "time after which a segment is rolled",
    ),
    def(
        "unclean.leader.election.enable",
        "unclean.leader.election.enable",
        "false",
        ConfigType::Boolean,
        "allow out-of-sync replicas to become leader",
    ),
];

pub fn topic_config(name: &str) -> Option<&'static TopicConfigDef> {
    TOPIC_CONFIGS.iter().find(|d| d.name == name)
}

/// The topic config whose broker-level synonym is `broker_name`.
pub fn topic_config_for_broker_name(broker_name: &str) -> Option<&'static TopicConfigDef> {
    TOPIC_CONFIGS
        .iter()
        .find(|d| d.broker_name == Some(broker_name))
}

/// Checks a topic config value as Kafka's `LogConfig.validate` does; the message becomes the
/// `INVALID_CONFIG` error message.
pub fn validate_topic_config(name: &str, value: &str) -> Result<(), String> {
    let Some(d) = topic_config(name) else {
        return Err(format!("Unknown topic config name: {name}"));
    };
    let v = value.trim();
    let long = || {
        v.parse::<i64>().map_err(|_| {
            format!("Invalid value {value} for configuration {name}: Not a number of type LONG")
        })
    };
    let int = || {
        v.parse::<i32>().map_err(|_| {
            format!("Invalid value {value} for configuration {name}: Not a number of type INT")
        })
    };
    let at_least = |min: i64, got: i64| {
        if got < min {
            Err(format!(
                "Invalid value {value} for configuration {name}: Value must be at least {min}"
            ))
        } else {
            Ok(())
        }
    };
    match d.name {
        "cleanup.policy" => runnel_storage::CleanupPolicy::parse(v)
            .map(|_| ())
            .map_err(|_| format!("Invalid value {value} for configuration {name}: String must be one of: compact, delete")),
        "compression.type" => match v {
            "producer" | "uncompressed" | "gzip" | "snappy" | "lz4" | "zstd" => Ok(()),
            _ => Err(format!(
                "Invalid value {value} for configuration {name}: String must be one of: uncompressed, zstd, lz4, snappy, gzip, producer"
            )),
        },
        "message.timestamp.type" => match v {
            "CreateTime" | "LogAppendTime" => Ok(()),
            _ => Err(format!("Invalid value {value} for configuration {name}: String must be one of: CreateTime, LogAppendTime")),
        },
        "min.cleanable.dirty.ratio" => match v.parse::<f64>() {
            Ok(r) if (0.0..=1.0).contains(&r) => Ok(()),
            _ => Err(format!("Invalid value {value} for configuration {name}: Value must be between 0 and 1")),
        },
        "preallocate" | "unclean.leader.election.enable" => match v {
            "true" | "false" => Ok(()),
            _ => Err(format!("Invalid value {value} for configuration {name}: Expected value to be either true or false")),
        },
        "retention.ms" | "retention.bytes" => at_least(-1, long()?),
        "segment.bytes" => at_least(14, i64::from(int()?)),
        "segment.index.bytes" => at_least(4, i64::from(int()?)),
        "segment.ms" => at_least(1, long()?),
        "index.interval.bytes" | "max.message.bytes" => at_least(0, i64::from(int()?)),
        "min.insync.replicas" => at_least(1, i64::from(int()?)),
        _ => match d.config_type {
            ConfigType::Int => at_least(0, i64::from(int()?)),
            _ => at_least(0, long()?),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_validated_like_kafka() {
        assert!(validate_topic_config("retention.ms", "-1").is_ok());
        assert!(validate_topic_config("retention.ms", "-2").is_err());
        assert!(validate_topic_config("retention.ms", "soon").is_err());
        assert!(validate_topic_config("cleanup.policy", "compact,delete").is_ok());
        assert!(validate_topic_config("cleanup.policy", "shred").is_err());
        assert!(validate_topic_config("no.such.config", "1").is_err());
        assert!(validate_topic_config("segment.bytes", "13").is_err());
        assert!(validate_topic_config("message.timestamp.type", "LogAppendTime").is_ok());
    }

    #[test]
    fn every_default_is_valid() {
        for d in TOPIC_CONFIGS {
            validate_topic_config(d.name, d.default).unwrap_or_else(|e| panic!("{}: {e}", d.name));
        }
    }
}
