//! kubesbc's SIP proxy. Modules follow the request pipeline of docs/architecture.md:
//! transport -> sip (parse) -> sanity -> relay::core (server side) -> guard -> auth ->
//! throttle -> nat -> routing (+ dispatch) -> relay::core (client side), with config, store,
//! telemetry and admin beside it.
#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub use kubesbc_crds::cidr;
pub mod config;
pub mod discovery;
pub mod dispatch;
pub mod flow;
pub mod guard;
pub mod media;
pub mod nat;
pub mod observe;
pub mod pipeline;
pub mod relay;
pub mod reload;
pub mod routing;
pub mod sanity;
pub mod sip;
pub mod store;
pub mod telemetry;
pub mod throttle;
pub mod topology;
pub mod transport;
