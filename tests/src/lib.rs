//! End-to-end test support: starting sbc, sipp and servers on ephemeral loopback ports.
