//! Harness for end-to-end tests: starts real `runnel` processes on loopback ports.
