//! The `cartwatch` binary: the command line over the library, with the demo and the
//! benchmarks.

#![forbid(unsafe_code)]

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    cli::main(cli)
}
