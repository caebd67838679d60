//! The `cartwatch` binary: parse the command line and hand over to the library.

#![forbid(unsafe_code)]

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cartwatch::cli::Cli::parse();
    cartwatch::cli::main(cli)
}
