//! Dispatcher sets: Kamailio-compatible destination selection, probing and failover state.
