//! The `reasonq` binary: parse the command line, run one library use case, print. The CLI
//! lives here, not in the library: its flags are not the library's API.
#![forbid(unsafe_code)]

mod cli;

/// jemalloc hands freed memory back to the system, where glibc's per-thread arenas kept it:
/// a batch's peak RSS stays flat with its length (options in .cargo/config.toml).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    std::process::exit(cli::main());
}
