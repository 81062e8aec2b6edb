//! kubesbc's custom resources (group `kubesbc.io`) and the sbc configuration they render to.
#![forbid(unsafe_code)]

pub mod config;
