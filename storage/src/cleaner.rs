//! Log compaction (placeholder while the log core is built).
#[derive(Debug, Clone, Default)]
pub struct CleanerConfig;
#[derive(Debug, Clone, Default)]
pub struct CleanStats;
