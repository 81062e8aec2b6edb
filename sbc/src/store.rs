//! Shared state: one trait, an in-memory implementation (and, later, Redis).
