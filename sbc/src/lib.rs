//! kubesbc's SIP proxy. Modules follow the request pipeline of DESIGN.md:
//! transport -> sanity -> (guard, auth, throttle) -> dispatch -> relay, with config, store,
//! telemetry and admin beside it.
#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod config;
pub mod discovery;
pub mod dispatch;
pub mod guard;
pub mod media;
pub mod observe;
pub mod pipeline;
pub mod relay;
pub mod reload;
pub mod sanity;
pub mod sip;
pub mod store;
pub mod telemetry;
pub mod throttle;
pub mod transport;
