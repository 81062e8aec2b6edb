//! The transaction-stateful proxy core (RFC 3261 sections 16 and 17).
