//! The HTTP admin endpoint and the `sbc ctl` client.
