//! Logging setup: `tracing` to stderr, quiet by default, more with `-v` / `-vv`.

/// Installs the subscriber. `verbose` 0 shows info and above from kiln, 1 adds debug, 2 trace.
pub fn init(verbose: u8) {
    let default = match verbose {
        0 => "warn,kiln_element=info,kiln_pipeline=info,kiln_blockdev=info",
        1 => "info,kiln_element=debug,kiln_pipeline=debug,kiln_blockdev=debug,kiln_output=debug",
        _ => "debug",
    };
    let filter =
        tracing_subscriber::EnvFilter::try_from_env(kiln_pipeline::settings::KILN_LOG.name)
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .without_time()
        .with_target(false)
        .try_init();
}
