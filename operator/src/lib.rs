//! The kubesbc operator: renders SbcClusters (and the DispatcherSets, TenantThrottles and
//! AccessLists they select) into the sbc configuration and the objects that run it.
#![forbid(unsafe_code)]

pub mod controller;
pub mod destinations;
pub mod leader;
pub mod render;
