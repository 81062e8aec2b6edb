//! Loading the configuration: from a YAML file or built from command-line flags.

pub use kubesbc_crds::config::*;
