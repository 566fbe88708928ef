//! The `kiln` binary. It also answers as `disk-image-create` and `element-info` when invoked
//! under those names, speaking DIB's command line.

mod app;
mod commands;
mod dib;
mod logging;
mod record;

fn main() {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let code = match app::run(argv) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("kiln: error: {err:#}");
            app::exit_code(&err)
        }
    };
    std::process::exit(code);
}
