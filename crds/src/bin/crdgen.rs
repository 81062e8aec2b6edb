//! Prints every kubesbc CRD as one YAML stream (`cargo run -p kubesbc-crds --bin crdgen`).

use std::io::Write;

fn main() -> std::process::ExitCode {
    match kubesbc_crds::crds_yaml() {
        Ok(yaml) => {
            let mut out = std::io::stdout().lock();
            if out.write_all(yaml.as_bytes()).is_err() {
                return std::process::ExitCode::FAILURE;
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("crdgen: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
