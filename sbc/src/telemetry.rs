//! Prometheus metrics of the sbc.
