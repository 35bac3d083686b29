//! The `reasonq` binary: parse the command line, run one library use case, print. The CLI
//! lives here, not in the library: its flags are not the library's API.
#![forbid(unsafe_code)]

mod cli;

fn main() {
    std::process::exit(cli::main());
}
