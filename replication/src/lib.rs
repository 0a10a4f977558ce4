//! Raft groups over Runnel's storage logs.
